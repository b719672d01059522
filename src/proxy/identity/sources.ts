/**
 * Where the sidecar's workload identity comes from, and keeping it fresh:
 *
 * - `FileIdentitySource`: key, chain and bundle in PEM files (written by `meshca issue`, cert-manager,
 *   a SPIRE helper...). The directories are watched and the files reloaded when they change; a reload is
 *   taken only when the three files together are valid (key matches the leaf, the chain verifies against
 *   the bundle), so a half-written rotation keeps the current identity until the next change.
 * - `CaIdentitySource`: the CA server (`meshca serve`) through `CaClient`: first certificate with a join
 *   token, renewal at half-life. With a `stateDir` the key and chain are kept (0600, atomic) so a restart
 *   renews instead of needing a new token.
 *
 * Either way the sidecar is not ready until the first identity exists. `ExpiryWatch` publishes the
 * expiry gauge and logs loudly when the certificate in use is near its end without a replacement.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { type FSWatcher, watch } from "node:fs";
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { CaClient, IdentityMaterial } from "../../ca/client.ts";
import type { KeyAlgorithm } from "../../ca/key-policy.ts";
import { parseBundle, SvidVerifier } from "../../ca/verify.ts";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import type { Identity } from "../transport/tls-context.ts";

/** A source of the workload identity. */
export interface IdentitySource {
  /** Load or fetch the first identity. Resolves even when none is available yet (then not ready). */
  start(): Promise<void>;
  stop(): void;
  current(): Identity | undefined;
  /** Called with each new identity (the first one included). */
  onChange(listener: (identity: Identity) => void): void;
  /** For `/certs`: the kind of source and its state. */
  describe(): Record<string, unknown>;
  /** Called with the revoked serials each time the list the CA serves changes (CA sources only). */
  onRevoked?(listener: (serials: readonly string[]) => void): void;
}

