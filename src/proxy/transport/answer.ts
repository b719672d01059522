/**
 * The answer step of a tunnel: the server sidecar says whether it accepted a connection only after it
 * has tried the app, as Istio's HBONE answers a CONNECT only after its upstream connect. The client
 * sidecar sends the PROXY header and the app's first bytes at once (no added round trip), keeps those
 * bytes until the answer and, on a refusal, retries them on another endpoint: the app received nothing.
 *
 * On the wire:
 * - Pooled (`h2`): the CONNECT response. `:status 200` = accepted; a refusal is a non-200 status plus
 *   `weft-refusal: <reason>`, sent with END_STREAM, after which the stream is closed (RST_STREAM
 *   NO_ERROR), so a client that does not wait for the answer still sees a reset, as it did before.
 * - Per-connection (`weft/3`, `weft/2`): a 4-byte status message before any byte of the app,
 *   `0x57 0x46 <version> <code>` (version 3 or 2, as the ALPN); code 0 = accepted, 1.. = the refusals
 *   below in order. After a refusal the server ends the TLS stream. `weft/3` then frames the app's
 *   bytes both ways, so that a tunnel cut short is told from the app's FIN (connection/frames.ts);
 *   `weft/2` carries them raw. `weft/2` and `weft/1` (no status message, bytes flow at once, a refusal
 *   is a reset) stay accepted on both ends, so sidecars of different versions interoperate (without
 *   truncation detection): the client offers `weft/3, weft/2, weft/1` and the server prefers them in
 *   that order.
 *
 * The reasons form a closed set on both ends: the server sends one of `REFUSALS`; the client maps what
 * it receives onto `PeerReason` (anything else is `peer_refused` or `peer_protocol_error`), so a hostile
 * peer cannot make up metric labels.
 */
import http2 from "node:http2";
import type { Duplex } from "node:stream";
import { isWeftError, WeftError } from "../../core/errors.ts";
import { noop } from "../../core/noop.ts";

/** ALPN of the per-connection tunnel with the answer step (see the module comment). */
export const ALPN_WEFT2 = "weft/2";
/** ALPN of the per-connection tunnel with the answer step and framed bytes (see the module comment). */
export const ALPN_WEFT3 = "weft/3";

/** The status message's version byte for a per-connection ALPN with an answer step, else `undefined`. */
export function statusVersion(alpn: string | false | null | undefined): 2 | 3 | undefined {
  return alpn === ALPN_WEFT3 ? 3 : alpn === ALPN_WEFT2 ? 2 : undefined;
}

/** Why a server sidecar refused a tunnel stream (wire values; order = weft/2 status codes 1..). */
export const REFUSALS = [
  "app_refused",
  "app_unreachable",
  "policy_denied",
  "port_not_allowed",
  "over_limit",
  "internal_error",
] as const;
export type Refusal = (typeof REFUSALS)[number];

/** What the client sidecar records when a peer refused or never answered (metric label, close reason). */
export const PEER_REASONS = [
  "peer_app_refused",
  "peer_app_unreachable",
  "peer_policy_denied",
  "peer_port_not_allowed",
  "peer_over_limit",
  "peer_internal_error",
  /** A refusal with a status or reason this sidecar does not know. */
  "peer_refused",
  /** The status message was not one (wrong magic or version). */
  "peer_protocol_error",
  /** A pooled stream ended before any answer (its session died, GOAWAY, RST_STREAM): retried. */
  "peer_no_answer",
  /**
   * A per-connection tunnel ended before its answer: not retried, because a status message lost under a
   * TCP reset (the app accepted, then reset at once) cannot be told from a peer that died.
   */
  "peer_closed",
] as const;
export type PeerReason = (typeof PEER_REASONS)[number];

export const STATUS_MAGIC_0 = 0x57;
export const STATUS_MAGIC_1 = 0x46;
export const STATUS_BYTES = 4;
/** The `weft-refusal` header of a refused CONNECT. */
export const REFUSAL_HEADER = "weft-refusal";

const H2_STATUS: Record<Refusal, number> = {
  app_refused: 503,
  app_unreachable: 504,
  policy_denied: 403,
  port_not_allowed: 403,
  over_limit: 429,
  internal_error: 500,
};

/** The status message of `version` (weft/2, weft/3): accepted (`undefined`) or a refusal. */
export function encodeStatus(refusal: Refusal | undefined, version: 2 | 3): Buffer {
  const code = refusal === undefined ? 0 : REFUSALS.indexOf(refusal) + 1;
  return Buffer.from([STATUS_MAGIC_0, STATUS_MAGIC_1, version, code]);
}

/** Parse a status message of `version`: `undefined` = accepted, else the client's reason. */
export function decodeStatus(b: Buffer, version: 2 | 3): PeerReason | undefined {
  if (b.length !== STATUS_BYTES || b[0] !== STATUS_MAGIC_0 || b[1] !== STATUS_MAGIC_1) {
    return "peer_protocol_error";
  }
  if (b[2] !== version) return "peer_protocol_error";
  const code = b[3]!;
  if (code === 0) return undefined;
  const r = REFUSALS[code - 1];
  return r ? peerReason(r) : "peer_refused";
}

/** The response headers of a refused CONNECT. */
export function refusalHeaders(refusal: Refusal): http2.OutgoingHttpHeaders {
  return { ":status": H2_STATUS[refusal], [REFUSAL_HEADER]: refusal };
}

/** The client's reason for a CONNECT response: `undefined` = accepted (200). */
export function decodeH2Response(headers: http2.IncomingHttpHeaders): PeerReason | undefined {
  const status = Number(headers[":status"]);
  if (status === 200) return undefined;
  const named = headers[REFUSAL_HEADER];
  if (typeof named === "string" && (REFUSALS as readonly string[]).includes(named)) {
    return peerReason(named as Refusal);
  }
  if (status === 503) return "peer_app_refused";
  if (status === 403) return "peer_policy_denied";
  if (status === 429) return "peer_over_limit";
  return "peer_refused";
}

