/**
 * The pooled upstream transport (`upstream.transport: pooled`): one mutual-TLS HTTP/2 session per peer
 * sidecar (an endpoint's tunnel address and the identity it must prove), one CONNECT stream per app
 * connection. The handshake and the identity check happen once per session, so a new app connection
 * costs one stream, not one handshake; the stream carries the PROXY v2 header and then the app's bytes,
 * exactly as a per-connection tunnel does, and the peer's tunnel listener applies policy per stream.
 *
 * - Sessions are opened on demand (concurrent callers for the same peer share one opening; callers
 *   that find the new session already full share the next one), filled up to `maxStreamsPerSession`
 *   and never beyond, closed after `sessionIdleTimeoutMs` without streams, and retired (closed
 *   gracefully, live streams finish) when the sidecar's certificate rotates or the peer sends GOAWAY.
 * - Flow control: 1 MiB per stream, 4 MiB per session. A paused stream stops window updates, so a slow
 *   reader holds its own sender back without stalling the other streams of the session.
 * - Half-close is END_STREAM; a reset is RST_STREAM (`resetStream`), carried by the splice like a TCP
 *   reset.
 * - Liveness: a session that received nothing for `keepalive.intervalMs` gets a PING; without an ACK
 *   in `keepalive.timeoutMs` it is destroyed and counted once as a failure of its endpoint, and no new
 *   stream goes to it while the PING is outstanding (keepalive.ts).
 * - A session that cannot be opened is one upstream failure of that endpoint (outlier detection),
 *   however many connections waited on it (`CountedElsewhere` for the others); a
 *   session that dies takes its streams with it, and each of them ends as a reset.
 */
import http2 from "node:http2";
import type { Duplex } from "node:stream";
import type tls from "node:tls";
import type { SpiffeId } from "../../../ca/spiffe-id.ts";
import type { Clock, TimerHandle } from "../../../core/clock.ts";
import { isWeftError, WeftError } from "../../../core/errors.ts";
import type { Logger } from "../../../core/log.ts";
import { noop } from "../../../core/noop.ts";
import { formatAddr } from "../../../discovery/types.ts";
import { CountedElsewhere } from "../../connection/close-reasons.ts";
import { peerRefusal, readResponse } from "../answer.ts";
import {
  type Connector,
  dialMtls,
  type MtlsConnectorOptions,
  type Upstream,
  type UpstreamTarget,
} from "../connector.ts";
import type { SessionCertWatch } from "./cert-watch.ts";
import { type KeepaliveSettings, SessionKeepalive } from "./keepalive.ts";

/** The ALPN of a pooled tunnel session. */
export const ALPN_H2 = "h2";
/** Per-stream and per-session receive windows (larger ones stalled parallel transfers when measured). */
export const STREAM_WINDOW = 1 << 20;
export const SESSION_WINDOW = 4 << 20;
/** HTTP/2 settings both ends of a tunnel session use. */
export const TUNNEL_H2_SETTINGS: http2.Settings = {
  initialWindowSize: STREAM_WINDOW,
  enablePush: false,
  maxConcurrentStreams: 10_000,
  // 64 KiB DATA frames instead of 16 KiB: a quarter of the frames (and JS callbacks) per byte.
  maxFrameSize: 65_536,
};

export interface PooledConnectorOptions extends MtlsConnectorOptions {
  readonly maxStreamsPerSession: number;
  readonly sessionIdleTimeoutMs: number;
  /** Deadline for opening a session (TCP connect plus handshake). */
  readonly connectTimeoutMs: number;
  /** PING a silent session; close it when the ACK does not come (see keepalive.ts). */
  readonly keepalive: KeepaliveSettings;
  readonly logger: Logger;
  /** Ends a session when its server's certificate expires or stops verifying (cert-watch.ts). */
  readonly certWatch?: SessionCertWatch;
}

interface PooledSession {
  readonly session: http2.ClientHttp2Session;
  /** The mutual-TLS socket the session runs over. */
  readonly sock: Duplex;
  readonly peer: SpiffeId;
  readonly context: tls.SecureContext;
  readonly keepalive: SessionKeepalive;
  /** Counts the session's death against its endpoint (given by the connection that opened it). */
  readonly reportLost: ((err: WeftError) => void) | undefined;
  active: number;
  retiring: boolean;
  idle: TimerHandle | undefined;
}

