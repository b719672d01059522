/**
 * `CaIdentitySource`: the identity from the CA server (`meshca serve`) through `CaClient`: the first
 * certificate with a join token (or a Kubernetes service-account token), renewal at half-life, the
 * revoked serials fetched beside the bundle. With a `stateDir` the key and chain are kept (0600,
 * atomic) so a restart renews instead of needing a new token.
 */
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { CaClient, IdentityMaterial } from "../../ca/client.ts";
import type { KeyAlgorithm } from "../../ca/key-policy.ts";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import type { Identity } from "../transport/tls-context.ts";
import { type IdentitySource, type IdentityListener as Listener, loadIdentity } from "./source.ts";

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
