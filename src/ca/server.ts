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
 *
 * This file builds the server and its listeners; the handlers are in server-routes.ts, the HTTP
 * vocabulary (refusals, bounded body, answers) in server-http.ts, the signing material and the server's
 * own certificate in server-signing.ts.
 */

import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, type Server } from "node:https";
import { isIP, type Socket } from "node:net";
import type { Clock } from "../core/clock.ts";
import { errorMessage, listenError, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { CaMetrics } from "../core/metrics.ts";
import type { CertificateAuthority, IssuedIdentity } from "./authority.ts";
import type { KubeJoinResult } from "./kube-join.ts";
import { addressKey, FailureLimiter } from "./rate-limit.ts";
import type { SerialStore } from "./serials.ts";
import { answerClientError, send } from "./server-http.ts";
import { type RouteContext, respond } from "./server-routes.ts";
import { ServerSigning, serverContext } from "./server-signing.ts";
import type { TokenStore } from "./tokens.ts";

export { MAX_DISCARD_BYTES } from "./server-http.ts";

/** Largest request body accepted: a CSR is ~1 KiB (RSA-3072 ~2 KiB); 64 KiB leaves room, nothing more. */
export const MAX_BODY_BYTES = 64 * 1024;
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

/** Starts the CA server; resolves once it listens (the real port is in `port`). */
export async function createCaServer(options: CaServerOptions): Promise<CaServer> {
  const log = options.logger.child({ component: "ca-server" });
  const metrics = options.metrics ?? new CaMetrics();
  const listen = typeof options.listen === "string" ? parseListenAddress(options.listen) : options.listen;
  const sans = serverSans(listen.host, options.sans);
  const headersTimeoutMs = options.headersTimeoutMs ?? HEADERS_TIMEOUT_MS;
  const requestTimeoutMs = Math.max(options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS, headersTimeoutMs);
  const counters: CaServerStats = { issued: 0, refused: 0 };
  const signing = await ServerSigning.create({
    ca: options.ca,
    sans,
    serverCertTtlMs: options.serverCertTtlMs ?? SERVER_CERT_TTL_MS,
    clock: options.clock,
    log,
    metrics,
    loadCa: options.loadCa,
    reloadIntervalMs: options.reloadIntervalMs ?? RELOAD_INTERVAL_MS,
  });
  const ctx = routeContext(options, log, metrics, counters, signing);
  const server = httpsServer(options, signing.serverIdentity, headersTimeoutMs, requestTimeoutMs, ctx);
  const openSockets = capPerAddress(
    server,
    options.maxConnectionsPerAddress ?? MAX_CONNECTIONS_PER_ADDRESS,
    metrics,
  );
  signing.start((identity) => server.setSecureContext(serverContext(identity)));

  await listenOn(server, listen, (err) => {
    signing.close();
    return listenError("the CA server", listen.host, listen.port, "--listen", err);
  });
  server.on("error", (err) => log.error({ err: errorMessage(err) }, "ca server error"));
  const port = boundPort(server, listen.port);
  const url = `https://${urlHost(listen.host)}:${port}`;
  log.info({ url, trust_domain: signing.current.ca.trustDomain, sans }, "ca server listening");

  let metricsServer: HttpServer | undefined;
  if (options.metricsListen !== undefined) {
    try {
      metricsServer = await metricsListener(
        options.metricsListen,
        metrics,
        log,
        headersTimeoutMs,
        requestTimeoutMs,
      );
    } catch (err) {
      signing.close();
      server.close();
      server.closeAllConnections();
      throw err;
    }
  }

  return {
    url,
    host: listen.host,
    port,
    metrics,
    metricsPort: metricsServer ? boundPort(metricsServer, 0) : undefined,
    reloadCa: () => signing.reloadCa(),
    stats: () => ({ ...counters }),
    close: () =>
      new Promise<void>((resolve) => {
        signing.close();
        metricsServer?.close();
        metricsServer?.closeAllConnections();
        server.close(() => resolve());
        server.closeAllConnections();
        // Connections still in their TLS handshake are not HTTP connections yet.
        for (const sock of openSockets) sock.destroy();
      }),
  };
}

/** What the handlers share: the options they read, the limiter and counters, the signing material now. */
function routeContext(
  options: CaServerOptions,
  log: Logger,
  metrics: CaMetrics,
  counters: CaServerStats,
  signing: ServerSigning,
): RouteContext {
  return {
    tokens: options.tokens,
    log,
    clock: options.clock,
    metrics,
    limiter: new FailureLimiter({
      clock: options.clock,
      ...(options.failureBurst !== undefined ? { burst: options.failureBurst } : {}),
      ...(options.failureRefillMs !== undefined ? { refillMs: options.failureRefillMs } : {}),
    }),
    counters,
    maxBody: options.maxBodyBytes ?? MAX_BODY_BYTES,
    leafTtlMs: options.leafTtlMs,
    kubeJoin: options.kubeJoin,
    serials: options.serials,
    signing: () => signing.current,
  };
}

/** The HTTPS server: asks for a client certificate without letting TLS refuse one; bounded headers and time. */
function httpsServer(
  options: CaServerOptions,
  identity: IssuedIdentity,
  headersTimeoutMs: number,
  requestTimeoutMs: number,
  ctx: RouteContext,
): Server {
  const server = createServer(
    {
      key: identity.keyPem,
      cert: identity.chainPem,
      minVersion: "TLSv1.2",
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
      maxHeaderSize: 16 * 1024,
      // How often Node checks the headers/request deadlines (its default is every 30 s).
      connectionsCheckingInterval: Math.min(1000, headersTimeoutMs),
    },
    (req, res) => respond(ctx, req, res),
  );
  server.headersTimeout = headersTimeoutMs;
  server.requestTimeout = requestTimeoutMs;
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  server.maxHeadersCount = 64;
  server.maxConnections = options.maxConnections ?? MAX_CONNECTIONS;
  server.on("drop", () => ctx.metrics.connectionsRefused.inc({ reason: "global_limit" }));
  server.setTimeout(IDLE_TIMEOUT_MS, (socket) => socket.destroy());
  server.on("tlsClientError", (err) => ctx.log.debug({ err: errorMessage(err) }, "tls handshake failed"));
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    ctx.log.debug({ err: errorMessage(err), code: err.code }, "malformed or stalled http request");
    answerClientError(err, socket);
  });
  return server;
}

