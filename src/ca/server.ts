/**
 * The CA server behind `meshca serve`: an HTTPS API that signs workload CSRs. It owns the request
 * pipeline (route → bounded body → JSON shape → credential → sign → log) and nothing else; certificates
 * come from `CertificateAuthority`, tokens from `TokenStore`, chain checks from `verifySvid`.
 *
 *   POST /v1/sign   {csr, token}  first certificate, paid for with a join token
 *   POST /v1/renew  {csr}         over mTLS with the current certificate; same identity only
 *   POST /v1/sign/kubernetes {csr, token}  first certificate, paid for with a projected service-account
 *                                 token (only with `kubeJoin`; see kube-join.ts)
 *   GET  /v1/bundle               the trust bundle as PEM (`?format=json` or Accept: application/json for JSON)
 *   GET  /healthz                 liveness
 *   GET  /metrics                 Prometheus metrics (CaMetrics), also on `metricsListen` over plain HTTP
 *
 * Availability against one hostile client: connections are capped per source address (IPv6 per /64)
 * beside the global cap, and failed credential attempts (bad token, bad client certificate) spend a
 * per-address budget; once it is spent the address gets 429 with Retry-After before its request is read
 * (rate-limit.ts). Both are counted. With `loadCa`, the CA directory is re-read every
 * `reloadIntervalMs`: after `meshca rotate` the new intermediate signs and the new bundle is served
 * without a restart, and the server's own certificate is re-issued under it.
 *
 * The server asks for a client certificate but does not let TLS reject a missing or foreign one (a
 * workload with a token has no certificate yet); `/v1/renew` verifies the presented chain itself. Every
 * refusal is a JSON `{error: {code, reason, message}}` with a 4xx status and nothing is issued; a peer's
 * bytes never crash the process. Issued certificates are logged (ID, serial, expiry); keys, CSRs and
 * tokens never are.
 */

import { X509Certificate } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { type ErrorCode, errorMessage, isWeftError, listenError, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { CaMetrics } from "../core/metrics.ts";
import type { CertificateAuthority, IssuedCert } from "./authority.ts";
import type { KubeJoinResult } from "./kube-join.ts";
import { addressKey, FailureLimiter } from "./rate-limit.ts";
import type { SerialStore } from "./serials.ts";
import type { SpiffeId } from "./spiffe-id.ts";
import type { TokenStore } from "./tokens.ts";
import { parseBundle, type TrustBundle, verifySvid } from "./verify.ts";

/** Largest request body accepted: a CSR is ~1 KiB (RSA-3072 ~2 KiB); 64 KiB leaves room, nothing more. */
export const MAX_BODY_BYTES = 64 * 1024;
/** After a 413 the rest of an oversized body is read and dropped up to this many bytes, then the socket is cut. */
export const MAX_DISCARD_BYTES = 16 * 1024 * 1024;
export const DEFAULT_LISTEN = "127.0.0.1:15443";
export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const HEADERS_TIMEOUT_MS = 10_000;
export const REQUEST_TIMEOUT_MS = 30_000;
export const IDLE_TIMEOUT_MS = 30_000;
export const KEEP_ALIVE_TIMEOUT_MS = 5_000;
export const MAX_CONNECTIONS = 1024;
/** Connections one source address (IPv6: one /64) may hold at once. */
export const MAX_CONNECTIONS_PER_ADDRESS = 64;
/** How often the CA directory is checked for a rotation (with `loadCa`). */
export const RELOAD_INTERVAL_MS = 5_000;
/** The server's own certificate lives this long and is replaced at half its life. */
export const SERVER_CERT_TTL_MS = 7 * 86_400_000;

export interface ListenAddress {
  host: string;
  port: number;
}

export interface CaServerOptions {
  ca: CertificateAuthority;
  tokens: TokenStore;
  logger: Logger;
  clock: Clock;
  /** `"127.0.0.1:15443"`, `"[::1]:0"` or `{ host, port }`; port 0 picks a free port. */
  listen: string | ListenAddress;
  /** Extra names for the server certificate (DNS names or IP addresses); the listen address is added. */
  sans?: string[];
  /** TTL of the leaves this server signs (default: the CA's default). */
  leafTtlMs?: number;
  serverCertTtlMs?: number;
  maxBodyBytes?: number;
  handshakeTimeoutMs?: number;
  headersTimeoutMs?: number;
  requestTimeoutMs?: number;
  maxConnections?: number;
  /** Kubernetes join (`/v1/sign/kubernetes`): checks a projected service-account token. */
  kubeJoin?: { authenticate(token: string): Promise<KubeJoinResult> };
  maxConnectionsPerAddress?: number;
  /** Failed credential attempts one address may make at once, and how often one more is allowed. */
  failureBurst?: number;
  failureRefillMs?: number;
  /** Re-reads the CA directory; the server swaps to what it returns when it changed. */
  loadCa?: () => Promise<CertificateAuthority>;
  reloadIntervalMs?: number;
  /** Also serve GET /metrics over plain HTTP here (`host:port`), for scrapers without the bundle. */
  metricsListen?: string | ListenAddress;
  metrics?: CaMetrics;
  /** Records every certificate issued, refuses revoked/superseded renewals, lists revoked serials. */
  serials?: SerialStore;
}

export interface CaServerStats {
  issued: number;
  refused: number;
}

export interface CaServer {
  /** `https://host:port` clients should use. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Certificates issued and requests refused since start. */
  stats(): CaServerStats;
  readonly metrics: CaMetrics;
  /** Where the plain-HTTP metrics listener is bound, when `metricsListen` was given. */
  readonly metricsPort: number | undefined;
  /** Check the CA directory now (what the reload timer does); resolves true when the CA changed. */
  reloadCa(): Promise<boolean>;
  close(): Promise<void>;
}

/** Parses `host:port`, `[v6]:port` or `:port` (host 127.0.0.1). Throws E_USAGE. */
export function parseListenAddress(text: string): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) {
    throw new WeftError(
      "E_USAGE",
      `listen address "${text}" is not host:port (e.g. 127.0.0.1:15443, [::1]:15443)`,
    );
  }
  const host = m[1] ?? (m[2] || "127.0.0.1");
  if (m[1] !== undefined && isIP(host) !== 6) {
    throw new WeftError("E_USAGE", `listen address "${text}": [${host}] is not an IPv6 address`);
  }
  return { host, port };
}