interface Opened {
  readonly entry: PooledSession;
  readonly connectMs: number;
  readonly handshakeMs: number;
  readonly resumed: boolean;
}

/** One session opening in progress, shared by every connection to the same peer that waits for it. */
interface Opening {
  readonly promise: Promise<Opened>;
  /** A waiter already carries this opening's failure (the opening's error, or its own deadline). */
  failureCounted: boolean;
}

/**
 * How long the socket of an ended session may take to flush. When an HTTP/2 session ends (closed after
 * its last stream, destroyed on a protocol error), Node waits for the session's write in progress and
 * then for the socket's queued writes before it closes the socket: with a peer that reads nothing
 * (stalled, or hostile) that wait is forever, and the socket, its buffers and its tunnel slot leak
 * (found by the stall watchdog of tunnel-pooled-parallel.test.ts: both sidecars kept the session's TCP
 * connection open after stop(); pinned by pool-session-linger.test.ts).
 */
export const SESSION_LINGER_MS = 5_000;

/**
 * Tie the ends of `session` and the socket `sock` it runs over, on both ends of a tunnel session:
 * - The peer's FIN ends the session: its sidecar is gone (killed: the kernel closed its socket) or done
 *   and will send no more frames. The socket is half-open capable (it serves the per-connection path
 *   too), so HTTP/2 would not notice by itself and would take new streams on it (found by
 *   mesh-balancing: a killed pod failed 4 of 30 requests). Ended, its streams end as resets.
 * - Once the session is destroyed (which is how Node ends every session, gracefully closed or not), its
 *   socket gets `SESSION_LINGER_MS` to flush and is then destroyed. Not at once: the last frames of a
 *   finished stream may still be on their way out. A closed session whose last stream's frames cannot
 *   leave at all is never destroyed by Node; the keepalive (no PING ACK) ends that one.
 */
export function tieSessionToSocket(session: http2.Http2Session, sock: Duplex, clock: Clock): void {
  sock.once("end", () => session.destroy());
  const destroy = session.destroy;
  let armed = false;
  session.destroy = function (this: http2.Http2Session, ...args: unknown[]) {
    if (!armed && !sock.destroyed) {
      armed = true;
      const timer = clock.setTimeout(() => sock.destroy(), SESSION_LINGER_MS);
      sock.once("close", () => timer.cancel());
    }
    return (destroy as (...a: unknown[]) => void).apply(this, args);
  } as http2.Http2Session["destroy"];
}

/** Destroy a session and its socket now (Node's `destroy()` alone waits for the socket's writes). */
export function destroySession(session: http2.Http2Session, sock: Duplex): void {
  session.destroy();
  sock.destroy();
}

/** Upstream streams over pooled mutual-TLS HTTP/2 sessions; see the module comment. */
export class PooledConnector implements Connector {
  private readonly pools = new Map<string, PooledSession[]>();
  private readonly opening = new Map<string, Opening>();
  private closed = false;

  constructor(private readonly o: PooledConnectorOptions) {}

  async connect(target: UpstreamTarget, signal: AbortSignal): Promise<Upstream> {
    const ep = target.endpoint;
    const key = `${formatAddr(ep.address, ep.tunnelPort)}|${target.expectedIdentity}`;
    // Each round either takes a stream or waits for an opening; `signal` (the attempt's deadline) ends it.
    let mustOpen = false;
    for (;;) {
      let opened: Opened | undefined;
      let entry = mustOpen ? undefined : this.usable(key);
      if (!entry) {
        opened = await this.join(key, target, signal);
        // The other waiters of that opening may have filled the session: never exceed the limit, share
        // the next opening instead.
        if (opened.entry.active >= this.o.maxStreamsPerSession) continue;
        entry = opened.entry;
      }
      let stream: http2.ClientHttp2Stream;
      try {
        stream = this.request(entry, target);
      } catch (err) {
        // A pooled session that died under us (GOAWAY, socket gone) is not the endpoint's fault: one
        // fresh session is tried before the attempt counts as failed.
        if (opened) throw err;
        mustOpen = true;
        continue;
      }
      const where = formatAddr(ep.address, ep.tunnelPort);
      return {
        answer: async (answerSignal) => {
          const refused = await readResponse(stream, where, answerSignal);
          if (refused) throw peerRefusal(refused, where);
        },
        side: {
          stream,
          reset: () => resetStream(stream),
          resetByPeer: () => streamWasReset(stream),
        },
        peer: entry.peer,
        connectMs: opened?.connectMs ?? 0,
        handshakeMs: opened?.handshakeMs,
        resumed: opened?.resumed ?? false,
        tunnel: true,
      };
    }
  }

