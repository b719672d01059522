/**
 * The CA server's request handlers, one function each: the route table, the read-only answers (health,
 * metrics, bundle), the failure budget's 429, and the three ways to a certificate (join token, Kubernetes
 * service-account token, renewal over mTLS). Each takes the `RouteContext` the server built once.
 */

import { X509Certificate } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import type { Clock } from "../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { CaMetrics } from "../core/metrics.ts";
import type { IssuedCert } from "./authority.ts";
import type { KubeJoinResult } from "./kube-join.ts";
import { addressKey, type FailureLimiter } from "./rate-limit.ts";
import type { SerialStore } from "./serials.ts";
import {
  CREDENTIAL_FAILURES,
  errorBody,
  HttpError,
  readJsonBody,
  rejectUnknownFields,
  requestError,
  STATUS_BY_CODE,
  send,
  sendJson,
  stringField,
} from "./server-http.ts";
import type { Signing } from "./server-signing.ts";
import type { SpiffeId } from "./spiffe-id.ts";
import type { TokenStore } from "./tokens.ts";
import { verifySvid } from "./verify.ts";

/** Everything a handler needs, built once by `createCaServer`. */
export interface RouteContext {
  readonly tokens: TokenStore;
  readonly log: Logger;
  readonly clock: Clock;
  readonly metrics: CaMetrics;
  readonly limiter: FailureLimiter;
  readonly counters: { issued: number; refused: number };
  readonly maxBody: number;
  readonly leafTtlMs: number | undefined;
  readonly kubeJoin: { authenticate(token: string): Promise<KubeJoinResult> } | undefined;
  readonly serials: SerialStore | undefined;
  /** The material signing now (it changes on a CA reload). */
  signing(): Signing;
}

type Issued = { cert: IssuedCert; via: string };

const ROUTES = new Map<string, string[]>([
  ["/v1/sign", ["POST"]],
  ["/v1/renew", ["POST"]],
  ["/v1/sign/kubernetes", ["POST"]],
  ["/v1/bundle", ["GET", "HEAD"]],
  ["/healthz", ["GET", "HEAD"]],
  ["/metrics", ["GET", "HEAD"]],
]);

/** The request listener: a handler that throws something unexpected answers 500 (or cuts the socket). */
export function respond(ctx: RouteContext, req: IncomingMessage, res: ServerResponse): void {
  handle(ctx, req, res).catch((err) => {
    ctx.log.error({ err: errorMessage(err) }, "ca request handler failed");
    if (!res.headersSent) sendJson(res, 500, errorBody(new WeftError("E_REQUEST", "internal error")));
    else res.destroy();
  });
}

async function handle(ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  let url: URL;
  try {
    url = new URL(req.url ?? "/", "https://ca.invalid");
  } catch {
    const err = requestError("the request target is not a valid path", "bad_target");
    return refuse(ctx, res, new HttpError(400, err), remote);
  }
  const path = url.pathname;
  const methods = ROUTES.get(path);
  if (!methods) {
    req.resume();
    return refuse(
      ctx,
      res,
      new HttpError(404, requestError(`no such endpoint ${path}`, "not_found")),
      remote,
    );
  }
  const method = req.method ?? "";
  if (!methods.includes(method)) {
    req.resume();
    const err = requestError(`${path} takes ${methods.join(" or ")}, not ${method}`, "method_not_allowed");
    return refuse(ctx, res, new HttpError(405, err, { Allow: methods.join(", ") }), remote);
  }
  const source = addressKey(req.socket.remoteAddress);
  try {
    if (method !== "POST") {
      req.resume();
      return await serveRead(ctx, req, res, path, url.searchParams);
    }
    // A spent failure budget is answered before anything of the request is read or checked.
    const waitMs = ctx.limiter.retryAfterMs(source);
    if (waitMs > 0) {
      req.resume();
      return refuse(ctx, res, rateLimited(ctx, path, source, waitMs), remote);
    }
    const body = await readJsonBody(req, ctx.maxBody);
    const issued =
      path === "/v1/sign"
        ? await signWithToken(ctx, body)
        : path === "/v1/sign/kubernetes"
          ? await signWithKubeToken(ctx, body)
          : await renew(ctx, req, body);
    answerIssued(ctx, res, path, issued, remote);
  } catch (err) {
    if (err instanceof HttpError) return refuse(ctx, res, err, remote);
    if (isWeftError(err)) {
      if (CREDENTIAL_FAILURES.has(err.code)) ctx.limiter.fail(source);
      if (path === "/v1/sign" && err.code.startsWith("E_TOKEN_")) {
        ctx.metrics.tokenAttempts.inc({ outcome: err.reason });
      }
      const status = STATUS_BY_CODE[err.code];
      if (status !== undefined) return refuse(ctx, res, new HttpError(status, err), remote);
    }
    throw err;
  }
}