/** The DNS names and IP addresses the server certificate names, from the listen host and `--san`s. */
export function serverSans(
  host: string,
  extra: string[] = [],
): { dnsNames: string[]; ipAddresses: string[] } {
  const dns = new Set<string>(["localhost"]);
  const ips = new Set<string>();
  const unspecified = host === "0.0.0.0" || host === "::";
  if (unspecified || host === "127.0.0.1" || host === "::1" || host === "localhost") {
    ips.add("127.0.0.1");
    ips.add("::1");
  } else if (isIP(host)) {
    ips.add(host);
  } else {
    dns.add(host);
  }
  for (const san of extra) {
    if (isIP(san)) ips.add(san);
    else if (
      /^(?=.{1,253}$)(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9-]{1,63}$/.test(san)
    ) {
      dns.add(san.toLowerCase());
    } else {
      throw new WeftError("E_USAGE", `--san "${san}" is neither a DNS name nor an IP address`);
    }
  }
  return { dnsNames: [...dns], ipAddresses: [...ips] };
}

/** An HTTP refusal: status plus the WeftError that says why. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly error: WeftError,
    readonly headers: Record<string, string> = {},
  ) {
    super(error.message);
  }
}

function requestError(message: string, reason: string): WeftError {
  return new WeftError("E_REQUEST", message, { reason });
}

const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  E_REQUEST: 400,
  E_PEM: 400,
  E_CSR_SIGNATURE: 400,
  E_CSR_INVALID: 400,
  E_SPIFFE_ID: 400,
  E_CERT_INVALID: 400,
  E_CSR_IDENTITY: 403,
  E_TOKEN_INVALID: 401,
  E_TOKEN_EXPIRED: 403,
  E_TOKEN_USED: 403,
  E_TOKEN_MISMATCH: 403,
  E_SVID: 401,
  E_RENEW_IDENTITY: 403,
  E_LIMIT: 413,
  E_CA_EXPIRED: 503,
  E_KUBE_UNREACHABLE: 503,
  E_KUBE_RBAC: 503,
  E_KUBE_API: 503,
  E_RATE_LIMITED: 429,
  E_REVOKED: 403,
};

/** Refusals that spend the caller's failure budget: it tried a credential that does not hold. */
const CREDENTIAL_FAILURES = new Set<ErrorCode>([
  "E_TOKEN_INVALID",
  "E_TOKEN_EXPIRED",
  "E_TOKEN_USED",
  "E_TOKEN_MISMATCH",
  "E_SVID",
  "E_RENEW_IDENTITY",
  "E_REVOKED",
]);

