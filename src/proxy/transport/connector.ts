/**
 * The upstream seam of the outbound path: given an endpoint and the identity it must prove, give back a
 * connected duplex. `MtlsConnector` dials the endpoint's sidecar tunnel port with mutual TLS 1.3 (ALPN
 * `weft/3`, or `weft/2`/`weft/1` with an older peer (answer.ts); the shared SecureContext, a resumed session when one is kept for that endpoint) and checks
 * that the server's X.509-SVID verifies and names exactly the expected SPIFFE ID. One deadline, carried by
 * the caller's AbortSignal, covers TCP connect and handshake together. `connectTcp` is the plaintext dial
 * (endpoints without a sidecar, passthrough, the local app).
 *
 * Keeping the transport behind `Connector` lets a pooled, multiplexed tunnel (HTTP/2 CONNECT over one
 * mTLS session per peer, negotiated by ALPN) be added beside this one without touching the connection's
 * life in outbound.ts.
 */
import net from "node:net";
import tls from "node:tls";
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import type { Clock } from "../../core/clock.ts";
import { isWeftError, WeftError } from "../../core/errors.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import { type Endpoint, formatAddr } from "../../discovery/types.ts";
import type { EndpointAddr } from "../addresses.ts";
import { upstreamFailure as failure, type SvidFailure } from "../connection/close-reasons.ts";
import type { SpliceSide } from "../connection/splice.ts";
import { ALPN_WEFT2, ALPN_WEFT3, peerRefusal, readStatus, statusVersion } from "./answer.ts";
import {
  ALPN_WEFT,
  type KeptSession,
  type PeerProof,
  peerChain,
  type TunnelTls,
  type VerifiedLeaf,
} from "./tls-context.ts";

/** A connected upstream, ready for the PROXY header and the splice. */
export interface Upstream {
  readonly side: SpliceSide;
  /** The SPIFFE ID the server proved; undefined for plaintext. */
  readonly peer: SpiffeId | undefined;
  /** Milliseconds until the TCP connection was up, and until the handshake finished (TLS only). */
  readonly connectMs: number;
  readonly handshakeMs: number | undefined;
  readonly resumed: boolean;
  /** A Weft tunnel (per-connection or pooled stream): the PROXY v2 header goes first. */
  readonly tunnel: boolean;
  /**
   * Resolves once the peer accepted the connection, which a Weft peer does only after its app did
   * (answer.ts); rejects with the peer's refusal (`peer_*`), `answer_timeout` or `aborted`. Resolves at
   * once where there is no answer step (plaintext, a `weft/1` peer). Call it after writing the PROXY
   * header and the early bytes, so the answer costs no round trip of its own.
   */
  readonly answer: (signal: AbortSignal) => Promise<void>;
}

/** `Upstream.answer` where there is no answer step. */
export const NO_ANSWER = (): Promise<void> => Promise.resolve();

export interface UpstreamTarget {
  readonly endpoint: Endpoint;
  /** The SPIFFE ID the endpoint's sidecar must present. */
  readonly expectedIdentity: string;
  /**
   * Pooled transport: counts one failure of the endpoint if a session this connection opened dies later
   * because the peer stopped answering (keepalive). Called at most once per session.
   */
  readonly reportLost?: (err: WeftError) => void;
}

/** Given an endpoint and an identity, a connected mTLS duplex, or a WeftError with a bounded reason. */
export interface Connector {
  connect(target: UpstreamTarget, signal: AbortSignal): Promise<Upstream>;
  /** Release what the connector keeps between connections (pooled sessions), at shutdown. */
  close?(): void;
}

function connectError(err: NodeJS.ErrnoException, where: string): WeftError {
  if (err.code === "ECONNREFUSED") return failure("connect_refused", `${where} refused the connection`, err);
  return failure("connect_failed", `cannot connect to ${where}: ${err.code ?? err.message}`, err);
}

