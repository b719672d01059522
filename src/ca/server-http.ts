/**
 * The CA server's HTTP vocabulary: a refusal as a status plus the WeftError that says why, which error
 * code answers with which status, the bounded JSON body reader and its field checks, and the writers of
 * every answer (JSON, PEM, metrics text) with the same no-store, nosniff headers.
 */

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { type ErrorCode, WeftError } from "../core/errors.ts";

/** After a 413 the rest of an oversized body is read and dropped up to this many bytes, then the socket is cut. */
export const MAX_DISCARD_BYTES = 16 * 1024 * 1024;

/** An HTTP refusal: status plus the WeftError that says why. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly error: WeftError,
    readonly headers: Record<string, string> = {},
  ) {
    super(error.message);
  }
}

export function requestError(message: string, reason: string): WeftError {
  return new WeftError("E_REQUEST", message, { reason });
}

export const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
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
export const CREDENTIAL_FAILURES = new Set<ErrorCode>([
  "E_TOKEN_INVALID",
  "E_TOKEN_EXPIRED",
  "E_TOKEN_USED",
  "E_TOKEN_MISMATCH",
  "E_SVID",
  "E_RENEW_IDENTITY",
  "E_REVOKED",
]);

/**
 * Answers what the HTTP layer saw before a request existed (parse errors, request timeouts) with a bare
 * status line; a TLS-level failure or a peer that already left gets its socket destroyed.
 */
export function answerClientError(
  err: NodeJS.ErrnoException,
  socket: Socket | import("node:stream").Duplex,
): void {
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
}

export function stringField(body: Record<string, unknown>, name: string, maxLength: number): string {
  const value = body[name];
  if (value === undefined) throw requestError(`the JSON body needs a "${name}" field`, `missing_${name}`);
  if (typeof value !== "string") throw requestError(`"${name}" must be a string`, `bad_${name}_type`);
  if (value.length === 0 || value.length > maxLength) {
    throw requestError(`"${name}" must be 1 to ${maxLength} characters`, `bad_${name}_length`);
  }
  return value;
}

export function rejectUnknownFields(body: Record<string, unknown>, allowed: string[]): void {
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
export function readJsonBody(req: IncomingMessage, max: number): Promise<Record<string, unknown>> {
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

export function errorBody(err: WeftError): unknown {
  return { error: { code: err.code, reason: err.reason, message: err.message } };
}

export function sendJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): void {
  send(res, status, "application/json", `${JSON.stringify(value)}\n`, headers);
}

export function send(
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
