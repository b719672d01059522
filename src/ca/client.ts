/**
 * The sidecar's side of the CA server: keep one workload identity alive. The key is made locally for every
 * request (`createCsr`) and never leaves the process; the first certificate is paid for with a join token,
 * later ones are renewals over mTLS with the current certificate. Renewal runs at half the lifetime
 * (±10 % jitter); a failed attempt is retried with jittered exponential backoff, never waiting past expiry;
 * failures close to expiry are logged as errors. Each new identity is checked (chain verifies against the
 * bundle, right SPIFFE ID, our own key) before `onIdentity` sees it.
 *
 * The CA server's own certificate is verified against the trust bundle the client was given (from
 * `meshca bundle`): there is no trust-on-first-use and no way to skip that check.
 */
import { createPublicKey, X509Certificate } from "node:crypto";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { type ErrorCode, errorMessage, isWeftError, WeftError } from "../core/errors.ts";
import { childOf, type Logger } from "../core/log.ts";
import { createCsr, type KeyAlgorithm } from "./authority.ts";
import {
  type CaRequest,
  type CaTransport,
  httpsTransport,
  parseAnswer,
  REQUEST_TIMEOUT_MS,
} from "./client-http.ts";
import { SpiffeId } from "./spiffe-id.ts";
import { parseBundle, verifySvid } from "./verify.ts";

export {
  type CaRequest,
  type CaResponse,
  type CaTransport,
  httpsTransport,
  MAX_RESPONSE_BYTES,
  REQUEST_TIMEOUT_MS,
} from "./client-http.ts";

/** Renew when this fraction of the lifetime has passed. */
export const RENEW_FRACTION = 0.5;
/** ± this fraction of the renewal delay is random, so a fleet does not renew in lockstep. */
export const RENEW_JITTER = 0.1;
export const RETRY_BASE_MS = 1_000;
export const RETRY_MAX_MS = 5 * 60_000;
/** Attempts `start()` makes on transient failures (unreachable, 5xx) before it gives up. */
export const START_MAX_ATTEMPTS = 8;
/** Below this fraction of the lifetime left, failed renewals are logged as errors instead of warnings. */
export const EXPIRY_NEAR_FRACTION = 0.25;

/** What the sidecar gets each time the identity changes. */
export interface IdentityMaterial {
  id: SpiffeId;
  keyPem: string;
  /** Leaf first, then the intermediate. */
  chainPem: string;
  bundlePem: string;
  notAfter: Date;
}

export interface CaClientStatus {
  id: string;
  /** Expiry of the current certificate, if there is one. */
  notAfter: Date | undefined;
  lastError: string | undefined;
  lastErrorCode: ErrorCode | undefined;
  consecutiveFailures: number;
  nextRenewalAt: Date | undefined;
  renewals: number;
  state: "new" | "starting" | "running" | "stopped";
}

export interface CaClientOptions {
  /** `https://host:port` of `meshca serve`. */
  url: string;
  /** The trust bundle the server's certificate must chain to. Required: nothing is trusted on first use. */
  bundlePem: string;
  id: SpiffeId | string;
  /**
   * Join token for the first certificate (not needed when `initial` holds a live one); a function is
   * called for each attempt, so a token file replaced while the sidecar waits is picked up.
   */
  token?: string | (() => string | undefined);
  /**
   * Kubernetes join instead of a join token: returns the pod's projected service-account token (re-read
   * each time: kubelet rotates it), sent to `/v1/sign/kubernetes`.
   */
  kubernetesToken?: () => string;
  keyAlgorithm?: KeyAlgorithm;
  clock: Clock;
  logger: Logger;
  onIdentity: (material: IdentityMaterial) => void;
  /** Told the outcome of every request to the CA (for metrics, and for tests to await). */
  onAttempt?: (attempt: { ok: boolean; via: "token" | "renew"; error?: WeftError }) => void;
  /** A certificate kept from an earlier run (key + chain); used and renewed instead of spending a token. */
  initial?: { keyPem: string; chainPem: string };
  transport?: CaTransport;
  /** Uniform [0, 1) source for jitter. */
  random?: () => number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  startMaxAttempts?: number;
  /**
   * Keep trying after a refusal too (bad or spent token, untrusted server), not only after transient
   * failures: what a sidecar wants, since an operator may fix the token file or the CA while it waits.
   */
  retryRefusals?: boolean;
  requestTimeoutMs?: number;
}

interface Current extends IdentityMaterial {
  receivedAt: number;
}

