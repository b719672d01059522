/**
 * The mesh tunnel listener (15008): the inbound life of one connection from another sidecar, top to
 * bottom.
 *
 *   accept -> TLS 1.3 handshake (client certificate requested, deadline `timeouts.handshake`)
 *          -> verify the client's X.509-SVID in Weft's code (every refusal counted with its reason)
 *          -> read the PROXY v2 header inside TLS (deadline `timeouts.proxyHeader`, strict, bounded)
 *          -> policy: may this identity reach that local port?
 *          -> plain TCP to the app (`inbound.appAddress`:port, deadline `timeouts.connect`), with an
 *             optional PROXY v1/v2 header for the app
 *          -> splice until both sides are done.
 *
 * OpenSSL is not asked to verify the client (`rejectUnauthorized: false`): with TLS 1.3 a client thinks
 * it is connected before the server has checked its certificate, and a server that lets OpenSSL refuse
 * drops the client without saying why. Checking after the handshake lets every refusal be counted in
 * `weft_tls_handshake_failures_total{reason}` and logged. Non-TLS bytes, stalled handshakes, resets and
 * garbage headers all end in a counted reason; nothing a peer sends can throw out of this module.
 * This file owns the connection up to the verified peer (and a pooled session's streams); stream.ts owns
 * each stream from its PROXY header on.
 */