export function peerReason(r: Refusal): PeerReason {
  return `peer_${r}` as PeerReason;
}

/**
 * Whether a peer's refusal is a failure of that endpoint for outlier detection (a local-origin failure,
 * as Envoy counts a refused upstream connect). A policy or port refusal is a decision of the peer's
 * configuration, not a sign that the endpoint is unhealthy: it is retried and reported, not counted.
 */
export function countsAgainstEndpoint(reason: PeerReason): boolean {
  return reason !== "peer_policy_denied" && reason !== "peer_port_not_allowed";
}

/**
 * Whether an attempt that failed with `reason` may be retried on another endpoint: every failure before
 * the app can have received a byte. Not `peer_closed` (see PEER_REASONS) nor `peer_protocol_error` (a
 * peer that does not speak the protocol may have passed the bytes on), nor `connect_reset` (a plaintext
 * endpoint accepted and reset: it saw the connection, and its reset is the client's answer).
 */
export function mayRetry(reason: string): boolean {
  return reason !== "peer_closed" && reason !== "peer_protocol_error" && reason !== "connect_reset";
}

/** The error a refused (or unanswered) attempt fails with; `reason` is the client's PeerReason. */
export function peerRefusal(reason: PeerReason, where: string, cause?: unknown): WeftError {
  const what =
    reason === "peer_no_answer" || reason === "peer_closed"
      ? "ended before it answered"
      : reason === "peer_protocol_error"
        ? "answered with something that is not a Weft status message"
        : `refused the connection (${reason.slice(5)})`;
  return new WeftError("E_PEER_REFUSED", `the sidecar at ${where} ${what}`, { reason, cause });
}

/** The attempt's deadline passed (`answer_timeout`, a failure of the endpoint) or it was abandoned. */
function abortError(signal: AbortSignal, where: string): WeftError {
  const r = signal.reason as unknown;
  if (isWeftError(r) && r.code === "E_TIMEOUT") {
    return new WeftError("E_TIMEOUT", `the sidecar at ${where} did not answer before the deadline`, {
      reason: "answer_timeout",
      cause: r,
    });
  }
  return new WeftError("E_CONNECT", `${where}: waiting for the answer abandoned`, {
    reason: "aborted",
    cause: r,
  });
}

/**
 * The first of: what `listen` reports (an answer, or a failure) and `signal` aborting. `listen` attaches
 * its listeners and returns how to take them off, which happens once, before the promise settles.
 */
function awaitAnswer(
  where: string,
  signal: AbortSignal,
  listen: (answered: (r: PeerReason | undefined) => void, failed: (err: WeftError) => void) => () => void,
): Promise<PeerReason | undefined> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError(signal, where));
      return;
    }
    let settled = false;
    let detach = noop;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      detach();
      signal.removeEventListener("abort", onAbort);
      fn();
    };
    const onAbort = (): void => settle(() => reject(abortError(signal, where)));
    detach = listen(
      (r) => settle(() => resolve(r)),
      (err) => settle(() => reject(err)),
    );
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Read the status message of `version` from `stream`: resolves with the client's reason (`undefined` =
 * accepted). Bytes after the message (a server-speaks-first app) are put back and the stream is left
 * paused for the splice. Rejects with `peer_closed` when the stream ends or fails first, or with
 * `answer_timeout`/`aborted` when `signal` aborts.
 */
export function readStatus(
  stream: Duplex,
  version: 2 | 3,
  where: string,
  signal: AbortSignal,
): Promise<PeerReason | undefined> {
  return awaitAnswer(where, signal, (answered, failed) => {
    let got: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = got.length === 0 ? chunk : Buffer.concat([got, chunk]);
      if (got.length < STATUS_BYTES) return;
      stream.pause();
      answered(decodeStatus(got.subarray(0, STATUS_BYTES), version));
      // After `answered` took the listeners off: the rest is the app's, for the splice.
      const rest = got.subarray(STATUS_BYTES);
      if (rest.length > 0) stream.unshift(rest);
    };
    const onGone = (): void => failed(peerRefusal("peer_closed", where));
    const onError = (err: Error): void => failed(peerRefusal("peer_closed", where, err));
    stream.on("data", onData);
    stream.once("end", onGone);
    stream.once("close", onGone);
    stream.once("error", onError);
    return () => {
      stream.removeListener("data", onData);
      stream.removeListener("end", onGone);
      stream.removeListener("close", onGone);
      stream.removeListener("error", onError);
    };
  });
}

/**
 * Wait for the response to a CONNECT: resolves with the client's reason (`undefined` = accepted).
 * A stream that closes first (its session died, GOAWAY, RST_STREAM) rejects with `peer_no_answer`, or
 * `peer_over_limit` for RST_STREAM REFUSED_STREAM (the peer processed nothing, RFC 9113 §8.7).
 */
export function readResponse(
  stream: http2.ClientHttp2Stream,
  where: string,
  signal: AbortSignal,
): Promise<PeerReason | undefined> {
  return awaitAnswer(where, signal, (answered, failed) => {
    const onResponse = (headers: http2.IncomingHttpHeaders): void => answered(decodeH2Response(headers));
    const onClose = (): void => {
      const refused = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
      failed(peerRefusal(refused ? "peer_over_limit" : "peer_no_answer", where));
    };
    stream.once("response", onResponse);
    stream.once("close", onClose);
    return () => {
      stream.removeListener("response", onResponse);
      stream.removeListener("close", onClose);
    };
  });
}