/** PEM text -> DER of each CERTIFICATE block, in order. */
export function pemCertificates(pem: string): Buffer[] {
  const out: Buffer[] = [];
  const re = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;
  for (let m = re.exec(pem); m; m = re.exec(pem)) out.push(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
  return out;
}

/**
 * Check a key, chain and bundle together and describe them: the key must match the leaf, and the chain
 * must be a valid X.509-SVID of `trustDomain` now. Throws WeftError (E_CERT_INVALID / E_SVID) with why.
 */
export function loadIdentity(
  material: { keyPem: string; chainPem: string; bundlePem: string },
  trustDomain: string,
  clock: Clock,
): Identity {
  const chain = pemCertificates(material.chainPem);
  if (chain.length === 0) {
    throw new WeftError("E_PEM", "the certificate file holds no PEM certificate", {
      reason: "no_certificate",
    });
  }
  const leaf = new X509Certificate(chain[0]!);
  let keyMatches = false;
  try {
    keyMatches = leaf.checkPrivateKey(createPrivateKey(material.keyPem));
  } catch (err) {
    throw new WeftError("E_PEM", `the key file is not a PEM private key: ${errorMessage(err)}`, {
      reason: "bad_key",
      cause: err,
    });
  }
  if (!keyMatches) {
    throw new WeftError("E_CERT_INVALID", "the private key does not match the certificate", {
      reason: "key_mismatch",
    });
  }
  const verifier = new SvidVerifier(parseBundle(material.bundlePem, trustDomain), { clock });
  const id = verifier.verify(chain).toString();
  return {
    id,
    keyPem: material.keyPem,
    chainPem: material.chainPem,
    bundlePem: material.bundlePem,
    serial: leaf.serialNumber.toUpperCase(),
    notBefore: Date.parse(leaf.validFrom),
    notAfter: Date.parse(leaf.validTo),
  };
}

type Listener = (identity: Identity) => void;

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
        spiffe_id: identity.id,
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

export interface CaIdentityOptions {
  readonly url: string;
  /** Trust bundle PEM for the CA server's certificate. */
  readonly caBundlePem: string;
  readonly id: string;
  /** The join token, or a function that reads it (the token file) at each attempt. */
  readonly token?: string | (() => string | undefined);
  /** Kubernetes join: reads the projected service-account token (see CaClientOptions.kubernetesToken). */
  readonly kubernetesToken?: () => string;
  readonly keyAlgorithm?: KeyAlgorithm;
  /** Keep key and chain here (0600) so a restart renews instead of spending a token. */
  readonly stateDir?: string;
  readonly trustDomain: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  /** How often the revoked serials are fetched from the CA (0 = never). */
  readonly revocationRefreshMs?: number;
  /** Longest wait between attempts while the CA cannot be reached. */
  readonly retryMaxMs?: number;
  /** First wait between attempts (tests shorten it). */
  readonly retryBaseMs?: number;
}

/** Identity from the CA server via `CaClient`; see the module comment. */
export class CaIdentitySource implements IdentitySource {
  private identity: Identity | undefined;
  private readonly listeners: Listener[] = [];
  private client: CaClient | undefined;
  private failuresSeen = 0;
  private startError: string | undefined;
  private readonly revokedListeners: Array<(serials: readonly string[]) => void> = [];
  private revoked: string[] | undefined;
  private revocationTimer: TimerHandle | undefined;
  private revocationError: string | undefined;
  private revocationFetchedAt: number | undefined;
  private stopped = false;

  constructor(private readonly options: CaIdentityOptions) {}

  /**
   * Starts getting the first certificate and resolves at once: while the CA cannot be reached (or
   * refuses), the client keeps trying with capped exponential backoff and jitter, logging each attempt
   * with its reason, and the sidecar stays not ready. Only a configuration that can never work (no
   * token and no stored certificate) rejects.
   */
  async start(): Promise<void> {
    const o = this.options;
    const initial = o.stateDir ? await readState(o.stateDir) : undefined;
    if (o.token === undefined && !o.kubernetesToken && !initial) {
      throw new WeftError(
        "E_USAGE",
        `no join token and no stored certificate for ${o.id}; make one with meshca token create`,
        { reason: "no_token" },
      );
    }
    // Loaded here, not at the top: the CA client needs the certificate-building libraries (@peculiar/x509
    // and its dependencies, ~10 MiB of a sidecar's memory), which a sidecar with file identity never uses.
    const { CaClient } = await import("../../ca/client.ts");
    this.client = new CaClient({
      url: o.url,
      bundlePem: o.caBundlePem,
      id: o.id,
      token: o.token,
      ...(o.kubernetesToken ? { kubernetesToken: o.kubernetesToken } : {}),
      keyAlgorithm: o.keyAlgorithm,
      clock: o.clock,
      logger: o.logger,
      initial,
      onIdentity: (m) => this.install(m),
      startMaxAttempts: Number.POSITIVE_INFINITY,
      retryRefusals: true,
      ...(o.retryMaxMs !== undefined ? { retryMaxMs: o.retryMaxMs } : {}),
      ...(o.retryBaseMs !== undefined ? { retryBaseMs: o.retryBaseMs } : {}),
    });
    const client = this.client;
    client.start().catch((err: unknown) => {
      if (this.stopped) return;
      this.startError = errorMessage(err);
      o.metrics.certRenewalFailures.inc();
      o.logger.error({ err: this.startError }, "the CA client gave up getting a first certificate");
    });
    if ((o.revocationRefreshMs ?? 0) > 0) void this.refreshRevoked();
  }

  /** Fetch the revoked serials now (then every `revocationRefreshMs`); failures keep the last list. */
  async refreshRevoked(): Promise<void> {
    const o = this.options;
    this.revocationTimer?.cancel();
    try {
      const serials = await this.client!.fetchRevoked();
      this.revocationFetchedAt = o.clock.now();
      if (this.revocationError !== undefined) o.logger.info({}, "revocation list fetched again");
      this.revocationError = undefined;
      const changed = this.revoked === undefined || serials.join(",") !== this.revoked.join(",");
      this.revoked = serials;
      if (changed) {
        if (serials.length > 0) o.logger.info({ revoked: serials.length }, "revocation list changed");
        for (const l of this.revokedListeners) l(serials);
      }
    } catch (err) {
      const msg = errorMessage(err);
      if (msg !== this.revocationError) {
        o.logger.warn({ err: msg }, "cannot fetch the revocation list; keeping the last one");
      }
      this.revocationError = msg;
    }
    if (!this.stopped && (o.revocationRefreshMs ?? 0) > 0) {
      this.revocationTimer = o.clock.setTimeout(() => void this.refreshRevoked(), o.revocationRefreshMs!);
    }
  }

  onRevoked(listener: (serials: readonly string[]) => void): void {
    this.revokedListeners.push(listener);
    if (this.revoked) listener(this.revoked);
  }

  private install(m: IdentityMaterial): void {
    let identity: Identity;
    try {
      identity = loadIdentity(m, this.options.trustDomain, this.options.clock);
    } catch (err) {
      this.options.logger.error({ err: errorMessage(err) }, "the CA server's certificate is not usable");
      return;
    }
    this.identity = identity;
    if (this.options.stateDir) {
      writeState(this.options.stateDir, m).catch((err: unknown) =>
        this.options.logger.warn({ err: errorMessage(err) }, "cannot keep the certificate in stateDir"),
      );
    }
    for (const l of this.listeners) l(identity);
  }

  /** Count renewal failures into the metric (the client logs them itself). */
  pollFailures(): void {
    const f = this.client?.status().consecutiveFailures ?? 0;
    if (f > this.failuresSeen) this.options.metrics.certRenewalFailures.inc(f - this.failuresSeen);
    this.failuresSeen = f;
  }

  stop(): void {
    this.stopped = true;
    this.revocationTimer?.cancel();
    this.client?.stop();
  }

  current(): Identity | undefined {
    return this.identity;
  }

  onChange(listener: Listener): void {
    this.listeners.push(listener);
  }

  describe(): Record<string, unknown> {
    const s = this.client?.status();
    return {
      source: "ca",
      url: this.options.url,
      state: s?.state ?? "new",
      renewals: s?.renewals ?? 0,
      consecutiveFailures: s?.consecutiveFailures ?? 0,
      nextRenewalAt: s?.nextRenewalAt?.toISOString() ?? null,
      lastError: s?.lastError ?? this.startError ?? null,
      revokedSerials: this.revoked?.length ?? null,
      revocationFetchedAt:
        this.revocationFetchedAt === undefined ? null : new Date(this.revocationFetchedAt).toISOString(),
      revocationError: this.revocationError ?? null,
    };
  }
}

async function readState(dir: string): Promise<{ keyPem: string; chainPem: string } | undefined> {
  try {
    const [keyPem, chainPem] = await Promise.all([
      readFile(join(dir, "key.pem"), "utf8"),
      readFile(join(dir, "chain.pem"), "utf8"),
    ]);
    return { keyPem, chainPem };
  } catch {
    return undefined;
  }
}

async function writeState(dir: string, m: IdentityMaterial): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const [name, text] of [
    ["key.pem", m.keyPem],
    ["chain.pem", m.chainPem],
    ["bundle.pem", m.bundlePem],
  ] as const) {
    const tmp = join(dir, `.${name}.${process.pid}.tmp`);
    await writeFile(tmp, text, { mode: 0o600 });
    await chmod(tmp, 0o600);
    await rename(tmp, join(dir, name));
  }
}