import http2 from "node:http2";
import type { Socket } from "node:net";
import tls from "node:tls";
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import type { Clock } from "../../core/clock.ts";
import { isWeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { Direction, WeftMetrics } from "../../core/metrics.ts";
import { noop } from "../../core/noop.ts";
import { clientOf } from "../addresses.ts";
import type { ConnectionSlots } from "../capture/listener.ts";
import {
  type CloseReason,
  type ConnectionDeps,
  ConnectionRecord,
  containFailure,
  countRefused,
} from "../connection/record.ts";
import { resetSide, type SpliceSide } from "../connection/splice.ts";
import type { InboundSettings } from "../outbound/route.ts";
import { ALPN_WEFT2, ALPN_WEFT3, statusVersion } from "../transport/answer.ts";
import type { SessionCertWatch } from "../transport/h2/cert-watch.ts";
import { type KeepaliveSettings, SessionKeepalive } from "../transport/h2/keepalive.ts";
import {
  ALPN_H2,
  destroySession,
  resetStream,
  SESSION_WINDOW,
  streamWasReset,
  TUNNEL_H2_SETTINGS,
  tieSessionToSocket,
} from "../transport/h2/pool.ts";
import {
  ALPN_WEFT,
  type PeerProof,
  peerChain,
  type TunnelTls,
  type VerifiedLeaf,
} from "../transport/tls-context.ts";
import type { LocalAddressSet } from "./local-addresses.ts";
import type { PeerLimit, PeerLimits } from "./peer-limits.ts";
import { connectAnswer, legacyAnswer, statusAnswer, TunnelStream } from "./stream.ts";

export interface TunnelOptions {
  readonly tls: TunnelTls;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  readonly connection: ConnectionDeps;
  readonly settings: InboundSettings;
  readonly appAddress: string;
  /**
   * Transparent mode (inbound capture on): the app is dialled at the PROXY header's destination address,
   * which must be one of `localAddresses` and not loopback, instead of `appAddress`.
   */
  readonly transparent?: boolean;
  /**
   * Whether this sidecar serves the service a peer names (its TLV becomes the `service` label only
   * then; anything else is `unknown`, so a peer cannot grow /metrics). None: every name is `unknown`.
   */
  readonly servesService?: (name: string) => boolean;
  readonly localAddresses?: LocalAddressSet;
  readonly timeouts: {
    readonly handshake: number;
    readonly proxyHeader: number;
    readonly connect: number;
    readonly idle: number;
    readonly halfClose: number;
  };
  /** Pooled sessions: PING a silent peer, close the session when it does not answer. */
  readonly keepalive: KeepaliveSettings;
  /**
   * The tunnel listener's `maxConnections`, which pooled streams count against too (one each, across
   * every session); none = streams are bounded only per session.
   */
  readonly slots?: ConnectionSlots;
  /** Ends an accepted pooled session when its peer's certificate expires or stops verifying. */
  readonly certWatch?: SessionCertWatch;
  /** Limits per peer identity across its sessions (streams, sessions, header-less streams, reset rate). */
  readonly peerLimits?: PeerLimits;
}

/** OpenSSL errors that mean the bytes were not TLS at all (plaintext, HTTP, garbage). */
const NOT_TLS_CODES = new Set([
  "ERR_SSL_WRONG_VERSION_NUMBER",
  "ERR_SSL_HTTP_REQUEST",
  "ERR_SSL_HTTPS_PROXY_REQUEST",
  "ERR_SSL_PACKET_LENGTH_TOO_LONG",
  "ERR_SSL_UNKNOWN_PROTOCOL",
  "ERR_SSL_RECORD_LENGTH_MISMATCH",
  "ERR_SSL_UNEXPECTED_RECORD",
  "ERR_SSL_RECORD_LAYER_FAILURE",
]);

/** Handles connections accepted on the tunnel port; `handle` is the listener's `onConnection`. */
export class TunnelHandler {
  /** What its connections (and refusals) are counted as. */
  static readonly direction: Direction = "inbound";
  /** Pooled sessions accepted from peer sidecars and still open. */
  private readonly sessions = new Map<http2.ServerHttp2Session, tls.TLSSocket>();
  /** Set once the sessions were told to close: a session that completes its handshake later is too. */
  private draining = false;

  constructor(private readonly options: TunnelOptions) {}

  /** Drain: GOAWAY to every pooled session (live streams finish); `now`: destroy them. */
  closeSessions(now: boolean): void {
    this.draining = true;
    for (const [s, sock] of this.sessions) {
      if (now) destroySession(s, sock);
      else s.close();
    }
  }

  readonly handle = (raw: Socket): void => {
    raw.on("error", noop);
    try {
      this.accept(raw);
    } catch (err) {
      containFailure(this.options.connection, err, {
        reset: () => resetSide({ stream: raw, raw }),
        direction: "inbound",
        component: "tunnel",
      });
    }
  };

  private accept(raw: Socket): void {
    const o = this.options;
    const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), "inbound");
    rec.src = clientOf(raw);
    raw.on("error", noop);
    if (!o.tls.ready) {
      raw.destroy();
      this.refuseHandshake(rec, "handshake_failed", "not_ready");
      return;
    }
    rec.phase = "handshake";
    const sock = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: o.tls.context(),
      requestCert: true,
      rejectUnauthorized: false,
      // weft/3 first: the per-connection tunnel with the answer step and framed bytes (answer.ts,
      // frames.ts); weft/2 and weft/1 for older peers.
      ALPNProtocols: [ALPN_WEFT3, ALPN_WEFT2, ALPN_WEFT, ALPN_H2],
      allowHalfOpen: true,
    } as tls.TLSSocketOptions);
    new TunnelConnection(o, rec, raw, sock, this.sessions, () => this.draining).start();
  }

  private refuseHandshake(rec: ConnectionRecord, reason: CloseReason, label: string): void {
    this.options.metrics.tlsHandshakeFailures.inc({ direction: "inbound", reason: label });
    rec.finish(reason);
  }
}

/** The inbound life of one tunnel connection (see the module comment). */
class TunnelConnection {
  private timer: { cancel(): void } | undefined;
  private readonly started: number;

  constructor(
    private readonly o: TunnelOptions,
    private readonly rec: ConnectionRecord,
    private readonly raw: Socket,
    private readonly sock: tls.TLSSocket,
    private readonly sessions: Map<http2.ServerHttp2Session, tls.TLSSocket>,
    private readonly draining: () => boolean,
  ) {
    this.started = o.clock.monotonic();
  }