/** What the server signs and verifies with; replaced as a whole when the CA directory changes. */
interface Signing {
  readonly ca: CertificateAuthority;
  readonly bundlePem: string;
  readonly bundle: TrustBundle;
  readonly bundleRootsDer: ReadonlySet<string>;
  /** Identifies the material: the bundle and the signing certificate. */
  readonly key: string;
}

function signingState(ca: CertificateAuthority): Signing {
  const bundlePem = ca.bundlePem();
  const bundle = parseBundle(bundlePem, ca.trustDomain);
  return {
    ca,
    bundlePem,
    bundle,
    bundleRootsDer: new Set(bundle.roots.map((r) => r.raw.toString("base64"))),
    key: `${bundlePem}\n${ca.signingCertPem()}`,
  };
}

const ROUTES = new Map<string, string[]>([
  ["/v1/sign", ["POST"]],
  ["/v1/renew", ["POST"]],
  ["/v1/sign/kubernetes", ["POST"]],
  ["/v1/bundle", ["GET", "HEAD"]],
  ["/healthz", ["GET", "HEAD"]],
  ["/metrics", ["GET", "HEAD"]],
]);

/** Starts the CA server; resolves once it listens (the real port is in `port`). */
export async function createCaServer(options: CaServerOptions): Promise<CaServer> {
  const { tokens, clock } = options;
  const log = options.logger.child({ component: "ca-server" });
  const metrics = options.metrics ?? new CaMetrics();
  let signing = signingState(options.ca);
  const limiter = new FailureLimiter({
    clock,
    ...(options.failureBurst !== undefined ? { burst: options.failureBurst } : {}),
    ...(options.failureRefillMs !== undefined ? { refillMs: options.failureRefillMs } : {}),
  });
  const maxPerAddress = options.maxConnectionsPerAddress ?? MAX_CONNECTIONS_PER_ADDRESS;
  const listen = typeof options.listen === "string" ? parseListenAddress(options.listen) : options.listen;
  const sans = serverSans(listen.host, options.sans);
  const maxBody = options.maxBodyBytes ?? MAX_BODY_BYTES;
  const serverCertTtlMs = options.serverCertTtlMs ?? SERVER_CERT_TTL_MS;
  const counters: CaServerStats = { issued: 0, refused: 0 };

  const headersTimeoutMs = options.headersTimeoutMs ?? HEADERS_TIMEOUT_MS;
  const requestTimeoutMs = Math.max(options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS, headersTimeoutMs);
  let serverIdentity = await signing.ca.issueServer({ ...sans, ttlMs: serverCertTtlMs });
  const server: Server = createServer(
    {
      key: serverIdentity.keyPem,
      cert: serverIdentity.chainPem,
      minVersion: "TLSv1.2",
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
      maxHeaderSize: 16 * 1024,
      // How often Node checks the headers/request deadlines (its default is every 30 s).
      connectionsCheckingInterval: Math.min(1000, headersTimeoutMs),
    },
    (req, res) => {
      handle(req, res).catch((err) => {
        log.error({ err: errorMessage(err) }, "ca request handler failed");
        if (!res.headersSent) sendJson(res, 500, errorBody(new WeftError("E_REQUEST", "internal error")));
        else res.destroy();
      });
    },
  );
  server.headersTimeout = headersTimeoutMs;
  server.requestTimeout = requestTimeoutMs;
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  server.maxHeadersCount = 64;
  server.maxConnections = options.maxConnections ?? MAX_CONNECTIONS;
  // The per-address cap, beside the global one: `connection` carries the raw TCP socket, before TLS.
  const perAddress = new Map<string, number>();
  const openSockets = new Set<import("node:net").Socket>();
  server.on("connection", (socket: import("node:net").Socket) => {
    const key = addressKey(socket.remoteAddress);
    const held = perAddress.get(key) ?? 0;
    if (held >= maxPerAddress) {
      metrics.connectionsRefused.inc({ reason: "per_address_limit" });
      socket.destroy();
      return;
    }
    perAddress.set(key, held + 1);
    openSockets.add(socket);
    metrics.connectionsActive.inc();
    socket.once("close", () => {
      openSockets.delete(socket);
      metrics.connectionsActive.dec();
      const left = (perAddress.get(key) ?? 1) - 1;
      if (left <= 0) perAddress.delete(key);
      else perAddress.set(key, left);
    });
  });
  server.on("drop", () => metrics.connectionsRefused.inc({ reason: "global_limit" }));
  server.setTimeout(IDLE_TIMEOUT_MS, (socket) => socket.destroy());
  server.on("tlsClientError", (err) => log.debug({ err: errorMessage(err) }, "tls handshake failed"));
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    log.debug({ err: errorMessage(err), code: err.code }, "malformed or stalled http request");
    // Answer only what the HTTP layer saw (parse errors, request timeouts); a TLS-level failure or a peer
    // that already left gets its socket destroyed.
    const code = err.code ?? "";
    const httpLevel =
      code === "ERR_HTTP_REQUEST_TIMEOUT" || (code.startsWith("HPE_") && code !== "HPE_INVALID_EOF_STATE");
    if (!httpLevel || !socket.writable) {
      socket.destroy();
      return;
    }
    const status =
      code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? "408 Request Timeout"
        : code === "HPE_HEADER_OVERFLOW"
          ? "431 Request Header Fields Too Large"
          : "400 Bad Request";
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });

  // Replace the server's own certificate at half its life so a long-running `meshca serve` never expires.
  let rotation: TimerHandle | undefined;
  let closed = false;
  const scheduleServerCert = (notAfter: Date) => {
    const delay = Math.max(60_000, (notAfter.getTime() - clock.now()) / 2);
    rotation = clock.setTimeout(() => {
      signing.ca
        .issueServer({ ...sans, ttlMs: serverCertTtlMs })
        .then((next) => {
          if (closed) return;
          server.setSecureContext(serverContext(next));
          serverIdentity = next;
          publishExpiry();
          log.info(
            { serial: next.serial, not_after: next.notAfter.toISOString() },
            "server certificate renewed",
          );
          scheduleServerCert(next.notAfter);
        })
        .catch((err) => {
          log.error({ err: errorMessage(err) }, "server certificate renewal failed");
          if (!closed) scheduleServerCert(new Date(clock.now() + 120_000));
        });
    }, delay);
  };
  scheduleServerCert(serverIdentity.notAfter);

  function serverContext(identity: { keyPem: string; chainPem: string }) {
    return { key: identity.keyPem, cert: identity.chainPem, minVersion: "TLSv1.2" as const };
  }

  /** The expiry gauges of the CA's own certificates. */
  function publishExpiry(): void {
    metrics.certExpiry.reset();
    const stamp = (pem: string) => new X509Certificate(pem);
    for (const root of signing.bundle.roots) {
      metrics.certExpiry.set(
        { cert: "root", serial: root.serialNumber.toLowerCase() },
        Math.floor(Date.parse(root.validTo) / 1000),
      );
    }
    const inter = stamp(signing.ca.signingCertPem());
    metrics.certExpiry.set(
      { cert: "intermediate", serial: inter.serialNumber.toLowerCase() },
      Math.floor(Date.parse(inter.validTo) / 1000),
    );
    metrics.certExpiry.set(
      { cert: "server", serial: serverIdentity.serial },
      Math.floor(serverIdentity.notAfter.getTime() / 1000),
    );
  }
  publishExpiry();

  // After `meshca rotate` the directory holds a new intermediate (and bundle): sign with it from now on.
  let reloadTimer: TimerHandle | undefined;
  let lastReloadError: string | undefined;
  async function reloadCa(): Promise<boolean> {
    if (!options.loadCa || closed) return false;
    let next: Signing;
    try {
      const ca = await options.loadCa();
      if (ca.trustDomain !== signing.ca.trustDomain) {
        throw new WeftError(
          "E_CONFIG",
          `the CA directory now serves trust domain ${ca.trustDomain}, not ${signing.ca.trustDomain}; restart meshca serve to switch`,
        );
      }
      next = signingState(ca);
    } catch (err) {
      const msg = errorMessage(err);
      if (msg !== lastReloadError)
        log.error({ err: msg }, "cannot reload the CA directory; still signing with the loaded CA");
      lastReloadError = msg;
      metrics.caReloads.inc({ outcome: "failed" });
      return false;
    }
    lastReloadError = undefined;
    if (next.key === signing.key) return false;
    const identity = await next.ca.issueServer({ ...sans, ttlMs: serverCertTtlMs });
    if (closed) return false;
    signing = next;
    server.setSecureContext(serverContext(identity));
    serverIdentity = identity;
    rotation?.cancel();
    scheduleServerCert(identity.notAfter);
    publishExpiry();
    metrics.caReloads.inc({ outcome: "reloaded" });
    log.info(
      {
        intermediate_serial: new X509Certificate(next.ca.signingCertPem()).serialNumber.toLowerCase(),
        roots: next.bundle.roots.length,
      },
      "signing CA reloaded from its directory",
    );
    return true;
  }
  const scheduleReload = () => {
    if (!options.loadCa || closed) return;
    reloadTimer = clock.setTimeout(() => {
      void reloadCa().finally(scheduleReload);
    }, options.reloadIntervalMs ?? RELOAD_INTERVAL_MS);
  };
  scheduleReload();

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    let path: string;
    let query: URLSearchParams;
    try {
      const url = new URL(req.url ?? "/", "https://ca.invalid");
      path = url.pathname;
      query = url.searchParams;
    } catch {
      return refuse(
        res,
        new HttpError(400, requestError("the request target is not a valid path", "bad_target")),
        remote,
      );
    }
    const methods = ROUTES.get(path);
    if (!methods) {
      req.resume();
      return refuse(res, new HttpError(404, requestError(`no such endpoint ${path}`, "not_found")), remote);
    }
    const method = req.method ?? "";
    if (!methods.includes(method)) {
      req.resume();
      return refuse(
        res,
        new HttpError(
          405,
          requestError(`${path} takes ${methods.join(" or ")}, not ${method}`, "method_not_allowed"),
          {
            Allow: methods.join(", "),
          },
        ),
        remote,
      );
    }
    const source = addressKey(req.socket.remoteAddress);
    try {
      if (path === "/healthz") {
        req.resume();
        return sendJson(res, 200, { ok: true });
      }
      if (path === "/metrics") {
        req.resume();
        return send(res, 200, "text/plain; version=0.0.4", await metrics.render());
      }
      if (path === "/v1/bundle") {
        req.resume();
        const wantsJson =
          query.get("format") === "json" || /application\/json/.test(req.headers.accept ?? "");
        if (wantsJson) {
          // The revoked, unexpired serials travel with the bundle: sidecars fetch both together.
          const revoked = options.serials ? await options.serials.revokedUnexpired() : [];
          metrics.revokedSerials.set(revoked.length);
          return sendJson(res, 200, {
            trustDomain: signing.ca.trustDomain,
            bundle: signing.bundlePem,
            revoked,
          });
        }
        return send(res, 200, "application/x-pem-file", signing.bundlePem);
      }
      // A spent failure budget is answered before anything of the request is read or checked.
      const waitMs = limiter.retryAfterMs(source);
      if (waitMs > 0) {
        req.resume();
        if (path === "/v1/sign") metrics.tokenAttempts.inc({ outcome: "rate_limited" });
        const seconds = Math.max(1, Math.ceil(waitMs / 1000));
        return refuse(
          res,
          new HttpError(
            429,
            new WeftError(
              "E_RATE_LIMITED",
              `too many failed attempts from ${source}; retry in ${seconds} s`,
              { reason: "rate_limited" },
            ),
            { "Retry-After": String(seconds) },
          ),
          remote,
        );
      }
      const body = await readJsonBody(req, maxBody);
      const issued =
        path === "/v1/sign"
          ? await signWithToken(body)
          : path === "/v1/sign/kubernetes"
            ? await signWithKubeToken(body)
            : await renew(req, body);
      counters.issued += 1;
      metrics.issued.inc({
        via: path === "/v1/sign" ? "token" : path === "/v1/sign/kubernetes" ? "kubernetes" : "renew",
      });
      if (path === "/v1/sign") metrics.tokenAttempts.inc({ outcome: "ok" });
      log.info(
        {
          spiffe_id: issued.cert.id.toString(),
          serial: issued.cert.serial,
          not_after: issued.cert.notAfter.toISOString(),
          via: issued.via,
          remote,
        },
        "certificate issued",
      );
      sendJson(res, 200, {
        spiffeId: issued.cert.id.toString(),
        chain: issued.cert.chainPem,
        bundle: issued.cert.bundlePem,
        serial: issued.cert.serial,
        notAfter: issued.cert.notAfter.toISOString(),
      });
    } catch (err) {
      if (err instanceof HttpError) return refuse(res, err, remote);
      if (isWeftError(err)) {
        if (CREDENTIAL_FAILURES.has(err.code)) limiter.fail(source);
        if (path === "/v1/sign" && err.code.startsWith("E_TOKEN_")) {
          metrics.tokenAttempts.inc({ outcome: err.reason });
        }
        const status = STATUS_BY_CODE[err.code];
        if (status !== undefined) return refuse(res, new HttpError(status, err), remote);
      }
      throw err;
    }
  }

  async function signWithToken(body: Record<string, unknown>): Promise<{ cert: IssuedCert; via: string }> {
    const csr = stringField(body, "csr", 32 * 1024);
    const token = stringField(body, "token", 256);
    rejectUnknownFields(body, ["csr", "token"]);
    // Check the CSR (signature, shape) before the token, so a broken CSR never spends it.
    const { ca } = signing;
    const requested = await ca.inspectCsr(csr);
    const use = await tokens.consume(token, requested);
    try {
      const cert = await ca.signCsr(csr, {
        authorize: (id) => {
          if (!id.equals(requested)) {
            throw new WeftError("E_CSR_IDENTITY", `the CSR changed identity to ${id.toString()}`, {
              reason: "identity_changed",
            });
          }
        },
        ttlMs: options.leafTtlMs,
      });
      await recordIssued(cert);
      return { cert, via: `token:${use.ref}` };
    } catch (err) {
      await use.refund();
      throw err;
    }
  }

  async function recordIssued(cert: IssuedCert): Promise<void> {
    await options.serials?.record({
      serial: cert.serial,
      id: cert.id.toString(),
      notAfter: cert.notAfter,
      root: signing.ca.rootFingerprint(),
    });
  }

  async function signWithKubeToken(
    body: Record<string, unknown>,
  ): Promise<{ cert: IssuedCert; via: string }> {
    if (!options.kubeJoin) {
      throw new HttpError(
        404,
        requestError("Kubernetes join is not enabled on this CA (meshca serve --kubernetes)", "not_found"),
      );
    }
    const csr = stringField(body, "csr", 32 * 1024);
    const token = stringField(body, "token", 16 * 1024);
    rejectUnknownFields(body, ["csr", "token"]);
    const { ca } = signing;
    await ca.inspectCsr(csr);
    const entitled = await options.kubeJoin.authenticate(token);
    const cert = await ca.signCsr(csr, {
      authorize: (id) => {
        if (!id.equals(entitled.id)) {
          throw new WeftError(
            "E_CSR_IDENTITY",
            `the service-account token entitles ${entitled.id.toString()}, but the CSR asks for ${id.toString()}`,
            { reason: "identity_mismatch" },
          );
        }
      },
      ttlMs: options.leafTtlMs,
    });
    await recordIssued(cert);
    return { cert, via: entitled.ref };
  }

  async function renew(
    req: IncomingMessage,
    body: Record<string, unknown>,
  ): Promise<{ cert: IssuedCert; via: string }> {
    const csr = stringField(body, "csr", 32 * 1024);
    rejectUnknownFields(body, ["csr"]);
    const { id: presented, leaf } = presentedIdentity(req.socket as TLSSocket);
    // A revoked certificate, or one a renewal already replaced, renews no more (checked and claimed
    // before signing, so two renewals racing with one certificate get one).
    const complete = await options.serials?.claimRenewal(
      leaf.serialNumber,
      presented.toString(),
      new Date(leaf.validTo),
      "",
    );
    let cert: IssuedCert;
    try {
      cert = await signing.ca.signCsr(csr, {
        authorize: (id) => {
          if (!id.equals(presented)) {
            throw new WeftError(
              "E_RENEW_IDENTITY",
              `the client certificate proves ${presented.toString()}, but the CSR asks for ${id.toString()}`,
              { reason: "identity_differs" },
            );
          }
        },
        ttlMs: options.leafTtlMs,
      });
    } catch (err) {
      await complete?.();
      throw err;
    }
    await complete?.({ serial: cert.serial, notAfter: cert.notAfter, root: signing.ca.rootFingerprint() });
    return { cert, via: "renew" };
  }

  function presentedIdentity(socket: TLSSocket): { id: SpiffeId; leaf: X509Certificate } {
    const peer =
      typeof socket.getPeerCertificate === "function" ? socket.getPeerCertificate(true) : undefined;
    if (!peer?.raw) {
      throw new WeftError("E_SVID", "renewal needs the current certificate as the TLS client certificate", {
        reason: "no_client_cert",
      });
    }
    const chain: Buffer[] = [];
    const seen = new Set<string>();
    for (let cert = peer; cert?.raw && chain.length < 8; cert = cert.issuerCertificate) {
      const key = cert.raw.toString("base64");
      if (seen.has(key)) break;
      seen.add(key);
      // A client may send the root too; the verifier anchors on the bundle, so leave roots out.
      if (!signing.bundleRootsDer.has(key)) chain.push(cert.raw);
    }
    const id = verifySvid(chain, signing.bundle, { now: new Date(clock.now()), role: "client" });
    return { id, leaf: new X509Certificate(chain[0]!) };
  }

  function refuse(res: ServerResponse, err: HttpError, remote: string): void {
    counters.refused += 1;
    metrics.refused.inc({ status: String(err.status), reason: err.error.reason });
    log.warn(
      { status: err.status, code: err.error.code, reason: err.error.reason, remote },
      "request refused",
    );
    if (res.headersSent || res.destroyed) return;
    sendJson(res, err.status, errorBody(err.error), err.headers);
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) =>
      reject(listenError("the CA server", listen.host, listen.port, "--listen", err));
    server.once("error", onError);
    server.listen(listen.port, listen.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  server.on("error", (err) => log.error({ err: errorMessage(err) }, "ca server error"));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : listen.port;
  const urlHost =
    listen.host === "0.0.0.0"
      ? "127.0.0.1"
      : listen.host === "::"
        ? "[::1]"
        : isIP(listen.host) === 6
          ? `[${listen.host}]`
          : listen.host;
  const url = `https://${urlHost}:${port}`;
  log.info({ url, trust_domain: signing.ca.trustDomain, sans }, "ca server listening");

  let metricsServer: import("node:http").Server | undefined;
  let metricsPort: number | undefined;
  if (options.metricsListen !== undefined) {
    const at =
      typeof options.metricsListen === "string"
        ? parseListenAddress(options.metricsListen)
        : options.metricsListen;
    const plain = createHttpServer((req, res) => {
      req.resume();
      if ((req.url ?? "").split("?")[0] !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      metrics.render().then(
        (text) => send(res, 200, "text/plain; version=0.0.4", text),
        () => res.writeHead(500).end(),
      );
    });
    plain.headersTimeout = headersTimeoutMs;
    plain.requestTimeout = requestTimeoutMs;
    plain.maxConnections = 64;
    metricsServer = plain;
    try {
      await new Promise<void>((resolve, reject) => {
        plain.once("error", reject);
        plain.listen(at.port, at.host, () => {
          plain.off("error", reject);
          resolve();
        });
      });
    } catch (err) {
      closed = true;
      rotation?.cancel();
      reloadTimer?.cancel();
      server.close();
      server.closeAllConnections();
      throw new WeftError(
        "E_USAGE",
        `cannot listen for metrics on ${at.host}:${at.port}: ${errorMessage(err)}`,
      );
    }
    plain.on("error", (err) => log.error({ err: errorMessage(err) }, "metrics listener error"));
    const a = plain.address();
    metricsPort = typeof a === "object" && a ? a.port : at.port;
  }

  return {
    url,
    host: listen.host,
    port,
    metrics,
    metricsPort,
    reloadCa,
    stats: () => ({ ...counters }),
    close: () =>
      new Promise<void>((resolve) => {
        closed = true;
        rotation?.cancel();
        reloadTimer?.cancel();
        metricsServer?.close();
        metricsServer?.closeAllConnections();
        server.close(() => resolve());
        server.closeAllConnections();
        // Connections still in their TLS handshake are not HTTP connections yet.
        for (const sock of openSockets) sock.destroy();
      }),
  };
}

function stringField(body: Record<string, unknown>, name: string, maxLength: number): string {
  const value = body[name];
  if (value === undefined) throw requestError(`the JSON body needs a "${name}" field`, `missing_${name}`);
  if (typeof value !== "string") throw requestError(`"${name}" must be a string`, `bad_${name}_type`);
  if (value.length === 0 || value.length > maxLength) {
    throw requestError(`"${name}" must be 1 to ${maxLength} characters`, `bad_${name}_length`);
  }
  return value;
}

function rejectUnknownFields(body: Record<string, unknown>, allowed: string[]): void {
  const extra = Object.keys(body).filter((k) => !allowed.includes(k));
  if (extra.length > 0) {
    throw requestError(
      `unknown field(s) ${extra.map((k) => JSON.stringify(k.slice(0, 40))).join(", ")}`,
      "unknown_field",
    );
  }
}

/**
 * Reads a JSON object body of at most `max` bytes. An oversized body gets its 413 at once; the rest is
 * read and dropped (so the client sees the answer instead of a reset) up to MAX_DISCARD_BYTES.
 */
function readJsonBody(req: IncomingMessage, max: number): Promise<Record<string, unknown>> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json") {
    req.resume();
    return Promise.reject(
      new HttpError(
        415,
        requestError(`send Content-Type: application/json, not "${type || "none"}"`, "content_type"),
      ),
    );
  }
  const tooLarge = () =>
    new HttpError(
      413,
      new WeftError("E_LIMIT", `the request body is larger than ${max} bytes`, { reason: "body_too_large" }),
      {
        Connection: "close",
      },
    );
  const declared = Number(req.headers["content-length"] ?? "0");
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let overflowed = false;
    const overflow = () => {
      overflowed = true;
      chunks.length = 0;
      reject(tooLarge());
    };
    if (declared > max) overflow();
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (overflowed) {
        if (size > MAX_DISCARD_BYTES) req.socket.destroy();
        return;
      }
      if (size > max) return overflow();
      chunks.push(chunk);
    });
    req.on("error", (err) => {
      if (!overflowed)
        reject(new HttpError(400, requestError(`the request body failed: ${err.message}`, "body_error")));
    });
    req.on("end", () => {
      if (overflowed) return;
      const text = Buffer.concat(chunks).toString("utf8");
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        return reject(new HttpError(400, requestError("the body is not valid JSON", "malformed_json")));
      }
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        return reject(new HttpError(400, requestError("the body must be a JSON object", "not_an_object")));
      }
      resolve(value as Record<string, unknown>);
    });
  });
}

function errorBody(err: WeftError): unknown {
  return { error: { code: err.code, reason: err.reason, message: err.message } };
}

function sendJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): void {
  send(res, status, "application/json", `${JSON.stringify(value)}\n`, headers);
}

function send(
  res: ServerResponse,
  status: number,
  type: string,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    "Content-Type": type,
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    ...headers,
  });
  res.end(res.req?.method === "HEAD" ? undefined : body);
}