  /** Close every session now (sidecar shutdown); their streams end as resets. */
  close(): void {
    this.closed = true;
    for (const list of this.pools.values()) for (const e of list) destroySession(e.session, e.sock);
    this.pools.clear();
  }

  private usable(key: string): PooledSession | undefined {
    const list = this.pools.get(key);
    if (!list) return undefined;
    let current: tls.SecureContext | undefined;
    try {
      current = this.o.tls.context();
    } catch {
      current = undefined;
    }
    for (const e of list) {
      if (!e.retiring && e.context !== current) this.retire(e);
      if (e.retiring || e.session.closed || e.session.destroyed || e.keepalive.suspect) continue;
      if (e.active < this.o.maxStreamsPerSession) return e;
    }
    return undefined;
  }

  /** Wait on the opening in progress for `key` (or start one), within `signal`. */
  private async join(key: string, target: UpstreamTarget, signal: AbortSignal): Promise<Opened> {
    let opening = this.opening.get(key);
    if (!opening) {
      const promise = this.open(key, target).finally(() => this.opening.delete(key));
      // Waiters may all have gone (aborted) by the time it fails: never an unhandled rejection.
      promise.catch(noop);
      opening = { promise, failureCounted: false };
      this.opening.set(key, opening);
    }
    try {
      return await raceAbort(opening.promise, signal);
    } catch (err) {
      throw countOnce(opening, err, formatAddr(target.endpoint.address, target.endpoint.tunnelPort));
    }
  }

  private async open(key: string, target: UpstreamTarget): Promise<Opened> {
    if (this.closed) throw new WeftError("E_CONNECT", "the sidecar is stopping", { reason: "aborted" });
    const ctl = new AbortController();
    const timer = this.o.clock.setTimeout(
      () => ctl.abort(new WeftError("E_TIMEOUT", "session connect deadline")),
      this.o.connectTimeoutMs,
    );
    let v: Awaited<ReturnType<typeof dialMtls>>;
    try {
      v = await dialMtls(this.o, target, ctl.signal, [ALPN_H2]);
    } finally {
      timer.cancel();
    }
    if (this.closed) {
      // close() ran while we dialled: nobody would ever close this session.
      v.sock.destroy();
      throw new WeftError("E_CONNECT", "the sidecar is stopping", { reason: "aborted" });
    }
    const session = http2.connect(
      `https://${formatAddr(target.endpoint.address, target.endpoint.tunnelPort)}`,
      {
        createConnection: () => v.sock,
        settings: TUNNEL_H2_SETTINGS,
      },
    );
    session.on("error", noop);
    session.once("connect", () => session.setLocalWindowSize(SESSION_WINDOW));
    const where = formatAddr(target.endpoint.address, target.endpoint.tunnelPort);
    const keepalive = new SessionKeepalive(session, v.raw, this.o.clock, this.o.keepalive, (err) => {
      // The peer stopped answering: no new streams, the live ones end as resets, and the endpoint is
      // charged one failure.
      entry.retiring = true;
      this.o.metrics.pooledSessionKeepaliveTimeouts.inc({ direction: "outbound" });
      this.o.logger.warn(
        { peer: where, peer_identity: v.peer.toString(), streams: entry.active, reason: err.reason },
        "pooled session stopped answering PING; closing it",
      );
      entry.reportLost?.(err);
      destroySession(session, v.sock);
    });
    tieSessionToSocket(session, v.sock, this.o.clock);
    const entry: PooledSession = {
      session,
      sock: v.sock,
      peer: v.peer,
      context: v.context,
      keepalive,
      reportLost: target.reportLost,
      active: 0,
      retiring: false,
      idle: undefined,
    };
    keepalive.start();
    this.o.certWatch?.watch(session, v.peer, v.peerNotAfter, v.proof, () => this.retire(entry));
    session.once("goaway", () => {
      entry.retiring = true;
    });
    session.once("close", () => {
      entry.idle?.cancel();
      this.o.metrics.upstreamPooledSessions.dec();
      const list = this.pools.get(key);
      if (!list) return;
      const rest = list.filter((e) => e !== entry);
      if (rest.length > 0) this.pools.set(key, rest);
      else this.pools.delete(key);
    });
    // Idle from birth: a session whose only waiter gave up must not live until it is reused.
    this.armIdle(entry);
    const list = this.pools.get(key) ?? [];
    list.push(entry);
    this.pools.set(key, list);
    this.o.metrics.upstreamPooledSessions.inc();
    this.o.metrics.upstreamPooledSessionsOpened.inc();
    return { entry, connectMs: v.connectMs, handshakeMs: v.handshakeMs, resumed: v.resumed };
  }

