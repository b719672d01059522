/**
 * How connections end: the closed set of close reasons (`CLOSE_REASONS`, also the `reason` label of
 * `weft_tcp_connections_closed_total`), and one typed table from each kind of failure to the reason of
 * the connection it ends, as ztunnel's `extract_failure_reason` and Envoy's upstream failure reasons do:
 * how a splice ended, why an upstream attempt failed (which also says the attempt's error code), why a
 * PROXY header was refused. The compiler checks that every failure has its row; nothing here matches
 * strings, except that an SVID refusal carries the verifier's own rule (`svid_<rule>`).
 */
import { type ErrorCode, isWeftError, WeftError } from "../../core/errors.ts";
import { PEER_REASONS, type PeerReason } from "../transport/answer.ts";
import type { ProxyHeaderFailure } from "../transport/proxy-protocol.ts";
import type { SpliceEnd } from "./splice.ts";

/**
 * Every reason a connection can end with; also the `reason` label of `weft_tcp_connections_closed_total`.
 * `closed` is the normal end. Identity-verification failures carry the SVID verifier's own bounded reason
 * prefixed `svid_` (e.g. `svid_expired`); the README lists each with its meaning.
 */
export const CLOSE_REASONS = [
  "closed",
  "idle_timeout",
  "half_close_timeout",
  "downstream_reset",
  "upstream_reset",
  "downstream_error",
  "upstream_error",
  // a weft/3 tunnel ended without its end frame (the peer sidecar died or was cut off): carried as a reset
  "peer_truncated",
  "drained",
  "shutdown",
  "connection_limit",
  "peer_limit",
  // routing
  "no_route",
  "unknown_service",
  "unknown_port",
  "no_endpoint",
  "loop",
  "original_dst_failed",
  // upstream connection
  "upstream_connect_failed",
  "upstream_timeout",
  "upstream_handshake_failed",
  "upstream_identity_mismatch",
  "upstream_untrusted",
  // the peer sidecar refused (its reason, see transport/answer.ts) or never answered
  ...PEER_REASONS,
  // tunnel (inbound mTLS)
  "handshake_timeout",
  "handshake_failed",
  "not_tls",
  "no_client_cert",
  "bad_alpn",
  "client_closed",
  "proxy_header_timeout",
  "proxy_header_truncated",
  "proxy_header_malformed",
  "proxy_header_unsupported",
  "policy_denied",
  "forbidden_port",
  "port_not_allowed",
  "destination_not_local",
  "loopback_destination",
  "app_connect_failed",
  // inbound capture
  "plaintext_refused",
  // a bug in Weft: caught at the end of the connection's own path, this connection reset, nothing else
  "internal_error",
] as const;

/** An SVID refusal: `svid_` and the verifier's rule (`svid_expired`, `svid_untrusted`, ...). */
export type SvidFailure = `svid_${string}`;

export type CloseReason = (typeof CLOSE_REASONS)[number] | SvidFailure;

function isSvidFailure(reason: string): reason is SvidFailure {
  return reason.startsWith("svid_");
}

/** How a splice ended → the connection's close reason. */
const SPLICE_REASON: Record<SpliceEnd, CloseReason> = {
  closed: "closed",
  idle_timeout: "idle_timeout",
  half_close_timeout: "half_close_timeout",
  downstream_reset: "downstream_reset",
  upstream_reset: "upstream_reset",
  downstream_error: "downstream_error",
  upstream_error: "upstream_error",
  peer_truncated: "peer_truncated",
  peer_protocol_error: "peer_protocol_error",
  aborted: "shutdown",
};

/** The close reason for how a splice ended. */
export function spliceReason(end: SpliceEnd): CloseReason {
  return SPLICE_REASON[end];
}

/**
 * Why one upstream attempt failed: the `reason` label of `weft_upstream_connect_failures_total` and the
 * `reason` of the attempt's WeftError. `connect_reset` is a plaintext endpoint that accepted and reset;
 * `keepalive_timeout` a pooled session that stopped answering PING after it was opened; the `peer_*`
 * reasons are the answer step's (answer.ts). Beside these, `svid_<rule>` (the server's certificate).
 */
export const UPSTREAM_FAILURES = [
  "connect_refused",
  "connect_reset",
  "connect_failed",
  "connect_timeout",
  "handshake_failed",
  "handshake_timeout",
  "bad_alpn",
  "identity_mismatch",
  "not_ready",
  "aborted",
  "keepalive_timeout",
  "answer_timeout",
  ...PEER_REASONS,
] as const;

export type UpstreamFailure = (typeof UPSTREAM_FAILURES)[number] | SvidFailure;