  start(): void {
    const { sock, rec, o } = this;
    rec.closer = (reason) => this.close(reason, "reset");
    this.timer = o.clock.setTimeout(
      () => this.refuse("handshake_timeout", "handshake_timeout"),
      o.timeouts.handshake,
    );
    sock.on("error", this.onEarlyError);
    sock.once("close", this.onEarlyClose);
    sock.once("secure", () => {
      this.onSecure().catch((err: unknown) =>
        containFailure(o.connection, err, {
          rec,
          reset: () => resetSide({ stream: sock, raw: this.raw }),
          component: "tunnel",
        }),
      );
    });
  }

  private readonly onEarlyError = (err: NodeJS.ErrnoException): void => {
    if (this.rec.isFinished) return;
    const code = err.code ?? "";
    if (this.rec.phase === "handshake") {
      if (NOT_TLS_CODES.has(code)) this.refuse("not_tls", "not_tls", err);
      else if (code === "ECONNRESET" || code === "EPIPE") this.refuse("client_closed", "client_closed", err);
      else this.refuse("handshake_failed", "handshake_failed", err);
      return;
    }
    this.close("downstream_reset", "destroy", err);
  };

  private readonly onEarlyClose = (): void => {
    if (this.rec.isFinished) return;
    if (this.rec.phase === "handshake") this.refuse("client_closed", "client_closed");
    else this.close("downstream_reset", "destroy");
  };

  /** A refusal before or at the TLS layer: counted as a handshake failure. */
  private refuse(reason: CloseReason, label: string, err?: unknown): void {
    if (this.rec.isFinished) return;
    this.o.metrics.tlsHandshakeFailures.inc({ direction: "inbound", reason: label });
    this.o.logger.debug(
      {
        conn_id: this.rec.id,
        src: this.rec.src,
        reason: label,
        err: err ? String((err as Error).message) : undefined,
      },
      "tunnel handshake refused",
    );
    this.close(reason, "destroy", err);
  }

  /** Before the hand-off to a TunnelStream (handshake, verification). */
  private close(reason: CloseReason, how: "reset" | "destroy", err?: unknown): void {
    this.timer?.cancel();
    // Record first: resetting a socket can emit its close synchronously, and the record keeps the
    // first reason it is given.
    this.rec.finish(reason, err);
    if (how === "reset") resetSide({ stream: this.sock, raw: this.raw });
    else {
      this.sock.destroy();
      this.raw.destroy();
    }
  }

  private async onSecure(): Promise<void> {
    const { sock, rec, o } = this;
    if (rec.isFinished) return;
    this.timer?.cancel();
    rec.handshakeMs = o.clock.monotonic() - this.started;
    sock.setNoDelay(true);
    const alpn = sock.alpnProtocol;
    if (alpn !== ALPN_WEFT3 && alpn !== ALPN_WEFT2 && alpn !== ALPN_WEFT && alpn !== ALPN_H2) {
      this.refuse("bad_alpn", "bad_alpn");
      return;
    }
    const chain = peerChain(sock);
    let leaf: VerifiedLeaf;
    try {
      leaf = o.tls.verifyLeaf(chain, "client");
    } catch (err) {
      const why = isWeftError(err) ? err.reason : "invalid";
      if (why === "no_peer_certificate") this.refuse("no_client_cert", "no_client_cert", err);
      else this.refuse(`svid_${why}`, `svid_${why}`, err);
      return;
    }
    const peer = leaf.id;
    rec.peerSerial = sock.getPeerX509Certificate()?.serialNumber;
    rec.tlsResumed = sock.isSessionReused();
    o.metrics.tlsHandshakeDuration.observe(
      { direction: "inbound", resumed: String(rec.tlsResumed) },
      rec.handshakeMs / 1000,
    );
    rec.setPeer(peer);
    sock.removeListener("error", this.onEarlyError);
    sock.removeListener("close", this.onEarlyClose);
    if (alpn === ALPN_H2) {
      // A pooled session: its streams are the connections; this TLS connection is not one.
      rec.discard();
      this.servePooled(peer, { chain, role: "client" }, leaf.notAfter);
      return;
    }
    const side: SpliceSide = { stream: sock, raw: this.raw, framed: alpn === ALPN_WEFT3 };
    const version = statusVersion(alpn);
    const answer =
      version !== undefined ? statusAnswer(side, version, o.clock, o.timeouts.connect) : legacyAnswer(side);
    if (o.peerLimits) {
      // A per-connection tunnel is one of the peer's streams too.
      const release = o.peerLimits.openStream(peer);
      if (!release) {
        rec.finish("peer_limit");
        answer.refuse("over_limit");
        return;
      }
      sock.once("close", release);
    }
    new TunnelStream(o, rec, side, peer, answer).run();
  }

