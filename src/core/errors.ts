/**
 * The one registry of Weft's error codes. Every failure a person may have to act on is a `WeftError`
 * with a stable `code` (tests assert on it), a message that names what failed and the value, and an
 * optional `cause`. Messages render as `CODE: message` so one line on stderr or in a log says it all.
 */

export const ERROR_CODES = {
  // configuration and usage
  E_CONFIG: "configuration is invalid",
  E_USAGE: "command-line usage is wrong",
  E_IO: "a file could not be read or written",
  E_ADDR_IN_USE: "a port to listen on is taken by another process",
  E_LISTEN: "a socket could not listen (permission, no such address)",
  E_INTERNAL: "an unexpected failure (a defect: report it)",
  E_EXISTS: "refusing to overwrite existing material",
  // SPIFFE IDs
  E_SPIFFE_ID: "a SPIFFE ID breaks a rule of the SPIFFE-ID spec",
  // certificates, CSRs, verification
  E_PEM: "PEM input is malformed",
  E_CSR_SIGNATURE: "the CSR's signature does not verify",
  E_CSR_IDENTITY: "the CSR asks for an identity the caller is not entitled to",
  E_CSR_INVALID: "the CSR is malformed or asks for more power than a workload may have",
  E_CERT_INVALID: "a certificate breaks a rule",
  E_SVID: "a certificate chain is not a valid X.509-SVID",
  E_CA_EXPIRED: "the signing CA has expired",
  // tokens and the CA server
  E_TOKEN_INVALID: "the join token is unknown or malformed",
  E_TOKEN_EXPIRED: "the join token has expired",
  E_TOKEN_USED: "the join token has been used up",
  E_TOKEN_MISMATCH: "the join token is not bound to the requested identity",
  E_RENEW_IDENTITY: "renewal asked for an identity other than the one presented",
  E_REQUEST: "the request is malformed",
  E_CA_UNREACHABLE: "the CA server could not be reached",
  E_RATE_LIMITED: "too many failed attempts from this address; retry later",
  E_REVOKED: "the certificate is revoked or was replaced by a renewal",
  // data plane
  E_POLICY_DENIED: "the peer's identity may not reach this destination",
  E_NO_ROUTE: "no service owns the destination",
  E_LOOP: "the connection would loop back into the proxy",
  E_PROXY_HEADER: "the PROXY protocol header is malformed",
  E_TLS_HANDSHAKE: "the TLS handshake failed",
  E_PEER_IDENTITY: "the peer presented the wrong identity",
  E_CONNECT: "the upstream connection failed",
  E_PEER_REFUSED: "the peer sidecar refused the connection or ended it before answering",
  E_TIMEOUT: "a deadline passed",
  E_LIMIT: "a limit was reached",
  E_ORIGINAL_DST: "the original destination could not be read",
  E_NOT_READY: "the component is not ready",
  E_DISCOVERY: "service discovery failed",
  E_IPTABLES: "iptables rules could not be applied",
  // Kubernetes
  E_KUBE_CONFIG: "the Kubernetes client configuration (in-cluster or kubeconfig) is missing or invalid",
  E_KUBE_API: "the Kubernetes API server refused a request",
  E_KUBE_UNREACHABLE: "the Kubernetes API server could not be reached",
  E_KUBE_RBAC: "the service account lacks a permission it needs",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class WeftError extends Error {
  readonly code: ErrorCode;
  /** A short, bounded, snake_case reason for metrics labels (e.g. `expired`, `untrusted_root`). */
  readonly reason: string;
  constructor(code: ErrorCode, message: string, options: { reason?: string; cause?: unknown } = {}) {
    super(`${code}: ${message}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "WeftError";
    this.code = code;
    this.reason = options.reason ?? code.slice(2).toLowerCase();
  }
}

export function isWeftError(err: unknown, code?: ErrorCode): err is WeftError {
  return err instanceof WeftError && (code === undefined || err.code === code);
}

const ROUTINE_SOCKET_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "ECONNABORTED",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ERR_STREAM_DESTROYED",
  "ERR_STREAM_WRITE_AFTER_END",
  "ERR_SSL_PROTOCOL_IS_SHUTDOWN",
]);

/** Resets, broken pipes and peers that vanish are normal for a proxy: count them, log at debug. */
export function isRoutineSocketError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && ROUTINE_SOCKET_CODES.has(code);
}

/** A one-line, human message for any thrown value (CLI stderr, log fields). */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * A failed listen() as a WeftError that says what to change: `what` names the listener ("the admin
 * server"), `setting` the config key or option that moves it (`listeners.admin.port`, `--listen`).
 */
export function listenError(
  what: string,
  address: string,
  port: number,
  setting: string,
  err: unknown,
): WeftError {
  const at = `${what} cannot listen on ${address.includes(":") ? `[${address}]` : address}:${port}`;
  const options = { reason: "listen_failed", cause: err };
  switch ((err as { code?: unknown } | null)?.code) {
    case "EADDRINUSE":
      return new WeftError(
        "E_ADDR_IN_USE",
        `${at}: the port is in use by another process; stop that process (ss -ltnp 'sport = :${port}' names it) or set ${setting} to a free port`,
        options,
      );
    case "EACCES":
      return new WeftError(
        "E_LISTEN",
        `${at}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, so set ${setting} to 1024 or above`,
        options,
      );
    case "EADDRNOTAVAIL":
      return new WeftError(
        "E_LISTEN",
        `${at}: no interface of this host has the address ${address}; set ${setting} to one of its addresses (or 0.0.0.0)`,
        options,
      );
    default:
      return new WeftError("E_LISTEN", `${at}: ${errorMessage(err)}; check ${setting}`, options);
  }
}
