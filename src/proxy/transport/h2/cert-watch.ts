/**
 * Sessions follow certificates. A pooled HTTP/2 session verifies its peer once, in its handshake, and
 * may then carry streams for hours; without this watch a peer whose certificate expired, or whose CA
 * was removed from the trust bundle, would keep opening streams on a session it opened before.
 *
 * Each watched session (both ends: sessions the tunnel port accepted, sessions the pool opened) is
 * ended when:
 * - the peer's leaf certificate expires (a timer at its notAfter, on the injected clock), or
 * - `recheck()` finds that the peer's chain no longer verifies against the current trust bundle. The
 *   sidecar calls it on `TunnelTls.onTrustChange` (the trust bundle or the revocation list changed);
 *   `Sidecar.recheckPeers()` exposes the same call to anything else that changes what verifies.
 *
 * Ending is graceful: GOAWAY, so the streams already running finish and the peer opens a fresh
 * session, with a fresh handshake, for new ones. Counted in `weft_pooled_sessions_ended_total{direction,
 * reason}` (`peer_cert_expired`, `peer_revoked`: its serial is on the CA's revocation list,
 * `peer_untrusted`) and logged with the peer.
 */
import type http2 from "node:http2";
import type { SpiffeId } from "../../../ca/spiffe-id.ts";
import type { Clock, TimerHandle } from "../../../core/clock.ts";
import { errorMessage, isWeftError } from "../../../core/errors.ts";
import type { Logger } from "../../../core/log.ts";
import type { WeftMetrics } from "../../../core/metrics.ts";
import type { PeerProof, TunnelTls } from "../tls-context.ts";

export type SessionEndReason = "peer_cert_expired" | "peer_revoked" | "peer_untrusted";

/** The longest delay one timer may have (Node's setTimeout limit); longer waits re-arm. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Watched {
  readonly peer: SpiffeId;
  /** The verified chain; undefined for a client session resumed without one (re-verified by ending it). */
  readonly proof: PeerProof | undefined;
  readonly notAfter: number;
  readonly end: (reason: SessionEndReason) => void;
  timer: TimerHandle | undefined;
}

export class SessionCertWatch {
  private readonly watched = new Map<http2.Http2Session, Watched>();

  constructor(
    private readonly o: {
      readonly tls: TunnelTls;
      readonly clock: Clock;
      readonly logger: Logger;
      readonly metrics: WeftMetrics;
      readonly direction: "inbound" | "outbound";
    },
  ) {}

  /**
   * Watch `session`, whose peer proved `peer` (valid until `notAfter`, chain in `proof` when known);
   * `end` is how this end closes it gracefully. Forgotten when the session closes.
   */
  watch(
    session: http2.Http2Session,
    peer: SpiffeId,
    notAfter: number,
    proof: PeerProof | undefined,
    end: (reason: SessionEndReason) => void,
  ): void {
    const w: Watched = { peer, proof, notAfter, end, timer: undefined };
    this.watched.set(session, w);
    session.once("close", () => {
      w.timer?.cancel();
      this.watched.delete(session);
    });
    this.arm(session, w);
  }

  /** Sessions watched now (tests, debug). */
  get size(): number {
    return this.watched.size;
  }

  /**
   * Verify every watched session's peer again against the current bundle; end those that fail (a
   * session without a known chain is ended too: its peer proves itself again in a fresh handshake).
   * Returns how many were ended.
   */
  recheck(why: string): number {
    let ended = 0;
    for (const [session, w] of [...this.watched]) {
      if (!w.proof) {
        this.finish(session, w, "peer_untrusted", `${why}; the session's chain is not known`);
        ended++;
        continue;
      }
      try {
        this.o.tls.recheck(w.proof);
      } catch (err) {
        const why = isWeftError(err) ? err.reason : "";
        const reason =
          why === "expired" ? "peer_cert_expired" : why === "revoked" ? "peer_revoked" : "peer_untrusted";
        this.finish(session, w, reason, `${why}: ${errorMessage(err)}`);
        ended++;
      }
    }
    return ended;
  }

  private arm(session: http2.Http2Session, w: Watched): void {
    const left = w.notAfter - this.o.clock.now();
    if (left <= 0) {
      this.finish(session, w, "peer_cert_expired", "the peer's certificate expired");
      return;
    }
    w.timer = this.o.clock.setTimeout(() => this.arm(session, w), Math.min(left, MAX_TIMER_MS));
  }

  private finish(session: http2.Http2Session, w: Watched, reason: SessionEndReason, detail: string): void {
    w.timer?.cancel();
    this.watched.delete(session);
    this.o.metrics.pooledSessionsEnded.inc({ direction: this.o.direction, reason });
    this.o.logger.warn(
      { peer_identity: w.peer.toString(), reason, detail, direction: this.o.direction },
      "pooled session ended: its peer's certificate no longer holds (running streams finish)",
    );
    w.end(reason);
  }
}
