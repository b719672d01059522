/**
 * `weft injector`: the injection of `inject.ts` as a mutating admission webhook. The API server POSTs an
 * AdmissionReview v1 for each Pod being created; the answer allows it, with a JSONPatch that turns the
 * Pod into exactly what `weft inject` would write. The webhook fails open: anything it cannot handle is
 * allowed unchanged (and logged), so an injector problem never blocks a deployment (the manifests also
 * set failurePolicy: Ignore). Its serving certificate and key are re-read when the files change (checked
 * every `reloadIntervalMs`), so cert-manager or a Secret update rotates them without a restart.
 *
 *   POST /mutate    AdmissionReview v1 in, AdmissionReview v1 out
 *   GET  /healthz   liveness
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { errorMessage, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { type InjectOptions, injectPodObject } from "./inject.ts";

export const MAX_REVIEW_BYTES = 8 * 1024 * 1024;
export const DEFAULT_RELOAD_INTERVAL_MS = 10_000;

export interface InjectorOptions {
  readonly host: string;
  readonly port: number;
  readonly certFile: string;
  readonly keyFile: string;
  readonly inject: InjectOptions;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly reloadIntervalMs?: number;
}

export interface Injector {
  readonly port: number;
  readonly url: string;
  /** Reviews answered, patched, and failed open. */
  stats(): { reviews: number; patched: number; failedOpen: number; reloads: number };
  close(): Promise<void>;
}

export type JsonPatchOp =
  | { op: "add" | "replace"; path: string; value: unknown }
  | { op: "remove"; path: string };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function pointer(parts: string[]): string {
  return parts.map((p) => `/${p.replaceAll("~", "~0").replaceAll("/", "~1")}`).join("");
}

/** RFC 6902 operations turning `a` into `b` (objects key by key; a changed array is replaced whole). */
export function jsonPatch(a: unknown, b: unknown, path: string[] = []): JsonPatchOp[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (isObject(a) && isObject(b)) {
    const ops: JsonPatchOp[] = [];
    for (const k of Object.keys(a)) if (!(k in b)) ops.push({ op: "remove", path: pointer([...path, k]) });
    for (const [k, v] of Object.entries(b)) {
      if (!(k in a)) ops.push({ op: "add", path: pointer([...path, k]), value: v });
      else ops.push(...jsonPatch(a[k], v, [...path, k]));
    }
    return ops;
  }
  return [{ op: "replace", path: pointer(path), value: b }];
}

interface AdmissionRequest {
  uid?: string;
  kind?: { kind?: string };
  operation?: string;
  namespace?: string;
  object?: Record<string, unknown>;
}

