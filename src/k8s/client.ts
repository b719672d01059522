/**
 * `KubeApi`: the one interface through which Weft talks to the Kubernetes API server, and its
 * implementation on `node:https` (keep-alive agent, JSON bodies, bounded responses, streamed watches).
 *
 * Why not `@kubernetes/client-node`: its 2.x line needs Node >= 22.19 (undici 8), which the package's
 * Node 20 floor cannot take, and it brings ~16 runtime dependencies (websockets, tar, proxies, OIDC) for
 * what Weft needs: list, watch, create, and two reviews. The object types come from `kubernetes-types`
 * (types only, nothing at run time).
 *
 * Errors: an answer with a non-2xx status is a `KubeApiError` (`E_KUBE_API`) carrying the HTTP status and
 * the `Status` reason the server gave; a connection that could not be made or broke is `E_KUBE_UNREACHABLE`.
 */

import type { IncomingMessage } from "node:http";
import { Agent, request as httpsRequest } from "node:https";
import { errorMessage, WeftError } from "../core/errors.ts";
import type { KubeConnection } from "./config.ts";

/** Largest non-watch response accepted (a list page of 500 pods is ~2.5 MiB). */
export const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
/** Largest single watch event (one object) accepted. */
export const MAX_WATCH_EVENT_BYTES = 16 * 1024 * 1024;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export interface KubeObjectMeta {
  readonly name?: string;
  readonly namespace?: string;
  readonly uid?: string;
  readonly resourceVersion?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly deletionTimestamp?: string;
}

export interface KubeObject {
  readonly apiVersion?: string;
  readonly kind?: string;
  readonly metadata?: KubeObjectMeta;
}

export interface KubeList<T> {
  readonly metadata?: { readonly resourceVersion?: string; readonly continue?: string };
  readonly items: T[];
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

export interface WatchEvent<T> {
  readonly type: WatchEventType;
  readonly object: T;
}

/** A Kubernetes `Status` (what errors and ERROR watch events carry). */
export interface KubeStatus {
  readonly kind?: "Status";
  readonly status?: string;
  readonly message?: string;
  readonly reason?: string;
  readonly code?: number;
}

export type Query = Readonly<Record<string, string | number | boolean | undefined>>;

export interface KubeRequest {
  readonly method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** `/api/v1/namespaces/default/pods`, without the query. */
  readonly path: string;
  readonly query?: Query;
  readonly body?: unknown;
  /** Content type of a PATCH body (default JSON merge patch). */
  readonly contentType?: string;
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

export interface KubeApi {
  /** The namespace this process runs in (in-cluster) or its kubeconfig context's. */
  readonly namespace: string;
  readonly origin: string;
  /** One request; resolves with the parsed JSON body of a 2xx answer, else throws. */
  request<T>(req: KubeRequest): Promise<T>;
  /**
   * A watch: GET `path?watch=true&...query`, each event handed to `onEvent` as it arrives. Resolves when
   * the server ends the stream (its timeoutSeconds), rejects on a non-2xx answer or a broken connection,
   * and ends quietly when `signal` aborts.
   */
  watch<T>(
    path: string,
    query: Query,
    onEvent: (e: WatchEvent<T>) => void,
    signal: AbortSignal,
  ): Promise<void>;
  close(): void;
}

export class KubeApiError extends WeftError {
  constructor(
    readonly status: number,
    readonly kubeStatus: KubeStatus | undefined,
    what: string,
  ) {
    const reason = kubeStatus?.reason || `http_${status}`;
    super(
      "E_KUBE_API",
      `${what}: ${status} ${kubeStatus?.reason ?? ""} ${kubeStatus?.message ?? ""}`.trim(),
      {
        reason: reason.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase(),
      },
    );
  }
}

/** True for "the resource version you hold is too old": HTTP 410 or an ERROR event with code 410. */
export function isGone(err: unknown): boolean {
  return err instanceof KubeApiError && (err.status === 410 || err.kubeStatus?.code === 410);
}

function queryString(q: Query | undefined): string {
  if (!q) return "";
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
  const s = params.toString();
  return s ? `?${s}` : "";
}

function unreachable(what: string, err: unknown): WeftError {
  const code = (err as { code?: string }).code;
  return new WeftError("E_KUBE_UNREACHABLE", `${what}: ${errorMessage(err)}`, {
    reason: code ? code.toLowerCase() : "connection_failed",
    cause: err,
  });
}

export class HttpsKubeApi implements KubeApi {
  readonly namespace: string;
  readonly origin: string;
  private readonly agent: Agent;
  private readonly url: URL;

  constructor(private readonly conn: KubeConnection) {
    this.namespace = conn.namespace;
    this.origin = conn.origin;
    this.url = new URL(conn.server);
    this.agent = new Agent({
      // No socket cap: every watch holds one for minutes, and lists must never queue behind them.
      keepAlive: true,
      ...(conn.caPem !== undefined ? { ca: conn.caPem } : {}),
      ...(conn.credentials.clientCert
        ? { cert: conn.credentials.clientCert.certPem, key: conn.credentials.clientCert.keyPem }
        : {}),
    });
  }