  private request(entry: PooledSession, target: UpstreamTarget): http2.ClientHttp2Stream {
    const ep = target.endpoint;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = entry.session.request(
        { ":method": "CONNECT", ":authority": formatAddr(ep.address, ep.tunnelPort) },
        { endStream: false },
      );
    } catch (err) {
      // The session died between the check and the request (GOAWAY, socket gone).
      this.retire(entry);
      throw new WeftError(
        "E_CONNECT",
        `the tunnel session to ${formatAddr(ep.address, ep.tunnelPort)} is gone`,
        {
          reason: "connect_failed",
          cause: err,
        },
      );
    }
    stream.on("error", noop);
    entry.active++;
    entry.idle?.cancel();
    entry.idle = undefined;
    stream.once("close", () => {
      entry.active--;
      if (entry.active > 0) return;
      if (entry.retiring) {
        entry.session.close();
        return;
      }
      this.armIdle(entry);
    });
    return stream;
  }

  private armIdle(entry: PooledSession): void {
    entry.idle?.cancel();
    entry.idle = this.o.clock.setTimeout(() => {
      if (entry.active === 0) this.retire(entry);
    }, this.o.sessionIdleTimeoutMs);
  }

  /** No new streams; the session closes once its live streams are done. */
  private retire(entry: PooledSession): void {
    entry.retiring = true;
    if (entry.active === 0 && !entry.session.closed) entry.session.close();
  }
}

/**
 * Carry a reset over a tunnel stream: RST_STREAM alone. Not `close(CONNECT_ERROR)`: Node sends
 * END_STREAM before that RST_STREAM, so the peer would see a clean end first. `destroy(err)` sends the
 * RST_STREAM (code INTERNAL_ERROR) with nothing before it; both sidecars read any non-zero code as a reset.
 */
export function resetStream(stream: http2.Http2Stream): void {
  if (!stream.destroyed)
    stream.destroy(new WeftError("E_CONNECT", "the tunnel stream was reset", { reason: "reset" }));
}

/**
 * Whether the peer ended `stream` with RST_STREAM. Node ends the readable side ('end') before it reports
 * the reset as an error, so the splice asks at 'end' (as it asks the kernel for TCP sockets).
 */
export function streamWasReset(stream: http2.Http2Stream): boolean {
  return (stream.rstCode ?? 0) !== http2.constants.NGHTTP2_NO_ERROR;
}

/** `p`, or a rejection as soon as `signal` aborts (the shared opening goes on for the others). */
function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

/**
 * One failed opening is one failure of the endpoint, however many connections waited on it: the first
 * waiter to fail carries the error as it is (and counts it), the others get it as `CountedElsewhere`.
 * A waiter that gave up (`aborted`: its client went away) counts nothing and leaves it to the others.
 */
function countOnce(opening: Opening, err: unknown, where: string): unknown {
  if (!isWeftError(err) || err.reason === "aborted") return err;
  if (!opening.failureCounted) {
    opening.failureCounted = true;
    return err;
  }
  return new CountedElsewhere(
    err.code,
    `the tunnel session opening to ${where} that this connection waited on failed (${err.reason}); another connection counted it`,
    { reason: err.reason, cause: err },
  );
}

function abortReason(signal: AbortSignal): WeftError {
  const r = signal.reason as unknown;
  if (r instanceof WeftError && r.code === "E_TIMEOUT") {
    return new WeftError("E_TIMEOUT", "no tunnel session before the deadline", {
      reason: "connect_timeout",
      cause: r,
    });
  }
  return new WeftError("E_CONNECT", "tunnel session abandoned", { reason: "aborted", cause: r });
}