export async function startInjector(o: InjectorOptions): Promise<Injector> {
  const log = o.logger.child({ component: "injector" });
  const counters = { reviews: 0, patched: 0, failedOpen: 0, reloads: 0 };
  const read = () => ({ cert: readFileSync(o.certFile, "utf8"), key: readFileSync(o.keyFile, "utf8") });
  let current = read();
  const server: Server = createServer(
    { ...current, minVersion: "TLSv1.2", handshakeTimeout: 10_000 },
    (req, res) => {
      handle(req, res, { inject: o.inject, log, counters }).catch((err) => {
        log.error({ err: errorMessage(err) }, "injector request failed");
        if (!res.headersSent) send(res, 500, { error: "internal error" });
        else res.destroy();
      });
    },
  );
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;

  let timer: TimerHandle | undefined;
  let closed = false;
  const reload = () => {
    timer = o.clock.setTimeout(() => {
      if (closed) return;
      try {
        const next = read();
        if (next.cert !== current.cert || next.key !== current.key) {
          // A pair caught half-written (one file replaced, or truncated, before the other) would be
          // taken by setSecureContext without a complaint when a file is empty, and every handshake
          // would then fail: only a complete, matching pair is loaded; the next tick looks again.
          checkPair(next);
          server.setSecureContext({ ...next, minVersion: "TLSv1.2" });
          current = next;
          counters.reloads++;
          log.info({ cert: o.certFile }, "serving certificate reloaded");
        }
      } catch (err) {
        log.warn({ err: errorMessage(err) }, "serving certificate unreadable; keeping the current one");
      }
      reload();
    }, o.reloadIntervalMs ?? DEFAULT_RELOAD_INTERVAL_MS);
  };
  reload();

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (err) => log.error({ err: errorMessage(err) }, "injector server error"));
  const port = (server.address() as { port: number }).port;
  const url = `https://${o.host.includes(":") ? `[${o.host}]` : o.host}:${port}`;
  log.info({ url }, "injector listening");
  return {
    port,
    url,
    stats: () => ({ ...counters }),
    close: () =>
      new Promise<void>((resolve) => {
        closed = true;
        timer?.cancel();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Throws unless `cert` starts with a certificate whose public key is that of `key`. */
function checkPair(pair: { cert: string; key: string }): void {
  if (!new X509Certificate(pair.cert).checkPrivateKey(createPrivateKey(pair.key))) {
    throw new WeftError("E_CERT_INVALID", "the certificate and the key do not belong together (yet)");
  }
}

/** What one review needs: the injection options, the log, and the counters it adds to. */
interface ReviewContext {
  readonly inject: InjectOptions;
  readonly log: Logger;
  readonly counters: { reviews: number; patched: number; failedOpen: number; reloads: number };
}

/** One HTTP request: /healthz, or an AdmissionReview on POST /mutate. */
async function handle(req: IncomingMessage, res: ServerResponse, ctx: ReviewContext): Promise<void> {
  const { log, counters } = ctx;
  const path = (req.url ?? "/").split("?")[0];
  if (path === "/healthz" && req.method === "GET") {
    req.resume();
    return send(res, 200, { ok: true });
  }
  if (path !== "/mutate" || req.method !== "POST") {
    req.resume();
    return send(res, 404, { error: `no such endpoint ${req.method} ${path}` });
  }
  let review: { apiVersion?: string; request?: AdmissionRequest };
  try {
    review = JSON.parse(await readBody(req, MAX_REVIEW_BYTES)) as typeof review;
  } catch (err) {
    return send(res, 400, { error: errorMessage(err) });
  }
  const raw = review?.request as unknown;
  if (!isObject(raw) || typeof raw.uid !== "string") {
    return send(res, 400, { error: "not an AdmissionReview: request.uid is missing" });
  }
  const request = raw as AdmissionRequest;
  counters.reviews++;
  const answer = (extra: Record<string, unknown>) =>
    send(res, 200, {
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      response: { uid: request.uid, allowed: true, ...extra },
    });
  try {
    if (request.kind?.kind !== "Pod" || request.operation !== "CREATE" || !isObject(request.object)) {
      return answer({});
    }
    const pod = request.object;
    const { pod: injected, report } = injectPodObject(structuredClone(pod), ctx.inject);
    const patch = jsonPatch(pod, injected);
    const who = `${request.namespace ?? ""}/${(pod.metadata as { name?: string; generateName?: string } | undefined)?.name ?? (pod.metadata as { generateName?: string } | undefined)?.generateName ?? ""}`;
    if (patch.length === 0) {
      log.info({ pod: who, skipped: report.skipped }, "pod not injected");
      return answer(report.skipped.length > 0 ? { warnings: report.skipped.map((s) => `weft: ${s}`) } : {});
    }
    counters.patched++;
    log.info({ pod: who, warnings: report.warnings.length }, "pod injected");
    return answer({
      patchType: "JSONPatch",
      patch: Buffer.from(JSON.stringify(patch)).toString("base64"),
      ...(report.warnings.length > 0 ? { warnings: report.warnings.map((w) => `weft: ${w}`) } : {}),
    });
  } catch (err) {
    // Fail open: the pod is created as it is.
    counters.failedOpen++;
    log.error({ err: errorMessage(err), uid: request.uid }, "injection failed; pod admitted unchanged");
    return answer({ warnings: [`weft: not injected: ${errorMessage(err)}`] });
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.destroy();
        reject(new WeftError("E_LIMIT", `the review is larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}