/** A plain TCP connection to `addr` within the deadline of `signal`. */
export function connectTcp(addr: EndpointAddr, signal: AbortSignal): Promise<net.Socket> {
  const where = formatAddr(addr.address, addr.port);
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError(signal, "connect", where));
      return;
    }
    const socket = net.connect({ host: addr.address, port: addr.port, allowHalfOpen: true, noDelay: true });
    const onAbort = (): void => {
      socket.destroy();
      reject(abortError(signal, "connect", where));
    };
    socket.once("connect", () => {
      signal.removeEventListener("abort", onAbort);
      socket.removeListener("error", onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      signal.removeEventListener("abort", onAbort);
      socket.destroy();
      // ECONNRESET here: the server accepted and reset before our connect completed. It saw the
      // connection and answered it; unlike a refusal, this is not retried (answer.ts `mayRetry`).
      reject(
        err.code === "ECONNRESET"
          ? failure("connect_reset", `${where} accepted the connection and reset it`, err)
          : connectError(err, where),
      );
    };
    socket.once("error", onError);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * `connectTcp` within `timeoutMs` (then `connect_timeout`), abandoned (`aborted`) when `signal` aborts
 * or `other` (the side that waits for this connection) closes first.
 */
export async function connectWithDeadline(
  addr: EndpointAddr,
  o: { clock: Clock; timeoutMs: number; signal?: AbortSignal; other?: NodeJS.EventEmitter },
): Promise<net.Socket> {
  const ctl = new AbortController();
  const timer = o.clock.setTimeout(
    () => ctl.abort(new WeftError("E_TIMEOUT", "connect deadline")),
    o.timeoutMs,
  );
  const onOuter = (): void => ctl.abort(o.signal?.reason);
  const onGone = (): void => ctl.abort(new WeftError("E_CONNECT", "the other side went away"));
  if (o.signal?.aborted) onOuter();
  o.signal?.addEventListener("abort", onOuter, { once: true });
  o.other?.once("close", onGone);
  try {
    return await connectTcp(addr, ctl.signal);
  } finally {
    timer.cancel();
    o.signal?.removeEventListener("abort", onOuter);
    o.other?.removeListener("close", onGone);
  }
}

function abortError(signal: AbortSignal, phase: "connect" | "handshake", where: string): WeftError {
  const r = signal.reason as unknown;
  if (isWeftError(r) && r.code === "E_TIMEOUT") {
    return failure(`${phase}_timeout`, `${where}: no ${phase} before the deadline`, r);
  }
  return failure("aborted", `${where}: ${phase} abandoned`, r);
}

export interface MtlsConnectorOptions {
  readonly tls: TunnelTls;
  readonly clock: Clock;
  readonly metrics: WeftMetrics;
}

/** A mutual-TLS connection to an endpoint's sidecar whose server proved the expected identity. */
export interface VerifiedTls {
  readonly sock: tls.TLSSocket;
  readonly raw: net.Socket;
  readonly peer: SpiffeId;
  readonly connectMs: number;
  readonly handshakeMs: number;
  readonly resumed: boolean;
  /** The SecureContext it was made with: after a rotation, pooled sessions on an older one retire. */
  readonly context: tls.SecureContext;
  /** The ALPN protocol the server chose. */
  readonly alpn: string;
  /** When the server's certificate expires (from the kept session when resumed). */
  readonly peerNotAfter: number;
  /** The server's chain, to check it again when trust changes (a resumed session shows none). */
  readonly proof: PeerProof | undefined;
}

/** Mutual-TLS dial to an endpoint's sidecar, one connection per app connection; see the module comment. */
export class MtlsConnector implements Connector {
  constructor(private readonly options: MtlsConnectorOptions) {}

  async connect(target: UpstreamTarget, signal: AbortSignal): Promise<Upstream> {
    const v = await dialMtls(this.options, target, signal, [ALPN_WEFT3, ALPN_WEFT2, ALPN_WEFT]);
    const where = formatAddr(target.endpoint.address, target.endpoint.tunnelPort);
    const version = statusVersion(v.alpn);
    return {
      answer:
        version !== undefined
          ? async (answerSignal) => {
              const refused = await readStatus(v.sock, version, where, answerSignal);
              if (refused) throw peerRefusal(refused, where);
            }
          : NO_ANSWER,
      // weft/3 frames the app's bytes, so that a tunnel cut short is not taken for a FIN (frames.ts).
      side: { stream: v.sock, raw: v.raw, framed: v.alpn === ALPN_WEFT3 },
      peer: v.peer,
      connectMs: v.connectMs,
      handshakeMs: v.handshakeMs,
      resumed: v.resumed,
      tunnel: true,
    };
  }
}

/**
 * TCP connect plus TLS 1.3 handshake offering the ALPN protocols `alpns` (in order of preference) under
 * `signal`'s deadline; the server must choose one of them and present an SVID for
 * `target.expectedIdentity` (or resume a session in which it did).
 */
export function dialMtls(
  options: MtlsConnectorOptions,
  target: UpstreamTarget,
  signal: AbortSignal,
  alpns: readonly string[],
): Promise<VerifiedTls> {
  const { tls: state, clock, metrics } = options;
  const ep = target.endpoint;
  const where = formatAddr(ep.address, ep.tunnelPort);
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError(signal, "connect", where));
      return;
    }
    let context: tls.SecureContext;
    try {
      context = state.context();
    } catch (err) {
      reject(failure("not_ready", "no workload certificate yet", err));
      return;
    }
    const t0 = clock.monotonic();
    let connectMs: number | undefined;
    let settled = false;
    const kept = state.session(where, target.expectedIdentity);
    const { raw, sock } = openTls(ep, context, alpns, kept);
    const fail = (err: WeftError): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener("abort", onAbort);
      state.forgetSession(where);
      // The TLS socket first: destroying the TCP socket under a live TLS wrap can crash Node.
      sock.destroy();
      raw.destroy();
      reject(err);
    };
    const onAbort = (): void =>
      fail(abortError(signal, connectMs === undefined ? "connect" : "handshake", where));
    const onError = (err: NodeJS.ErrnoException): void =>
      fail(dialError(err, connectMs !== undefined, where));
    raw.once("connect", () => {
      connectMs = clock.monotonic() - t0;
    });
    raw.on("error", onError);
    sock.on("error", onError);
    sock.once("close", () => {
      if (!settled) fail(failure("handshake_failed", `${where} closed the connection during the handshake`));
    });
    signal.addEventListener("abort", onAbort, { once: true });
    sock.once("secureConnect", () => {
      if (settled) return;
      const handshakeMs = clock.monotonic() - t0 - (connectMs ?? 0);
      // tls.connect does not apply noDelay to the socket it wraps; without it p99 was ~3x worse.
      sock.setNoDelay(true);
      const alpn = sock.alpnProtocol;
      if (typeof alpn !== "string" || !alpns.includes(alpn)) {
        fail(failure("bad_alpn", `${where} did not agree to ${alpns.join(" or ")}`));
        return;
      }
      const resumed = sock.isSessionReused();
      let proved: ServerProof;
      try {
        proved = serverProof(state, sock, { where, expected: target.expectedIdentity, kept, context });
      } catch (err) {
        fail(err as WeftError);
        return;
      }
      settled = true;
      signal.removeEventListener("abort", onAbort);
      raw.removeListener("error", onError);
      sock.removeListener("error", onError);
      metrics.tlsHandshakeDuration.observe(
        { direction: "outbound", resumed: String(resumed) },
        handshakeMs / 1000,
      );
      resolve({ sock, raw, ...proved, connectMs: connectMs ?? 0, handshakeMs, resumed, context, alpn });
    });
  });
}