  /** An HTTP/2 session from a peer sidecar that pools its connections: one TunnelStream per CONNECT. */
  private servePooled(peer: SpiffeId, proof: PeerProof, notAfter: number): void {
    const { o, sock, rec } = this;
    sock.on("error", noop);
    // A server-side TLSSocket made by hand (not by tls.Server) keeps secureConnecting true after its
    // handshake; Node's HTTP/2 session would then wait for a 'secureConnect' that never comes.
    (sock as unknown as { secureConnecting: boolean }).secureConnecting = false;
    const session = http2.performServerHandshake(sock, { settings: TUNNEL_H2_SETTINGS });
    session.on("error", noop);
    o.metrics.tunnelPooledSessions.inc();
    this.sessions.set(session, sock);
    tieSessionToSocket(session, sock, o.clock);
    session.once("close", () => {
      this.sessions.delete(session);
      o.metrics.tunnelPooledSessions.dec();
    });
    // One peer identity, many sessions: its limits hold across all of them (peer-limits.ts).
    if (o.peerLimits) {
      const release = o.peerLimits.openSession(peer, calmer(session, sock, o.clock));
      if (!release) {
        // Over the peer's session limit: nothing runs on it yet.
        hangUp(session, sock);
        return;
      }
      session.once("close", release);
    }
    session.once("connect", () => session.setLocalWindowSize(SESSION_WINDOW));
    if (this.draining()) session.close();
    o.certWatch?.watch(session, peer, notAfter, proof, () => session.close());
    // A peer that vanished without a FIN must not hold a session forever: after `timeouts.idle` with no
    // frames, GOAWAY (live streams may still finish; the peer opens a new session for new ones).
    if (o.timeouts.idle > 0) session.setTimeout(o.timeouts.idle, () => session.close());
    // A peer that is gone (no FIN, packets dropped) is found sooner by PING: its streams end as resets.
    new SessionKeepalive(session, this.raw, o.clock, o.keepalive, (err) => {
      o.metrics.pooledSessionKeepaliveTimeouts.inc({ direction: "inbound" });
      o.logger.warn(
        { src: rec.src, peer_identity: peer.toString(), reason: err.reason },
        "pooled session stopped answering PING; closing it",
      );
      destroySession(session, sock);
    }).start();
    session.on("stream", (stream, headers) => {
      stream.on("error", noop);
      try {
        this.onStream(stream, headers, peer);
      } catch (err) {
        containFailure(o.connection, err, {
          reset: () => resetStream(stream),
          direction: "inbound",
          peer,
          component: "tunnel",
        });
      }
    });
  }