/** GET/HEAD: liveness, the metrics text, the trust bundle (PEM, or JSON with the revoked serials). */
async function serveRead(
  ctx: RouteContext,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  query: URLSearchParams,
): Promise<void> {
  if (path === "/healthz") return sendJson(res, 200, { ok: true });
  if (path === "/metrics") return send(res, 200, "text/plain; version=0.0.4", await ctx.metrics.render());
  const signing = ctx.signing();
  const wantsJson = query.get("format") === "json" || /application\/json/.test(req.headers.accept ?? "");
  if (!wantsJson) return send(res, 200, "application/x-pem-file", signing.bundlePem);
  // The revoked, unexpired serials travel with the bundle: sidecars fetch both together.
  const revoked = ctx.serials ? await ctx.serials.revokedUnexpired() : [];
  ctx.metrics.revokedSerials.set(revoked.length);
  // The bundle is read again after the await: a reload in between serves the new one.
  const now = ctx.signing();
  return sendJson(res, 200, { trustDomain: now.ca.trustDomain, bundle: now.bundlePem, revoked });
}

function rateLimited(ctx: RouteContext, path: string, source: string, waitMs: number): HttpError {
  if (path === "/v1/sign") ctx.metrics.tokenAttempts.inc({ outcome: "rate_limited" });
  const seconds = Math.max(1, Math.ceil(waitMs / 1000));
  const err = new WeftError(
    "E_RATE_LIMITED",
    `too many failed attempts from ${source}; retry in ${seconds} s`,
    {
      reason: "rate_limited",
    },
  );
  return new HttpError(429, err, { "Retry-After": String(seconds) });
}

function answerIssued(ctx: RouteContext, res: ServerResponse, path: string, issued: Issued, remote: string) {
  ctx.counters.issued += 1;
  ctx.metrics.issued.inc({
    via: path === "/v1/sign" ? "token" : path === "/v1/sign/kubernetes" ? "kubernetes" : "renew",
  });
  if (path === "/v1/sign") ctx.metrics.tokenAttempts.inc({ outcome: "ok" });
  const { cert } = issued;
  ctx.log.info(
    {
      spiffe_id: cert.id.toString(),
      serial: cert.serial,
      not_after: cert.notAfter.toISOString(),
      via: issued.via,
      remote,
    },
    "certificate issued",
  );
  sendJson(res, 200, {
    spiffeId: cert.id.toString(),
    chain: cert.chainPem,
    bundle: cert.bundlePem,
    serial: cert.serial,
    notAfter: cert.notAfter.toISOString(),
  });
}

/** POST /v1/sign: the first certificate, paid for with a join token. */
async function signWithToken(ctx: RouteContext, body: Record<string, unknown>): Promise<Issued> {
  const csr = stringField(body, "csr", 32 * 1024);
  const token = stringField(body, "token", 256);
  rejectUnknownFields(body, ["csr", "token"]);
  // Check the CSR (signature, shape) before the token, so a broken CSR never spends it.
  const { ca } = ctx.signing();
  const requested = await ca.inspectCsr(csr);
  const use = await ctx.tokens.consume(token, requested);
  try {
    const cert = await ca.signCsr(csr, {
      authorize: (id) => {
        if (!id.equals(requested)) {
          throw new WeftError("E_CSR_IDENTITY", `the CSR changed identity to ${id.toString()}`, {
            reason: "identity_changed",
          });
        }
      },
      ttlMs: ctx.leafTtlMs,
    });
    await recordIssued(ctx, cert);
    return { cert, via: `token:${use.ref}` };
  } catch (err) {
    await use.refund();
    throw err;
  }
}