  private open(
    method: string,
    pathAndQuery: string,
    headers: Record<string, string | number>,
    signal: AbortSignal | undefined,
    body: string | undefined,
    timeoutMs: number | undefined,
  ): Promise<IncomingMessage> {
    const what = `${method} ${pathAndQuery.split("?")[0]}`;
    return new Promise((resolve, reject) => {
      const token = this.conn.credentials.token();
      const req = httpsRequest(
        {
          protocol: "https:",
          hostname: this.url.hostname.replace(/^\[|\]$/g, ""),
          port: this.url.port || 443,
          path: `${this.url.pathname.replace(/\/$/, "")}${pathAndQuery}`,
          method,
          agent: this.agent,
          headers: {
            Accept: "application/json",
            "User-Agent": "weft",
            ...(token ? { Authorization: `Bearer ${token}` } : {}),
            ...headers,
          },
          ...(signal ? { signal } : {}),
          ...(timeoutMs !== undefined ? { timeout: timeoutMs } : {}),
        },
        resolve,
      );
      req.on("timeout", () =>
        req.destroy(Object.assign(new Error("request timed out"), { code: "ETIMEDOUT" })),
      );
      req.on("error", (err) => {
        if (signal?.aborted) reject(signal.reason ?? err);
        else reject(unreachable(what, err));
      });
      req.end(body);
    });
  }

  async request<T>(r: KubeRequest): Promise<T> {
    const body = r.body === undefined ? undefined : JSON.stringify(r.body);
    const headers: Record<string, string | number> = {};
    if (body !== undefined) {
      headers["Content-Type"] =
        r.contentType ?? (r.method === "PATCH" ? "application/merge-patch+json" : "application/json");
      headers["Content-Length"] = Buffer.byteLength(body);
    }
    const what = `${r.method} ${r.path}`;
    const res = await this.open(
      r.method,
      `${r.path}${queryString(r.query)}`,
      headers,
      r.signal,
      body,
      r.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    );
    const text = await readBody(res, MAX_RESPONSE_BYTES, what);
    const status = res.statusCode ?? 0;
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      if (status >= 200 && status < 300) {
        throw new KubeApiError(status, { message: "the answer is not JSON" }, what);
      }
    }
    if (status < 200 || status >= 300) {
      throw new KubeApiError(status, asStatus(parsed, text), what);
    }
    return parsed as T;
  }

  async watch<T>(
    path: string,
    query: Query,
    onEvent: (e: WatchEvent<T>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const what = `WATCH ${path}`;
    let res: IncomingMessage;
    try {
      res = await this.open(
        "GET",
        `${path}${queryString({ ...query, watch: true })}`,
        {},
        signal,
        undefined,
        undefined,
      );
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }
    const status = res.statusCode ?? 0;
    if (status !== 200) {
      const text = await readBody(res, MAX_RESPONSE_BYTES, what).catch(() => "");
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {}
      throw new KubeApiError(status, asStatus(parsed, text), what);
    }
    await new Promise<void>((resolve, reject) => {
      let pending = "";
      let failed = false;
      const fail = (err: unknown) => {
        if (failed) return;
        failed = true;
        res.destroy();
        reject(err);
      };
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (failed) return;
        pending += chunk;
        let nl = pending.indexOf("\n");
        while (nl >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          const ended = line === "" ? undefined : watchLine(line, what, onEvent);
          if (ended) return fail(ended.error);
          nl = pending.indexOf("\n");
        }
        if (pending.length > MAX_WATCH_EVENT_BYTES) {
          fail(
            new KubeApiError(
              200,
              { message: `a watch event is larger than ${MAX_WATCH_EVENT_BYTES} bytes` },
              what,
            ),
          );
        }
      });
      res.on("end", () => {
        if (!failed) resolve();
      });
      res.on("error", (err) => {
        if (signal.aborted) resolve();
        else fail(unreachable(what, err));
      });
      res.on("close", () => {
        if (failed) return;
        if (signal.aborted) resolve();
        else if (!res.complete) fail(unreachable(what, new Error("the watch connection closed")));
      });
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

function asStatus(parsed: unknown, text: string): KubeStatus {
  if (parsed && typeof parsed === "object" && (parsed as KubeStatus).kind === "Status")
    return parsed as KubeStatus;
  return { message: text.slice(0, 200) };
}

function readBody(res: IncomingMessage, max: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        res.destroy();
        reject(
          new KubeApiError(res.statusCode ?? 0, { message: `the answer is larger than ${max} bytes` }, what),
        );
        return;
      }
      chunks.push(c);
    });
    res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    res.on("error", (err) => reject(unreachable(what, err)));
  });
}

/** `/api/v1` for the core group, else `/apis/<group>/<version>`. */
export function groupPath(apiVersion: string): string {
  return apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
}

/** The collection path of a resource, namespaced or cluster-wide. */
export function resourcePath(apiVersion: string, resource: string, namespace?: string): string {
  return namespace
    ? `${groupPath(apiVersion)}/namespaces/${encodeURIComponent(namespace)}/${resource}`
    : `${groupPath(apiVersion)}/${resource}`;
}

/** One line of a watch stream: the event handed to `onEvent`, or what ends the watch (an ERROR event, bad JSON, a throw). */
function watchLine<T>(
  line: string,
  what: string,
  onEvent: (e: WatchEvent<T>) => void,
): { error: unknown } | undefined {
  let event: WatchEvent<T>;
  try {
    event = JSON.parse(line) as WatchEvent<T>;
  } catch {
    return { error: new KubeApiError(200, { message: "a watch event is not JSON" }, what) };
  }
  if (event.type === "ERROR") {
    const st = event.object as KubeStatus;
    return { error: new KubeApiError(st.code ?? 500, st, what) };
  }
  try {
    onEvent(event);
  } catch (err) {
    return { error: err };
  }
  return undefined;
}
