/**
 * How the CA client reaches `meshca serve`: the request/response seam (`CaTransport`, which tests replace),
 * the real HTTPS transport (server verified against the given trust bundle only, a fresh connection per
 * request, one deadline, a bounded body), and the reading of an answer: the issued chain, or the server's
 * refusal as a WeftError with the server's own code (5xx and 429 are transient: E_CA_UNREACHABLE).
 */
import { request as httpsRequest } from "node:https";
import { ERROR_CODES, type ErrorCode, isWeftError, WeftError } from "../core/errors.ts";

export const REQUEST_TIMEOUT_MS = 15_000;
/** Largest response body read from the CA server. */
export const MAX_RESPONSE_BYTES = 1024 * 1024;

/** One request to the CA server. */
export interface CaRequest {
  method: "GET" | "POST";
  path: string;
  body?: unknown;
  /** Trust anchors for the server's certificate (PEM). */
  trustBundlePem: string;
  /** Client certificate for mTLS (renewal). */
  clientIdentity?: { keyPem: string; chainPem: string };
  signal?: AbortSignal;
}

export interface CaResponse {
  status: number;
  body: unknown;
}

/** The I/O seam: how a request reaches the CA server. Tests may inject failures through it. */
export type CaTransport = (request: CaRequest) => Promise<CaResponse>;

export interface Answer {
  chain: string;
  bundle: string;
  serial: string | undefined;
}

/** Turns a CA response into an answer or the server's refusal as a WeftError with the server's code. */
export function parseAnswer(response: CaResponse): Answer {
  const body = response.body as Record<string, unknown> | null;
  if (response.status !== 200) {
    const e = (body?.error ?? null) as { code?: unknown; reason?: unknown; message?: unknown } | null;
    const known = typeof e?.code === "string" && e.code in ERROR_CODES;
    const code: ErrorCode = known ? (e!.code as ErrorCode) : "E_CA_UNREACHABLE";
    const message = typeof e?.message === "string" ? e.message.slice(0, 500) : `HTTP ${response.status}`;
    const reason = typeof e?.reason === "string" && /^[a-z0-9_]{1,64}$/.test(e.reason) ? e.reason : undefined;
    // 5xx means "try again later"; a 4xx is a refusal about this request.
    // 429 (too many failed attempts from this address) passes with time, like a 5xx.
    const transient = response.status >= 500 || response.status === 429 || !known;
    return throwRefusal(
      transient ? "E_CA_UNREACHABLE" : code,
      `CA server answered ${response.status}: ${message}`,
      reason,
    );
  }
  if (!body || typeof body.chain !== "string" || typeof body.bundle !== "string") {
    throw new WeftError("E_CA_UNREACHABLE", "the CA server's answer has no chain or bundle", {
      reason: "bad_response",
    });
  }
  return {
    chain: body.chain,
    bundle: body.bundle,
    serial: typeof body.serial === "string" ? body.serial : undefined,
  };
}

function throwRefusal(code: ErrorCode, message: string, reason: string | undefined): never {
  throw new WeftError(code, message, reason === undefined ? {} : { reason });
}

/**
 * The real transport: HTTPS with the server verified against `trustBundlePem` only (Node's `ca` option
 * replaces the public roots), the host name checked, a fresh connection per request (client certificates
 * never mix), one deadline per request and a bounded response body.
 */
export function httpsTransport(baseUrl: string, options: { timeoutMs?: number } = {}): CaTransport {
  const base = new URL(baseUrl);
  const timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS;
  return (req) =>
    new Promise<CaResponse>((resolve, reject) => {
      const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
      const target = new URL(req.path, base);
      const r = httpsRequest(
        target,
        {
          method: req.method,
          agent: false,
          ca: req.trustBundlePem,
          minVersion: "TLSv1.2",
          ...(req.clientIdentity
            ? { key: req.clientIdentity.keyPem, cert: req.clientIdentity.chainPem }
            : {}),
          headers: {
            Accept: "application/json",
            ...(payload
              ? { "Content-Type": "application/json", "Content-Length": String(payload.length) }
              : {}),
          },
          timeout: timeoutMs,
          ...(req.signal ? { signal: req.signal } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_RESPONSE_BYTES) {
              res.destroy();
              reject(
                new WeftError("E_CA_UNREACHABLE", "the CA server's answer is too large", {
                  reason: "bad_response",
                }),
              );
              return;
            }
            chunks.push(chunk);
          });
          res.on("error", (err) => reject(unreachable(err, base)));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let body: unknown = text;
            if ((res.headers["content-type"] ?? "").startsWith("application/json")) {
              try {
                body = JSON.parse(text);
              } catch {
                return reject(
                  new WeftError("E_CA_UNREACHABLE", "the CA server's answer is not valid JSON", {
                    reason: "bad_response",
                  }),
                );
              }
            }
            resolve({ status: res.statusCode ?? 0, body });
          });
        },
      );
      r.on("timeout", () =>
        r.destroy(new WeftError("E_TIMEOUT", `no answer from ${base.origin} within ${timeoutMs} ms`)),
      );
      r.on("error", (err) => reject(unreachable(err, base)));
      r.end(payload);
    });
}

const UNTRUSTED_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_SIGNATURE_FAILURE",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

function unreachable(err: Error, base: URL): WeftError {
  if (isWeftError(err))
    return new WeftError("E_CA_UNREACHABLE", err.message, { reason: "timeout", cause: err });
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    const names = (err as { cert?: { subjectaltname?: string } }).cert?.subjectaltname ?? "";
    const has = names
      .split(/,\s*/)
      .filter((n) => n.startsWith("DNS:") || n.startsWith("IP Address:"))
      .map((n) => n.replace("IP Address:", ""))
      .map((n) => n.replace("DNS:", ""));
    return new WeftError(
      "E_CA_UNREACHABLE",
      `the CA server's certificate names ${has.join(", ") || "no DNS name or IP"}, not ${base.hostname.replace(/^\[|\]$/g, "")}; ` +
        `start meshca serve with --san ${base.hostname.replace(/^\[|\]$/g, "")} or use one of those names in the CA URL`,
      { reason: "server_name_mismatch", cause: err },
    );
  }
  if (UNTRUSTED_CODES.has(code)) {
    return new WeftError(
      "E_CA_UNREACHABLE",
      `the CA server at ${base.origin} presented a certificate the trust bundle does not accept (${code}); check the bundle and the URL's host name`,
      { reason: "server_untrusted", cause: err },
    );
  }
  if (err.name === "AbortError") {
    return new WeftError("E_CA_UNREACHABLE", "the request was aborted", { reason: "aborted", cause: err });
  }
  return new WeftError("E_CA_UNREACHABLE", `cannot reach the CA server at ${base.origin}: ${err.message}`, {
    reason: code ? code.toLowerCase() : "network",
    cause: err,
  });
}