async function recordIssued(ctx: RouteContext, cert: IssuedCert): Promise<void> {
  await ctx.serials?.record({
    serial: cert.serial,
    id: cert.id.toString(),
    notAfter: cert.notAfter,
    root: ctx.signing().ca.rootFingerprint(),
  });
}

/** POST /v1/sign/kubernetes: the first certificate, paid for with a projected service-account token. */
async function signWithKubeToken(ctx: RouteContext, body: Record<string, unknown>): Promise<Issued> {
  if (!ctx.kubeJoin) {
    throw new HttpError(
      404,
      requestError("Kubernetes join is not enabled on this CA (meshca serve --kubernetes)", "not_found"),
    );
  }
  const csr = stringField(body, "csr", 32 * 1024);
  const token = stringField(body, "token", 16 * 1024);
  rejectUnknownFields(body, ["csr", "token"]);
  const { ca } = ctx.signing();
  await ca.inspectCsr(csr);
  const entitled = await ctx.kubeJoin.authenticate(token);
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
    ttlMs: ctx.leafTtlMs,
  });
  await recordIssued(ctx, cert);
  return { cert, via: entitled.ref };
}

/** POST /v1/renew: over mTLS with the current certificate; the same identity only. */
async function renew(
  ctx: RouteContext,
  req: IncomingMessage,
  body: Record<string, unknown>,
): Promise<Issued> {
  const csr = stringField(body, "csr", 32 * 1024);
  rejectUnknownFields(body, ["csr"]);
  const { id: presented, leaf } = presentedIdentity(ctx, req.socket as TLSSocket);
  // A revoked certificate, or one a renewal already replaced, renews no more (checked and claimed
  // before signing, so two renewals racing with one certificate get one).
  const complete = await ctx.serials?.claimRenewal(
    leaf.serialNumber,
    presented.toString(),
    new Date(leaf.validTo),
    "",
  );
  let cert: IssuedCert;
  try {
    cert = await ctx.signing().ca.signCsr(csr, {
      authorize: (id) => {
        if (!id.equals(presented)) {
          throw new WeftError(
            "E_RENEW_IDENTITY",
            `the client certificate proves ${presented.toString()}, but the CSR asks for ${id.toString()}`,
            { reason: "identity_differs" },
          );
        }
      },
      ttlMs: ctx.leafTtlMs,
    });
  } catch (err) {
    await complete?.();
    throw err;
  }
  await complete?.({
    serial: cert.serial,
    notAfter: cert.notAfter,
    root: ctx.signing().ca.rootFingerprint(),
  });
  return { cert, via: "renew" };
}

/** The identity the TLS client certificate proves against the current bundle. Throws E_SVID. */
function presentedIdentity(ctx: RouteContext, socket: TLSSocket): { id: SpiffeId; leaf: X509Certificate } {
  const peer = typeof socket.getPeerCertificate === "function" ? socket.getPeerCertificate(true) : undefined;
  if (!peer?.raw) {
    throw new WeftError("E_SVID", "renewal needs the current certificate as the TLS client certificate", {
      reason: "no_client_cert",
    });
  }
  const signing = ctx.signing();
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  for (let cert = peer; cert?.raw && chain.length < 8; cert = cert.issuerCertificate) {
    const key = cert.raw.toString("base64");
    if (seen.has(key)) break;
    seen.add(key);
    // A client may send the root too; the verifier anchors on the bundle, so leave roots out.
    if (!signing.bundleRootsDer.has(key)) chain.push(cert.raw);
  }
  const id = verifySvid(chain, signing.bundle, { now: new Date(ctx.clock.now()), role: "client" });
  return { id, leaf: new X509Certificate(chain[0]!) };
}

function refuse(ctx: RouteContext, res: ServerResponse, err: HttpError, remote: string): void {
  ctx.counters.refused += 1;
  ctx.metrics.refused.inc({ status: String(err.status), reason: err.error.reason });
  ctx.log.warn(
    { status: err.status, code: err.error.code, reason: err.error.reason, remote },
    "request refused",
  );
  if (res.headersSent || res.destroyed) return;
  sendJson(res, err.status, errorBody(err.error), err.headers);
}