/**
 * The TCP connection to the endpoint's tunnel port and the TLS client over it. The server's certificate
 * is checked by Weft after the handshake (`serverProof`), not by OpenSSL, so a refusal has its reason.
 */
function openTls(
  ep: Endpoint,
  context: tls.SecureContext,
  alpns: readonly string[],
  kept: KeptSession | undefined,
): { raw: net.Socket; sock: tls.TLSSocket } {
  const raw = net.connect({ host: ep.address, port: ep.tunnelPort, allowHalfOpen: true, noDelay: true });
  const sock = tls.connect({
    socket: raw,
    secureContext: context,
    ALPNProtocols: [...alpns],
    rejectUnauthorized: false,
    session: kept?.session,
    allowHalfOpen: true,
  } as tls.ConnectionOptions);
  return { raw, sock };
}

/** A socket error while dialling: a connect failure (errno) before TCP was up, else the handshake's. */
function dialError(err: NodeJS.ErrnoException, connected: boolean, where: string): WeftError {
  if (!connected && err.code?.startsWith("E") && !err.code.startsWith("ERR_"))
    return connectError(err, where);
  return failure("handshake_failed", `TLS handshake with ${where} failed: ${err.code ?? err.message}`, err);
}

/** Who the server proved, and until when. */
interface ServerProof {
  readonly peer: SpiffeId;
  readonly proof: PeerProof | undefined;
  readonly peerNotAfter: number;
}

/**
 * The identity the server proved after the handshake: the expected one for a session resumed from a
 * full handshake that verified it, else its chain verified against the bundle and naming exactly the
 * expected identity (then the session is kept for resumption). Throws the upstream failure.
 */
function serverProof(
  state: TunnelTls,
  sock: tls.TLSSocket,
  o: { where: string; expected: string; kept: KeptSession | undefined; context: tls.SecureContext },
): ServerProof {
  if (sock.isSessionReused() && o.kept) {
    // A resumed session carries no server certificate; it was verified in the full handshake, and what
    // may have changed since the dial took it is checked again here.
    const refused = state.resumedRefusal(o.kept);
    if (refused === "trust_changed") {
      throw failure(
        "handshake_failed",
        `${o.where}: resumed a session while a new identity or trust bundle was installed; dial again for a full handshake`,
      );
    }
    if (refused) {
      throw failure(
        `svid_${refused}`,
        `${o.where} resumed a session, but its certificate (serial ${o.kept.serial}) is ${refused} now`,
      );
    }
    return { peer: o.kept.peer, proof: undefined, peerNotAfter: o.kept.notAfter };
  }
  const proof: PeerProof = { chain: peerChain(sock), role: "server" };
  let leaf: VerifiedLeaf;
  try {
    leaf = state.verifyLeaf(proof.chain, "server");
  } catch (err) {
    const reason: SvidFailure = isWeftError(err) ? `svid_${err.reason}` : "svid_invalid";
    throw failure(reason, `${o.where} presented an unusable certificate: ${(err as Error).message}`, err);
  }
  const peer = leaf.id;
  if (!peer.equals(o.expected)) {
    throw failure("identity_mismatch", `${o.where} presented ${peer}, expected ${o.expected}`);
  }
  sock.once("session", (session: Buffer) => state.keepSession(o.where, peer, session, leaf, o.context));
  return { peer, proof, peerNotAfter: leaf.notAfter };
}