/**
 * The per-address cap, beside the global one: `connection` carries the raw TCP socket, before TLS.
 * Returns the open sockets (close destroys those still in their handshake).
 */
function capPerAddress(server: Server, maxPerAddress: number, metrics: CaMetrics): ReadonlySet<Socket> {
  const perAddress = new Map<string, number>();
  const openSockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
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
  return openSockets;
}

/** GET /metrics over plain HTTP on `metricsListen`, for scrapers without the bundle. Throws E_USAGE. */
async function metricsListener(
  where: string | ListenAddress,
  metrics: CaMetrics,
  log: Logger,
  headersTimeoutMs: number,
  requestTimeoutMs: number,
): Promise<HttpServer> {
  const at = typeof where === "string" ? parseListenAddress(where) : where;
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
  await listenOn(
    plain,
    at,
    (err) =>
      new WeftError("E_USAGE", `cannot listen for metrics on ${at.host}:${at.port}: ${errorMessage(err)}`),
  );
  plain.on("error", (err) => log.error({ err: errorMessage(err) }, "metrics listener error"));
  return plain;
}

function listenOn(
  server: HttpServer | Server,
  at: ListenAddress,
  failure: (err: Error) => Error,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(failure(err));
    server.once("error", onError);
    server.listen(at.port, at.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

function boundPort(server: HttpServer | Server, fallback: number): number {
  const address = server.address();
  return typeof address === "object" && address ? address.port : fallback;
}

/** The host of the URL clients should use: loopback for an unspecified address, v6 in brackets. */
function urlHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return isIP(host) === 6 ? `[${host}]` : host;
}
