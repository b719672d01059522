/**
 * Limits per peer identity on the tunnel port, across all of that identity's sessions and tunnels, so
 * that one peer (holding a valid certificate) cannot take what others need by opening more sessions:
 *
 * - `streams`: tunnel connections open at once (pooled CONNECT streams and per-connection tunnels);
 * - `sessions`: pooled HTTP/2 sessions open at once;
 * - `pendingHeaders`: streams still waiting for their PROXY header (each holds buffers until its
 *   `timeouts.proxyHeader` deadline): a small number, so header-less streams cannot pile up; a peer that
 *   goes on opening them past the limit (as many again within a second) gets all its sessions closed;
 * - `resetsPerSecond`: streams the peer resets (RST_STREAM, or HEADERS and RST_STREAM in one write) per
 *   second; past it every pooled session of that peer is closed (tunnel.ts `calmer`: gracefully the
 *   first time, so the streams already running finish; at once if the peer trips a limit again):
 *   nghttp2's own rapid-reset guard counts per session, so opening sessions got around it.
 *
 * A limit that bites refuses only what is over it (REFUSED_STREAM, or the refusal of the answer step),
 * is counted in `weft_peer_limit_hits_total{limit}` and logged with the peer (at most once per peer and
 * limit every `LOG_EVERY_MS`). State is kept only for peers with something open, so it is bounded by
 * what the other limits allow. Peers are the `SpiffeId`s they proved, kept by their canonical string.
 */
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";

export interface PeerLimitSettings {
  readonly streams: number;
  readonly sessions: number;
  readonly pendingHeaders: number;
  readonly resetsPerSecond: number;
}

export type PeerLimit = "streams" | "sessions" | "pending_headers" | "reset_rate";

const LOG_EVERY_MS = 10_000;
/** Quiet time after the last limit hit before memory is given back. */
const GIVE_BACK_AFTER_MS = 1_000;
const RESET_WINDOW_MS = 1_000;

interface PeerState {
  streams: number;
  pending: number;
  /** How to close each open session, told which limit tripped. */
  readonly sessions: Set<(limit: PeerLimit) => void>;
  windowStart: number;
  resets: number;
  floodWindowStart: number;
  refusedPending: number;
  readonly logged: Map<PeerLimit, number>;
}

export class PeerLimits {
  /** By the peer's SPIFFE ID as a string (`SpiffeId.toString()`). */
  private readonly peers = new Map<string, PeerState>();

  constructor(
    private readonly o: {
      /** Read on every decision, so a config reload applies to new streams. */
      readonly settings: () => PeerLimitSettings;
      readonly clock: Clock;
      readonly metrics: WeftMetrics;
      readonly logger: Logger;
      /**
       * Give memory back to the kernel (malloc_trim): called once, `GIVE_BACK_AFTER_MS` after the last
       * time a limit bit, so what a burst of refused or reset streams took does not stay with the process.
       */
      readonly giveBack?: () => void;
    },
  ) {}

  private giveBackTimer: TimerHandle | undefined;

  /** Peers with state now (tests: it must fall back to zero). */
  get tracked(): number {
    return this.peers.size;
  }

  /**
   * A pooled session of `peer` opens; `close` ends it when the peer's reset rate trips. Returns the
   * release to call when the session closes, or undefined (counted, logged) when `peer` is at its limit.
   */
  openSession(id: SpiffeId, close: (limit: PeerLimit) => void): (() => void) | undefined {
    const peer = id.toString();
    const s = this.state(peer);
    if (s.sessions.size >= this.o.settings().sessions) {
      this.hit(peer, s, "sessions");
      this.forget(peer, s);
      return undefined;
    }
    s.sessions.add(close);
    return once(() => {
      s.sessions.delete(close);
      this.forget(peer, s);
    });
  }