  /** One CONNECT stream of a pooled session: a connection of its own (a TunnelStream). */
  private onStream(
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    peer: SpiffeId,
  ): void {
    const { o, rec } = this;
    // A stream the peer already reset (HEADERS and RST_STREAM in one write arrive together) is gone
    // before we see it: answering it would throw. Nothing was processed; nothing is owed but the count
    // towards the peer's reset rate.
    if (stream.destroyed || stream.closed) {
      o.peerLimits?.peerReset(peer);
      return;
    }
    const session = stream.session;
    stream.once("aborted", () => {
      if (session && !session.destroyed && !session.closed) o.peerLimits?.peerReset(peer);
    });
    if (headers[":method"] !== "CONNECT") {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    // Each stream is a connection for the listener's limit, so a peer cannot multiply its sessions'
    // 10,000 streams: over the limit, RST_STREAM REFUSED_STREAM (nothing was processed, RFC 9113
    // §8.7), counted as the per-connection path counts a refused accept.
    if (o.slots && !o.slots.tryAcquire()) {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      countRefused(o.connection, { direction: TunnelHandler.direction, peer, reason: "connection_limit" });
      o.logger.debug(
        { src: rec.src, peer_identity: peer.toString(), reason: "connection_limit" },
        "tunnel stream refused",
      );
      return;
    }
    if (o.slots) {
      const slots = o.slots;
      stream.once("close", () => slots.release());
    }
    let headerSlot: (() => void) | undefined;
    if (o.peerLimits) {
      const release = o.peerLimits.openStream(peer);
      // Taken here, before anything is built for the stream: a peer that opens streams without headers
      // (or too many) is refused at the cost of one RST_STREAM (and its sessions closed if it goes on).
      headerSlot = release ? o.peerLimits.awaitHeader(peer) : undefined;
      if (!release || !headerSlot) {
        release?.();
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        countRefused(o.connection, { direction: TunnelHandler.direction, peer, reason: "peer_limit" });
        return;
      }
      stream.once("close", release);
      stream.once("close", headerSlot);
    }
    const srec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), "inbound");
    srec.src = rec.src;
    srec.peerSerial = rec.peerSerial;
    srec.setPeer(peer);
    // No response yet: the CONNECT is answered once the app accepted (or with the refusal).
    const side: SpliceSide = {
      stream,
      reset: () => resetStream(stream),
      resetByPeer: () => streamWasReset(stream),
    };
    new TunnelStream(o, srec, side, peer, connectAnswer(stream), headerSlot).run();
  }
}

/** How long streams already running on a session that a peer limit closed may go on. */
export const CALM_GRACE_MS = 10_000;

/**
 * What a peer limit (peer-limits.ts) calls to close one of the peer's sessions. The first time it goes
 * away gracefully: GOAWAY NO_ERROR (`close()`) refuses every new stream, while the streams it already
 * carries, other app connections of that peer's pod, finish within CALM_GRACE_MS. (A GOAWAY with an
 * error code would make a Node peer destroy the session and every stream on it at once.) If the peer
 * trips a limit again meanwhile, or the limit is the header-less flood (its waiting streams are the
 * flood), the session is hung up at once.
 */
function calmer(
  session: http2.ServerHttp2Session,
  sock: tls.TLSSocket,
  clock: Clock,
): (limit: PeerLimit) => void {
  let closing = false;
  return (limit) => {
    if (session.destroyed) return;
    // A header-less flood: the streams waiting on the session are the flood itself, nothing to spare.
    if (closing || limit === "pending_headers") {
      hangUp(session, sock);
      return;
    }
    closing = true;
    const grace = clock.setTimeout(() => hangUp(session, sock), CALM_GRACE_MS);
    session.once("close", () => grace.cancel());
    session.close();
  };
}

/** GOAWAY ENHANCE_YOUR_CALM and destroy: every stream on the session ends now. */
function hangUp(session: http2.ServerHttp2Session, sock: tls.TLSSocket): void {
  if (session.destroyed) return;
  try {
    session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
  } catch {
    // The session is going away already.
  }
  destroySession(session, sock);
}