/** Each upstream failure's error code, and the close reason of a connection that ends on it. */
const UPSTREAM: Record<(typeof UPSTREAM_FAILURES)[number], { code: ErrorCode; close: CloseReason }> = {
  connect_refused: { code: "E_CONNECT", close: "upstream_connect_failed" },
  // The endpoint saw the connection and reset it: its reset is the client's answer.
  connect_reset: { code: "E_CONNECT", close: "upstream_reset" },
  connect_failed: { code: "E_CONNECT", close: "upstream_connect_failed" },
  connect_timeout: { code: "E_TIMEOUT", close: "upstream_timeout" },
  handshake_failed: { code: "E_TLS_HANDSHAKE", close: "upstream_handshake_failed" },
  handshake_timeout: { code: "E_TIMEOUT", close: "upstream_timeout" },
  bad_alpn: { code: "E_TLS_HANDSHAKE", close: "upstream_handshake_failed" },
  identity_mismatch: { code: "E_PEER_IDENTITY", close: "upstream_identity_mismatch" },
  not_ready: { code: "E_CONNECT", close: "upstream_connect_failed" },
  // The attempt was abandoned because the client went away.
  aborted: { code: "E_CONNECT", close: "downstream_reset" },
  keepalive_timeout: { code: "E_TIMEOUT", close: "upstream_timeout" },
  answer_timeout: { code: "E_TIMEOUT", close: "upstream_timeout" },
  ...peerRows(),
};

/** A peer's refusal ends the connection with that refusal's own reason. */
function peerRows(): Record<PeerReason, { code: ErrorCode; close: CloseReason }> {
  const rows = {} as Record<PeerReason, { code: ErrorCode; close: CloseReason }>;
  for (const r of PEER_REASONS) rows[r] = { code: "E_PEER_REFUSED", close: r };
  return rows;
}

function upstreamRow(reason: string): { code: ErrorCode; close: CloseReason } | undefined {
  return Object.hasOwn(UPSTREAM, reason) ? UPSTREAM[reason as keyof typeof UPSTREAM] : undefined;
}

/** The WeftError of a failed upstream attempt: the code its reason implies. */
export function upstreamFailure(reason: UpstreamFailure, message: string, cause?: unknown): WeftError {
  const code = upstreamRow(reason)?.code ?? "E_SVID";
  return new WeftError(code, message, { reason, cause });
}

/**
 * An upstream failure this attempt shares with other connections that waited on the same pooled
 * session opening: the first of them counted it (once for outlier detection and the failure counter);
 * this one only ends its connection.
 */
export class CountedElsewhere extends WeftError {}

/**
 * The close reason of an outbound connection that ended before its splice, from what it failed with:
 * an upstream failure (the table), a service without endpoints, a deadline (`E_TIMEOUT`), or something
 * that is no WeftError (a client that left first: `downstream_reset`).
 */
export function upstreamCloseReason(err: unknown, clientGone: boolean): CloseReason {
  if (!isWeftError(err)) return clientGone ? "downstream_reset" : "upstream_connect_failed";
  if (err.reason === "no_endpoint") return "no_endpoint";
  const row = upstreamRow(err.reason);
  if (row) return row.close;
  if (isSvidFailure(err.reason)) return "upstream_untrusted";
  return err.code === "E_TIMEOUT" ? "upstream_timeout" : "upstream_connect_failed";
}

/** Why a PROXY header was refused (proxy-protocol.ts) → the tunnel stream's close reason. */
const PROXY_HEADER: Record<ProxyHeaderFailure, CloseReason> = {
  proxy_header_timeout: "proxy_header_timeout",
  truncated: "proxy_header_truncated",
  closed: "proxy_header_truncated",
  truncated_addresses: "proxy_header_truncated",
  // Well-formed, but not a TCP stream.
  udp_transport: "proxy_header_unsupported",
  unix_family: "proxy_header_unsupported",
  unspec_family: "proxy_header_unsupported",
  local_with_family: "proxy_header_unsupported",
  bad_address: "proxy_header_malformed",
  bad_command: "proxy_header_malformed",
  bad_family: "proxy_header_malformed",
  bad_port: "proxy_header_malformed",
  bad_signature: "proxy_header_malformed",
  bad_tlv: "proxy_header_malformed",
  bad_version: "proxy_header_malformed",
  missing_addresses: "proxy_header_malformed",
  mixed_families: "proxy_header_malformed",
  tlv_overflow: "proxy_header_malformed",
  too_long: "proxy_header_malformed",
  v1_bad_address: "proxy_header_malformed",
  v1_bad_line: "proxy_header_malformed",
};

/** The close reason of a tunnel stream whose PROXY header could not be read. */
export function proxyHeaderCloseReason(err: unknown): CloseReason {
  if (!isWeftError(err)) return "proxy_header_malformed";
  if (Object.hasOwn(PROXY_HEADER, err.reason)) return PROXY_HEADER[err.reason as ProxyHeaderFailure];
  return err.code === "E_TIMEOUT" ? "proxy_header_timeout" : "proxy_header_malformed";
}
