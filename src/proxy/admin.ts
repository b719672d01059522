/**
 * The admin port (15000, loopback by default): `/metrics` (Prometheus text from the sidecar's own
 * registry), `/ready` (200 once the first certificate is loaded and the listeners are up; 503 with the
 * reason before that and while draining), `/live`, `/config` (the effective config, secrets redacted),
 * `/certs` (the identity in use: SPIFFE ID, serial, validity, seconds left) and `/endpoints` (discovery's
 * view of services and endpoints), `/logging` (the log level; `POST /logging?level=debug` changes it
 * until the next restart or a weft.yaml change of `log.level`), `/explain` (what the sidecar would do
 * with a connection and why, for `weft explain`). Otherwise read-only: every other
 * method or path is refused.
 */
import http from "node:http";
import { listenError } from "../core/errors.ts";
import { LOG_LEVELS, type Logger, type LogLevel } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import { normalizeAddress } from "../discovery/types.ts";
import { type ListenAddr, listenAddr } from "./addresses.ts";

export interface Readiness {
  readonly ready: boolean;
  /** Why not ready: `no_certificate`, `listeners_not_up`, `draining`. */
  readonly reason?: string;
}

export interface AdminSources {
  readonly metrics: WeftMetrics;
  readiness(): Readiness;
  config(): unknown;
  certs(): unknown;
  endpoints(): unknown;
  /** `/explain?dst=host:port`, `?service=name[&port=n]` or `?peer=spiffe://...&port=n`: what would happen, and why. */
  explain(query: URLSearchParams): { status: number; body: unknown };
  /** The log level now, and a way to change it (`POST /logging?level=debug`). */
  logLevel(): string | undefined;
  setLogLevel(level: LogLevel): boolean;
}

export interface AdminOptions {
  readonly address: string;
  readonly port: number;
  readonly logger: Logger;
  readonly sources: AdminSources;
  /** `metrics`: the Prometheus port, which serves `/metrics` (and `/ready` for probes) and nothing else. */
  readonly role?: "admin" | "metrics";
}

const SECRET_KEYS = new Set(["token", "password", "secret", "keyPem", "privateKey"]);

/** A copy of `value` with secret-bearing keys (`token`, ...) replaced by `"[redacted]"`. */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEYS.has(k) ? "[redacted]" : redact(v);
    return out;
  }
  return value;
}

export class AdminServer {
  private readonly server: http.Server;

  constructor(private readonly options: AdminOptions) {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        options.logger.error({ err }, "admin request failed");
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end("internal error\n");
      });
    });
    this.server.on("clientError", (_err, socket) => socket.destroy());
    // Admin scrapes are short; do not let a stuck client hold a socket for long.
    this.server.requestTimeout = 10_000;
    this.server.headersTimeout = 5_000;
  }

  listen(): Promise<ListenAddr> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) =>
        reject(
          listenError(
            this.options.role === "metrics" ? "the metrics server" : "the admin server",
            this.options.address,
            this.options.port,
            this.options.role === "metrics" ? "listeners.metrics.port" : "listeners.admin.port",
            err,
          ),
        );
      this.server.once("error", onError);
      this.server.listen({ host: this.options.address, port: this.options.port }, () => {
        this.server.removeListener("error", onError);
        this.server.on("error", (err) => this.options.logger.warn({ err }, "admin server error"));
        const a = this.server.address() as { address: string; port: number };
        resolve(listenAddr({ address: normalizeAddress(a.address), port: a.port }));
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin");
    const path = url.pathname;
    if (this.options.role === "metrics" && path !== "/metrics" && path !== "/ready") {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found: this is the metrics port (/metrics, /ready); the rest is on the admin port\n");
      return;
    }
    if (path === "/logging" && req.method === "POST") {
      const level = url.searchParams.get("level") ?? "";
      if (!(LOG_LEVELS as readonly string[]).includes(level)) {
        res.writeHead(400, { "content-type": "text/plain" });
        res.end(`level must be one of ${LOG_LEVELS.join(", ")}: POST /logging?level=debug\n`);
        return;
      }
      const before = this.options.sources.logLevel();
      if (!this.options.sources.setLogLevel(level as LogLevel)) {
        res.writeHead(409, { "content-type": "text/plain" });
        res.end("this sidecar's logger has no level to change\n");
        return;
      }
      this.options.logger.warn({ from: before, to: level }, "log level changed through the admin port");
      return json(res, { level });
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end("method not allowed\n");
      return;
    }
    const s = this.options.sources;
    switch (path) {
      case "/metrics": {
        const body = await s.metrics.render();
        res.writeHead(200, { "content-type": s.metrics.registry.contentType });
        res.end(body);
        return;
      }
      case "/ready": {
        const r = s.readiness();
        res.writeHead(r.ready ? 200 : 503, { "content-type": "text/plain" });
        res.end(r.ready ? "ready\n" : `not ready: ${r.reason ?? "unknown"}\n`);
        return;
      }
      case "/live":
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("live\n");
        return;
      case "/config":
        return json(res, redact(s.config()));
      case "/certs":
        return json(res, s.certs());
      case "/endpoints":
        return json(res, s.endpoints());
      case "/logging":
        return json(res, { level: s.logLevel() ?? null });
      case "/explain": {
        const r = s.explain(url.searchParams);
        return json(res, r.body, r.status);
      }
      default:
        res.writeHead(404, { "content-type": "text/plain" });
        res.end("not found: try /metrics /ready /live /config /certs /endpoints /logging /explain\n");
    }
  }
}

function json(res: http.ServerResponse, value: unknown, status = 200): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(`${JSON.stringify(value, null, 2)}\n`);
}