/** Keeps a workload's identity issued and renewed; see the module comment. */
export class CaClient {
  readonly id: SpiffeId;
  private readonly options: CaClientOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly transport: CaTransport;
  private readonly random: () => number;
  private trustBundlePem: string;
  private current: Current | undefined;
  private timer: TimerHandle | undefined;
  private nextRenewalAt: number | undefined;
  private inflight: Promise<void> | undefined;
  private abort = new AbortController();
  private state: CaClientStatus["state"] = "new";
  private failures = 0;
  private renewals = 0;
  private lastError: WeftError | undefined;

  constructor(options: CaClientOptions) {
    if (typeof options.bundlePem !== "string" || !options.bundlePem.includes("-----BEGIN CERTIFICATE-----")) {
      throw new WeftError(
        "E_USAGE",
        "the CA client needs the trust bundle (meshca bundle) to verify the CA server; none was given",
        { reason: "no_bundle" },
      );
    }
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new WeftError("E_USAGE", `CA server URL "${options.url}" is not a URL`, { reason: "bad_url" });
    }
    if (url.protocol !== "https:") {
      throw new WeftError("E_USAGE", `CA server URL must be https://, got ${options.url}`, {
        reason: "bad_url",
      });
    }
    this.options = options;
    this.id = typeof options.id === "string" ? SpiffeId.parse(options.id) : options.id;
    this.clock = options.clock;
    this.log = childOf(options.logger, { component: "ca-client", spiffe_id: this.id.toString() });
    this.random = options.random ?? Math.random;
    this.trustBundlePem = options.bundlePem;
    this.transport =
      options.transport ??
      httpsTransport(options.url, { timeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS });
  }

  /**
   * Gets the first identity: adopts `initial` if it is live, otherwise signs a CSR with the join token.
   * Transient failures (unreachable, 5xx) are retried with backoff up to `startMaxAttempts`; a refusal
   * (bad token, wrong identity, untrusted server) rejects at once. Then renewal runs on its own.
   */
  async start(): Promise<void> {
    if (this.state !== "new") throw new WeftError("E_USAGE", "CaClient.start() may be called once");
    this.state = "starting";
    if (this.options.initial && this.adoptInitial(this.options.initial)) {
      this.state = "running";
      this.schedule();
      return;
    }
    if (!this.hasToken() && !this.options.kubernetesToken) {
      this.state = "stopped";
      throw new WeftError(
        "E_USAGE",
        `no join token and no live certificate for ${this.id.toString()}; make one with meshca token create`,
        { reason: "no_token" },
      );
    }
    const maxAttempts = this.options.startMaxAttempts ?? START_MAX_ATTEMPTS;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.exchange("token");
        break;
      } catch (err) {
        const weft = asWeftError(err);
        this.recordFailure(weft);
        if (this.isStopped()) throw weft;
        const transient = isTransient(weft);
        if ((!transient && !this.options.retryRefusals) || attempt >= maxAttempts) {
          this.state = "stopped";
          throw weft;
        }
        const delay = this.backoff(attempt, Number.POSITIVE_INFINITY);
        const fields = {
          err: weft.message,
          code: weft.code,
          reason: weft.reason,
          attempt,
          retry_in_ms: delay,
        };
        if (transient) this.log.warn(fields, "first certificate request failed; retrying");
        else this.log.error(fields, "the CA refused the first certificate request; retrying");
        await new Promise<void>((resolve) => {
          this.timer = this.clock.setTimeout(resolve, delay);
        });
        if (this.isStopped()) throw new WeftError("E_NOT_READY", "the CA client was stopped while starting");
      }
    }
    this.state = "running";
    this.schedule();
  }

  /** Renews now over mTLS with the current certificate and a new key; rejects with the reason on failure. */
  renew(): Promise<void> {
    if (!this.current) {
      return Promise.reject(
        new WeftError("E_NOT_READY", "there is no certificate to renew yet; call start()"),
      );
    }
    if (this.inflight) return this.inflight;
    const expired = this.current.notAfter.getTime() <= this.clock.now();
    // An expired certificate cannot prove anything over mTLS; a bounded-use token may still get a new one.
    const via = expired && (this.hasToken() || this.options.kubernetesToken) ? "token" : "renew";
    this.inflight = this.exchange(via).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /** Stops renewing and aborts a request in flight. */
  stop(): void {
    this.state = "stopped";
    this.timer?.cancel();
    this.timer = undefined;
    this.nextRenewalAt = undefined;
    this.abort.abort();
  }

  status(): CaClientStatus {
    return {
      id: this.id.toString(),
      notAfter: this.current?.notAfter,
      lastError: this.lastError?.message,
      lastErrorCode: this.lastError?.code,
      consecutiveFailures: this.failures,
      nextRenewalAt: this.nextRenewalAt === undefined ? undefined : new Date(this.nextRenewalAt),
      renewals: this.renewals,
      state: this.state,
    };
  }

  /** The identity now held, if any. */
  identity(): IdentityMaterial | undefined {
    if (!this.current) return undefined;
    const { receivedAt: _, ...material } = this.current;
    return material;
  }

  private hasToken(): boolean {
    const t = this.options.token;
    return typeof t === "function" ? true : Boolean(t);
  }

  private tokenNow(): string | undefined {
    const t = this.options.token;
    return typeof t === "function" ? t() : t;
  }

  /**
   * The revoked serials the CA serves with its bundle (GET /v1/bundle as JSON), verified like every
   * request against the trust bundle. At most 100,000 entries; malformed ones are an error.
   */
  async fetchRevoked(): Promise<string[]> {
    const response = await this.transport({
      method: "GET",
      path: "/v1/bundle?format=json",
      trustBundlePem: this.trustBundlePem,
      signal: this.abort.signal,
    });
    const body = response.body as { revoked?: unknown } | null;
    if (response.status !== 200 || !body || typeof body !== "object") {
      throw new WeftError("E_CA_UNREACHABLE", `the CA server answered ${response.status} for its bundle`, {
        reason: "bad_response",
      });
    }
    const list = body.revoked ?? [];
    if (!Array.isArray(list) || list.length > 100_000) {
      throw new WeftError("E_CA_UNREACHABLE", "the CA server's revocation list is malformed", {
        reason: "bad_response",
      });
    }
    return list.map((entry) => {
      const serial = (entry as { serial?: unknown } | null)?.serial;
      if (typeof serial !== "string" || !/^[0-9a-fA-F]{1,64}$/.test(serial)) {
        throw new WeftError("E_CA_UNREACHABLE", "the CA server's revocation list holds a malformed serial", {
          reason: "bad_response",
        });
      }
      return serial.toLowerCase();
    });
  }

  private isStopped(): boolean {
    return this.state === "stopped";
  }

  private adoptInitial(initial: { keyPem: string; chainPem: string }): boolean {
    try {
      const material = this.check(initial.chainPem, this.trustBundlePem, initial.keyPem);
      if (material.notAfter.getTime() <= this.clock.now()) {
        this.log.warn({ not_after: material.notAfter.toISOString() }, "stored certificate has expired");
        return false;
      }
      this.install(material, this.clock.now() - lifetimeSoFar(initial.chainPem, this.clock.now()));
      return true;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "stored certificate is not usable");
      return false;
    }
  }

  /** One request, its outcome reported to `onAttempt`. */
  private async exchange(via: "token" | "renew"): Promise<void> {
    try {
      await this.exchangeOnce(via);
    } catch (err) {
      const error = asWeftError(err);
      this.report({ ok: false, via, error });
      throw error;
    }
    this.report({ ok: true, via });
  }

  private report(attempt: { ok: boolean; via: "token" | "renew"; error?: WeftError }): void {
    try {
      this.options.onAttempt?.(attempt);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, "onAttempt callback failed");
    }
  }

  /** One request: new key + CSR, send, check the answer, install it. */
  private async exchangeOnce(via: "token" | "renew"): Promise<void> {
    const { csrPem, keyPem } = await createCsr(this.id, this.options.keyAlgorithm);
    if (this.isStopped()) throw new WeftError("E_NOT_READY", "the CA client was stopped");
    const current = this.current;
    const request: CaRequest =
      via === "token"
        ? {
            method: "POST",
            ...(this.options.kubernetesToken
              ? { path: "/v1/sign/kubernetes", body: { csr: csrPem, token: this.options.kubernetesToken() } }
              : { path: "/v1/sign", body: { csr: csrPem, token: this.tokenNow() } }),
            trustBundlePem: this.trustBundlePem,
            signal: this.abort.signal,
          }
        : {
            method: "POST",
            path: "/v1/renew",
            body: { csr: csrPem },
            trustBundlePem: this.trustBundlePem,
            clientIdentity: { keyPem: current!.keyPem, chainPem: current!.chainPem },
            signal: this.abort.signal,
          };
    const response = await this.transport(request);
    if (this.isStopped()) throw new WeftError("E_NOT_READY", "the CA client was stopped");
    const answer = parseAnswer(response);
    const material = this.check(answer.chain, answer.bundle, keyPem);
    this.install(material, this.clock.now());
    this.failures = 0;
    this.lastError = undefined;
    if (via === "renew" || current) this.renewals += 1;
    this.log.info(
      { serial: answer.serial, not_after: material.notAfter.toISOString(), via },
      current ? "certificate renewed" : "certificate obtained",
    );
  }

  /** Verifies a chain for our ID against `bundlePem` and checks it certifies `keyPem`. */
  private check(chainPem: string, bundlePem: string, keyPem: string): IdentityMaterial {
    const bundle = parseBundle(bundlePem, this.id.trustDomain);
    const got = verifySvid(chainPem, bundle, { now: new Date(this.clock.now()) });
    if (!got.equals(this.id)) {
      throw new WeftError("E_PEER_IDENTITY", `the CA returned ${got.toString()}, not ${this.id.toString()}`, {
        reason: "wrong_identity",
      });
    }
    const leaf = new X509Certificate(chainPem);
    const ours = createPublicKey(keyPem).export({ type: "spki", format: "der" });
    const theirs = leaf.publicKey.export({ type: "spki", format: "der" });
    if (!ours.equals(theirs)) {
      throw new WeftError("E_CERT_INVALID", "the CA returned a certificate for a different key", {
        reason: "key_mismatch",
      });
    }
    return { id: this.id, keyPem, chainPem, bundlePem, notAfter: new Date(leaf.validTo) };
  }

  private install(material: IdentityMaterial, receivedAt: number): void {
    this.current = { ...material, receivedAt };
    this.trustBundlePem = material.bundlePem;
    try {
      this.options.onIdentity(material);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, "onIdentity callback failed");
    }
  }

  /** Arms the timer for the next renewal at RENEW_FRACTION of the lifetime, with jitter. */
  private schedule(): void {
    const current = this.current!;
    const lifetime = Math.max(0, current.notAfter.getTime() - current.receivedAt);
    const jitter = 1 + (this.random() * 2 - 1) * RENEW_JITTER;
    const at = current.receivedAt + lifetime * RENEW_FRACTION * jitter;
    this.arm(Math.max(0, Math.round(at - this.clock.now())));
  }

  private arm(delayMs: number): void {
    if (this.isStopped()) return;
    this.timer?.cancel();
    this.nextRenewalAt = this.clock.now() + delayMs;
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.renew().then(
        () => this.schedule(),
        (err) => this.onRenewFailed(asWeftError(err)),
      );
    }, delayMs);
  }

  private onRenewFailed(err: WeftError): void {
    if (this.isStopped()) return;
    this.recordFailure(err);
    const current = this.current!;
    const now = this.clock.now();
    const remaining = current.notAfter.getTime() - now;
    const lifetime = Math.max(1, current.notAfter.getTime() - current.receivedAt);
    const delay = this.backoff(this.failures, remaining);
    const fields = {
      err: err.message,
      code: err.code,
      consecutive_failures: this.failures,
      not_after: current.notAfter.toISOString(),
      expires_in_ms: remaining,
      retry_in_ms: delay,
    };
    if (remaining <= 0) {
      this.log.error(
        fields,
        "certificate has EXPIRED and renewal keeps failing; peers will refuse this workload",
      );
    } else if (remaining < lifetime * EXPIRY_NEAR_FRACTION) {
      this.log.error(fields, "certificate expires soon and renewal keeps failing");
    } else {
      this.log.warn(fields, "certificate renewal failed; will retry");
    }
    this.arm(delay);
  }

  /**
   * Delay before retry `attempt` (1-based): base·2^(attempt-1) capped at retryMax, with "equal jitter"
   * (half fixed, half random), and never more than half the time left before expiry (at least the base),
   * so several attempts still happen before the certificate runs out.
   */
  private backoff(attempt: number, remainingMs: number): number {
    const base = this.options.retryBaseMs ?? RETRY_BASE_MS;
    const max = this.options.retryMaxMs ?? RETRY_MAX_MS;
    const exp = Math.min(max, base * 2 ** Math.min(30, attempt - 1));
    const jittered = exp / 2 + (exp / 2) * this.random();
    if (remainingMs <= 0) return Math.floor(jittered);
    return Math.floor(Math.max(Math.min(base, remainingMs), Math.min(jittered, remainingMs / 2)));
  }

  private recordFailure(err: WeftError): void {
    this.failures += 1;
    this.lastError = err;
  }
}

function lifetimeSoFar(chainPem: string, now: number): number {
  // For a stored certificate we do not know when it arrived; its notBefore is the best estimate.
  const leaf = new X509Certificate(chainPem);
  return Math.max(0, now - Date.parse(leaf.validFrom));
}

function isTransient(err: WeftError): boolean {
  return (
    err.code === "E_CA_UNREACHABLE" &&
    err.reason !== "server_untrusted" &&
    err.reason !== "server_name_mismatch"
  );
}

function asWeftError(err: unknown): WeftError {
  if (isWeftError(err)) return err;
  return new WeftError("E_CA_UNREACHABLE", errorMessage(err), { reason: "unexpected", cause: err });
}