  /** A tunnel stream (or per-connection tunnel) of `peer` opens; release when it closes, or undefined. */
  openStream(id: SpiffeId): (() => void) | undefined {
    const peer = id.toString();
    const s = this.state(peer);
    if (s.streams >= this.o.settings().streams) {
      this.hit(peer, s, "streams");
      this.forget(peer, s);
      return undefined;
    }
    s.streams++;
    return once(() => {
      s.streams--;
      this.forget(peer, s);
    });
  }

  /**
   * A stream of `peer` starts waiting for its PROXY header; release once it has one (or ended). Over the
   * limit the stream is refused (a client sidecar retries it); a peer that goes on past the limit by as
   * many again within a second is flooding, and all its pooled sessions are closed.
   */
  awaitHeader(id: SpiffeId): (() => void) | undefined {
    const peer = id.toString();
    const s = this.state(peer);
    const limit = this.o.settings().pendingHeaders;
    if (s.pending >= limit) {
      this.hit(peer, s, "pending_headers");
      const now = this.o.clock.monotonic();
      if (now - s.floodWindowStart >= RESET_WINDOW_MS) {
        s.floodWindowStart = now;
        s.refusedPending = 0;
      }
      s.refusedPending++;
      if (s.refusedPending === limit + 1) for (const close of [...s.sessions]) close("pending_headers");
      this.forget(peer, s);
      return undefined;
    }
    s.pending++;
    return once(() => {
      s.pending--;
      this.forget(peer, s);
    });
  }

  /** `peer` reset a stream. Past `resetsPerSecond`, all of its pooled sessions are closed. */
  peerReset(id: SpiffeId): void {
    const peer = id.toString();
    const s = this.peers.get(peer);
    if (!s) return;
    const now = this.o.clock.monotonic();
    if (now - s.windowStart >= RESET_WINDOW_MS) {
      s.windowStart = now;
      s.resets = 0;
    }
    s.resets++;
    if (s.resets !== this.o.settings().resetsPerSecond + 1) return;
    this.hit(peer, s, "reset_rate");
    for (const close of [...s.sessions]) close("reset_rate");
  }

  private state(peer: string): PeerState {
    let s = this.peers.get(peer);
    if (!s) {
      s = {
        streams: 0,
        pending: 0,
        sessions: new Set(),
        windowStart: this.o.clock.monotonic(),
        resets: 0,
        floodWindowStart: this.o.clock.monotonic(),
        refusedPending: 0,
        logged: new Map(),
      };
      this.peers.set(peer, s);
    }
    return s;
  }

  private forget(peer: string, s: PeerState): void {
    if (s.streams === 0 && s.pending === 0 && s.sessions.size === 0) this.peers.delete(peer);
  }

  private hit(peer: string, s: PeerState, limit: PeerLimit): void {
    this.o.metrics.peerLimitHits.inc({ limit });
    if (this.o.giveBack) {
      const giveBack = this.o.giveBack;
      if (this.giveBackTimer) this.giveBackTimer.refresh();
      else {
        this.giveBackTimer = this.o.clock.setTimeout(() => {
          this.giveBackTimer = undefined;
          giveBack();
        }, GIVE_BACK_AFTER_MS);
      }
    }
    const now = this.o.clock.monotonic();
    const last = s.logged.get(limit);
    if (last !== undefined && now - last < LOG_EVERY_MS) return;
    s.logged.set(limit, now);
    const settings = this.o.settings();
    const value =
      limit === "streams"
        ? settings.streams
        : limit === "sessions"
          ? settings.sessions
          : limit === "pending_headers"
            ? settings.pendingHeaders
            : settings.resetsPerSecond;
    this.o.logger.warn(
      { peer_identity: peer, limit, value },
      limit === "reset_rate"
        ? "peer resets streams faster than limits.perPeer.resetsPerSecond: its pooled sessions are closed"
        : `peer is at limits.perPeer.${limitKey(limit)}: refused`,
    );
  }
}

function limitKey(limit: PeerLimit): string {
  return limit === "pending_headers" ? "pendingHeaders" : limit;
}

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}