/**
 * Publishes `weft_cert_expiry_timestamp_seconds` for the identity in use and checks it every
 * `intervalMs`: past three quarters of its life without a replacement it logs an error (renewal is
 * failing), once expired it logs that peers will refuse this workload.
 */
export class ExpiryWatch {
  private timer: TimerHandle | undefined;
  private lastId: string | undefined;

  constructor(
    private readonly options: {
      readonly clock: Clock;
      readonly logger: Logger;
      readonly metrics: WeftMetrics;
      readonly intervalMs: number;
      readonly current: () => Identity | undefined;
      /** Extra work at each check (e.g. count CA renewal failures). */
      readonly onCheck?: () => void;
    },
  ) {}

  start(): void {
    this.check();
  }

  /** Publish the gauge and log if the certificate is near its end; re-arms itself. */
  check(): void {
    this.timer?.cancel();
    const o = this.options;
    o.onCheck?.();
    const id = o.current();
    if (id) {
      if (this.lastId !== undefined && this.lastId !== id.id)
        o.metrics.certExpiry.remove({ identity: this.lastId });
      this.lastId = id.id;
      o.metrics.certExpiry.set({ identity: id.id }, Math.floor(id.notAfter / 1000));
      const now = o.clock.now();
      const life = Math.max(1, id.notAfter - id.notBefore);
      const left = id.notAfter - now;
      const fields = {
        spiffe_id: id.id,
        serial: id.serial,
        not_after: new Date(id.notAfter).toISOString(),
        seconds_left: Math.round(left / 1000),
      };
      if (left <= 0) {
        o.logger.error(fields, "workload certificate has EXPIRED and was not replaced; peers will refuse it");
      } else if (left < life / 4) {
        o.logger.error(fields, "workload certificate expires soon and has not been renewed");
      }
    }
    // Also wake at the certificate's expiry, so readiness and the logs turn the moment it runs out.
    const untilExpiry = id ? id.notAfter - o.clock.now() : 0;
    const next = untilExpiry > 0 ? Math.min(o.intervalMs, untilExpiry + 1) : o.intervalMs;
    this.timer = o.clock.setTimeout(() => this.check(), next);
  }

  stop(): void {
    this.timer?.cancel();
  }
}
