/**
 * `FileIdentitySource`: key, chain and bundle in PEM files (written by `meshca issue`, cert-manager, a
 * SPIRE helper...). The directories are watched and the files reloaded when they change; a reload is
 * taken only when the three files together are valid (key matches the leaf, the chain verifies against
 * the bundle), so a half-written rotation keeps the current identity until the next change.
 */
import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import { errorMessage, isWeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { Identity } from "../transport/tls-context.ts";
import { type IdentitySource, type IdentityListener as Listener, loadIdentity } from "./source.ts";

export interface FileIdentityOptions {
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
  readonly trustDomain: string;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Also re-read the files this often, in case a change notification was missed (0 = never). */
  readonly pollIntervalMs: number;
  /** Wait this long after a change notification before reading (writers touch three files). */
  readonly debounceMs?: number;
}

/** Identity from PEM files, hot-reloaded; see the module comment. */
export class FileIdentitySource implements IdentitySource {
  private identity: Identity | undefined;
  private readonly listeners: Listener[] = [];
  private watchers: FSWatcher[] = [];
  private debounce: TimerHandle | undefined;
  private poll: TimerHandle | undefined;
  private loading: Promise<void> | undefined;
  private again = false;
  private lastText = "";
  private lastError: string | undefined;
  private reloads = 0;
  private stopped = false;

  constructor(private readonly options: FileIdentityOptions) {}

  async start(): Promise<void> {
    await this.reload();
    const files = [this.options.cert, this.options.key, this.options.bundle];
    const names = new Set(files.map((f) => f.split("/").pop()));
    for (const dir of new Set(files.map((f) => dirname(f)))) {
      try {
        // Watch the directory, not the file: rotations usually replace files by rename.
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (name === null || names.has(String(name))) this.schedule();
        });
        w.on("error", (err) => this.options.logger.warn({ err, dir }, "identity directory watch failed"));
        this.watchers.push(w);
      } catch (err) {
        this.options.logger.warn({ err: errorMessage(err), dir }, "cannot watch identity directory; polling");
      }
    }
    if (this.options.pollIntervalMs > 0) this.armPoll();
  }

  private armPoll(): void {
    this.poll = this.options.clock.setTimeout(() => {
      if (this.stopped) return;
      this.reload().finally(() => {
        if (!this.stopped) this.armPoll();
      });
    }, this.options.pollIntervalMs);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.debounce?.cancel();
    this.debounce = this.options.clock.setTimeout(() => {
      void this.reload();
    }, this.options.debounceMs ?? 100);
  }

  /** Read the files now; a valid, changed set replaces the identity. Never rejects. */
  reload(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = this.readOnce().finally(() => {
      this.loading = undefined;
      if (this.again && !this.stopped) {
        this.again = false;
        void this.reload();
      }
    });
    return this.loading;
  }

  private async readOnce(): Promise<void> {
    const log = this.options.logger;
    let keyPem: string;
    let chainPem: string;
    let bundlePem: string;
    try {
      [keyPem, chainPem, bundlePem] = await Promise.all([
        readFile(this.options.key, "utf8"),
        readFile(this.options.cert, "utf8"),
        readFile(this.options.bundle, "utf8"),
      ]);
    } catch (err) {
      const denied = (err as NodeJS.ErrnoException).code === "EACCES";
      const uid = process.getuid?.();
      this.fail(
        `identity files cannot be read: ${errorMessage(err)}${
          denied
            ? ` (this sidecar runs as UID ${uid}: make the folder and files readable by it, e.g. meshca issue --owner ${uid}, or chown; weft validate --proxy-uid ${uid} checks it)`
            : ""
        }`,
        denied ? "permission_denied" : "unreadable",
      );
      return;
    }
    const text = `${keyPem}\u0000${chainPem}\u0000${bundlePem}`;
    if (text === this.lastText) return;
    let identity: Identity;
    try {
      identity = loadIdentity({ keyPem, chainPem, bundlePem }, this.options.trustDomain, this.options.clock);
    } catch (err) {
      this.fail(errorMessage(err), isWeftError(err) ? err.reason : undefined);
      return;
    }
    this.lastText = text;
    this.lastError = undefined;
    this.identity = identity;
    this.reloads++;
    log.info(
      {
        spiffe_id: identity.id.toString(),
        serial: identity.serial,
        not_after: new Date(identity.notAfter).toISOString(),
      },
      this.reloads === 1 ? "identity loaded from files" : "identity reloaded from files",
    );
    for (const l of this.listeners) l(identity);
  }

  private fail(message: string, reason?: string): void {
    if (message === this.lastError) return;
    this.lastError = message;
    this.options.logger.warn(
      { err: message, reason, keeping: this.identity?.serial ?? null },
      this.identity
        ? "identity files not usable; keeping the current certificate"
        : "identity files not usable",
    );
  }

  stop(): void {
    this.stopped = true;
    this.debounce?.cancel();
    this.poll?.cancel();
    for (const w of this.watchers) w.close();
    this.watchers = [];
  }

  current(): Identity | undefined {
    return this.identity;
  }

  onChange(listener: Listener): void {
    this.listeners.push(listener);
  }

  describe(): Record<string, unknown> {
    return {
      source: "files",
      files: { cert: this.options.cert, key: this.options.key, bundle: this.options.bundle },
      reloads: this.reloads,
      lastError: this.lastError ?? null,
    };
  }
}
