/**
 * The record of one proxied connection: who (source, peer identity), where (service, endpoint,
 * destination), how far it got (phase) and how it ended (one reason from a closed list). The record is
 * finished exactly once, and finishing it is the only place that writes the connection's metrics and its
 * one access-log line. `ConnectionTracker` keeps the live records of a sidecar for drain and shutdown.
 */
import { SpiffeId } from "../../ca/spiffe-id.ts";
import type { Clock } from "../../core/clock.ts";
import type { Logger } from "../../core/log.ts";
import type { Direction, WeftMetrics } from "../../core/metrics.ts";
import { formatAddr } from "../../discovery/types.ts";
import type { ClientAddr, OrigDstAddr } from "../addresses.ts";
import type { SocketErrors } from "../capture/sockopt.ts";
import { type CloseReason, spliceReason } from "./close-reasons.ts";
import { type ByteSink, Splice, type SpliceSide } from "./splice.ts";

export { CLOSE_REASONS, type CloseReason, spliceReason } from "./close-reasons.ts";

/**
 * The other end of a connection as its record knows it: the SPIFFE ID it proved; on an outbound
 * connection before the handshake, the identity its service must prove (as discovery names it); or
 * nobody (plaintext, or not known yet).
 */
export type Peer = SpiffeId | { readonly expected: string } | undefined;

/** The `peer_identity` metric label and log field of `peer`: the one place that writes `none`. */
export function peerLabel(peer: Peer): string {
  if (peer === undefined) return "none";
  return peer instanceof SpiffeId ? peer.toString() : peer.expected;
}

/** How far a connection got: useful in the access log of failed connections. */
export type Phase =
  | "accepted"
  | "routing"
  | "connecting"
  | "handshake"
  | "proxy_header"
  | "authorizing"
  | "streaming"
  | "done";

export interface ConnectionDeps {
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly accessLog: boolean;
  readonly tracker: ConnectionTracker;
  /** SO_ERROR at end of stream, so a reset that arrived with the last bytes is carried as a reset. */
  readonly socketErrors?: SocketErrors;
}

interface Cell {
  sent: number;
  received: number;
}

/** What a handler knows that every splice of its connections needs. */
export interface SpliceDeps {
  readonly clock: Clock;
  readonly timeouts: { readonly idle: number; readonly halfClose: number };
  readonly connection: ConnectionDeps;
}

/**
 * Start the splice of `rec`'s connection: bytes are counted on `rec`, and when both sides are closed
 * `rec` is finished with `forced()` if the owner forced the end, else with the splice's own reason
 * (after `beforeFinish`, e.g. releasing an endpoint lease).
 */
export function spliceConnection(
  rec: ConnectionRecord,
  down: SpliceSide,
  up: SpliceSide,
  o: SpliceDeps,
  forced: () => CloseReason | undefined,
  beforeFinish?: () => void,
): Splice {
  const splice = new Splice(down, up, {
    clock: o.clock,
    idleTimeoutMs: o.timeouts.idle,
    halfCloseTimeoutMs: o.timeouts.halfClose,
    socketErrors: o.connection.socketErrors,
    bytes: rec,
    onDone: (end, err) => {
      beforeFinish?.();
      rec.finish(forced() ?? spliceReason(end), err);
    },
  });
  rec.buffered = () => splice.buffered();
  return splice;
}

/** One connection's record; see the module comment. */
export class ConnectionRecord implements ByteSink {
  phase: Phase = "accepted";
  src: ClientAddr | undefined;
  dst: OrigDstAddr | undefined;
  service = "unknown";
  peer: Peer;
  endpoint = "";
  bytesReceived = 0;
  bytesSent = 0;
  handshakeMs: number | undefined;
  /** Whether the mTLS handshake resumed a TLS 1.3 session (undefined for plaintext). */
  tlsResumed: boolean | undefined;
  /** Serial of the certificate the peer presented (inbound), for audits and rotation checks. */
  peerSerial: string | undefined;
  connectMs: number | undefined;
  /** Set by the owner of the sockets; `abort(reason)` calls it (drain deadline, shutdown). */
  closer: ((reason: CloseReason) => void) | undefined;
  /** Set by the owner once bytes flow, so tests and debug views can read buffered bytes. */
  buffered: (() => number) | undefined;
  private readonly startedMono: number;
  private readonly startedAt: number;
  private opened = false;
  private finished = false;
  private cell: Cell | undefined;
  private reason: CloseReason | undefined;

  constructor(
    private readonly deps: ConnectionDeps,
    readonly id: string,
    readonly direction: Direction,
  ) {
    this.startedMono = deps.clock.monotonic();
    this.startedAt = deps.clock.now();
    deps.tracker.add(this);
  }

  /**
   * The service (and peer identity, when known) this connection belongs to: counts it as opened and
   * active under those labels. Called once the route or the peer is known; `finish` calls it otherwise.
   */
  open(service: string, peer?: Peer): void {
    if (this.opened || this.finished) return;
    this.opened = true;
    this.service = service;
    if (peer !== undefined) this.peer = peer;
    this.cell = undefined;
    const labels = { direction: this.direction, service: this.service };
    // peer_identity as on the closed counter, so the two join per peer: the verified client (inbound),
    // the identity the service must prove (outbound), none (plaintext).
    this.deps.metrics.connectionsOpened.inc({ ...labels, peer_identity: peerLabel(this.peer) });
    this.deps.metrics.connectionsActive.inc(labels);
  }

  /**
   * The peer is known (after the handshake; undefined: plaintext); byte counts from now on go to its
   * metrics cell.
   */
  setPeer(peer: SpiffeId | undefined): void {
    this.peer = peer;
    this.cell = undefined;
  }

  addReceived(n: number): void {
    this.bytesReceived += n;
    if (this.cell) this.cell.received += n;
    else this.bindCell().received += n;
  }

  addSent(n: number): void {
    this.bytesSent += n;
    if (this.cell) this.cell.sent += n;
    else this.bindCell().sent += n;
  }

  private bindCell(): Cell {
    this.cell = this.deps.metrics.bytes(this.direction, this.service, peerLabel(this.peer));
    return this.cell;
  }

  /** Milliseconds since the connection was accepted. */
  elapsedMs(): number {
    return this.deps.clock.monotonic() - this.startedMono;
  }

  get isFinished(): boolean {
    return this.finished;
  }

  /** The reason it finished with, once finished. */
  get closeReason(): CloseReason | undefined {
    return this.reason;
  }

  /** Ask the owner to close the connection now (drain deadline, shutdown). */
  abort(reason: CloseReason): void {
    if (this.finished) return;
    if (this.closer) this.closer(reason);
    else this.finish(reason);
  }

  /**
   * This record turned out not to be a connection (a TLS connection that carries a pooled tunnel session,
   * whose streams get records of their own): forget it without metrics or a log line. No-op once opened.
   */
  discard(): void {
    if (this.finished || this.opened) return;
    this.finished = true;
    this.phase = "done";
    this.closer = undefined;
    this.deps.tracker.delete(this);
  }

  /**
   * The connection is over: metrics and one access-log line, exactly once (later calls are ignored).
   * `err` is logged (routine socket errors are not errors for a proxy; only their reason counts).
   */
  finish(reason: CloseReason, err?: unknown): void {
    if (this.finished) return;
    if (!this.opened) this.open(this.service);
    this.finished = true;
    this.reason = reason;
    this.phase = "done";
    this.closer = undefined;
    this.buffered = undefined;
    const m = this.deps.metrics;
    const durationS = this.elapsedMs() / 1000;
    const peer = peerLabel(this.peer);
    m.connectionsActive.dec({ direction: this.direction, service: this.service });
    m.connectionsClosed.inc({
      direction: this.direction,
      service: this.service,
      peer_identity: peer,
      reason,
    });
    m.connectionDuration.observe({ direction: this.direction, service: this.service }, durationS);
    this.deps.tracker.delete(this);
    if (reason !== "closed") {
      this.deps.tracker.remember({
        at: new Date(this.deps.clock.now()).toISOString(),
        direction: this.direction,
        src: this.src ? formatAddr(this.src.address, this.src.port) : undefined,
        dst: this.dst ? formatAddr(this.dst.address, this.dst.port) : undefined,
        service: this.service,
        peerIdentity: peer,
        endpoint: this.endpoint || undefined,
        reason,
        error: err === undefined ? undefined : err instanceof Error ? err.message : String(err),
      });
    }
    if (!this.deps.accessLog) return;
    const fields: Record<string, unknown> = {
      conn_id: this.id,
      direction: this.direction,
      src: this.src ? formatAddr(this.src.address, this.src.port) : undefined,
      dst: this.dst ? formatAddr(this.dst.address, this.dst.port) : undefined,
      service: this.service,
      peer_identity: peer,
      endpoint: this.endpoint || undefined,
      bytes_received: this.bytesReceived,
      bytes_sent: this.bytesSent,
      duration_ms: Math.round(durationS * 1000 * 10) / 10,
      started_at: new Date(this.startedAt).toISOString(),
      reason,
    };
    if (this.handshakeMs !== undefined) fields.handshake_ms = Math.round(this.handshakeMs * 10) / 10;
    if (this.tlsResumed !== undefined) fields.tls_resumed = this.tlsResumed;
    if (this.peerSerial !== undefined) fields.peer_serial = this.peerSerial;
    if (this.connectMs !== undefined) fields.connect_ms = Math.round(this.connectMs * 10) / 10;
    if (err !== undefined) fields.err = err instanceof Error ? err.message : String(err);
    this.deps.logger.info(fields, "connection closed");
  }
}

/**
 * The one handler that every per-connection and per-stream asynchronous path of the data plane ends in
 * (a promise's `.catch`, or a `try` around an event handler): a throw that nothing else caught is a bug
 * in Weft, and a bug costs that one connection, never the process and its other connections. It resets
 * the connection (`reset`), finishes its record with `internal_error` (or, with no record yet or one
 * already finished, counts the reason directly), and logs the error with its stack once, at error level.
 */
export function containFailure(
  deps: ConnectionDeps,
  err: unknown,
  where: {
    readonly rec?: ConnectionRecord;
    readonly reset: () => void;
    /** For the count when there is no live record: the listener's direction and what is known. */
    readonly direction?: Direction;
    readonly peer?: SpiffeId;
    readonly component: string;
  },
): void {
  try {
    where.reset();
  } catch {
    // Resetting a socket that is already gone may throw; the connection is over either way.
  }
  const rec = where.rec;
  const stack = err instanceof Error ? (err.stack ?? err.message) : String(err);
  deps.logger.error(
    {
      conn_id: rec?.id,
      component: where.component,
      peer_identity: rec ? peerLabel(rec.peer) : where.peer?.toString(),
      phase: rec?.phase,
      err: stack,
    },
    "internal error: the connection was reset (a bug in Weft; the sidecar carries on)",
  );
  if (rec && !rec.isFinished) {
    rec.finish("internal_error", err);
    return;
  }
  countRefused(deps, {
    direction: rec?.direction ?? where.direction ?? "inbound",
    service: rec?.service,
    peer: rec ? rec.peer : where.peer,
    reason: "internal_error",
  });
}

/**
 * A connection that ended before it had a record (an accept over the listener's limit, a pooled stream
 * refused by a limit, a failure with no live record): counted on `weft_tcp_connections_closed_total`
 * as a record would count it, the direction the handler says, with no access-log line. With
 * `ConnectionRecord.finish`, the only writer of that counter.
 */
export function countRefused(
  deps: Pick<ConnectionDeps, "metrics">,
  what: {
    readonly direction: Direction;
    readonly reason: CloseReason;
    readonly service?: string;
    readonly peer?: Peer;
  },
): void {
  deps.metrics.connectionsClosed.inc({
    direction: what.direction,
    service: what.service ?? "unknown",
    peer_identity: peerLabel(what.peer),
    reason: what.reason,
  });
}

/** A connection that did not end normally, as `weft explain` and `/explain` show it. */
export interface EndedConnection {
  readonly at: string;
  readonly direction: string;
  readonly src: string | undefined;
  readonly dst: string | undefined;
  readonly service: string;
  readonly peerIdentity: string;
  readonly endpoint: string | undefined;
  readonly reason: CloseReason;
  readonly error: string | undefined;
}

/** How many recent abnormal endings a sidecar keeps for `/explain` (oldest dropped first). */
export const RECENT_ENDINGS = 100;

/**
 * The live connections of one sidecar: for drain (wait until none) and shutdown (abort the rest); and the
 * last `RECENT_ENDINGS` connections that ended with a reason other than `closed`, for `/explain`.
 */
export class ConnectionTracker {
  private readonly live = new Set<ConnectionRecord>();
  private readonly ended: EndedConnection[] = [];
  private waiters: Array<() => void> = [];
  private seq = 0;

  /** A short unique connection id for logs (process-local sequence). */
  nextId(): string {
    this.seq++;
    return this.seq.toString(36);
  }

  /** Keep a connection that ended abnormally (bounded: the oldest goes). */
  remember(e: EndedConnection): void {
    if (this.ended.length >= RECENT_ENDINGS) this.ended.shift();
    this.ended.push(e);
  }

  /** Recent abnormal endings, newest first, that match `filter`. */
  recent(filter: (e: EndedConnection) => boolean = () => true, limit = 10): EndedConnection[] {
    const out: EndedConnection[] = [];
    for (let i = this.ended.length - 1; i >= 0 && out.length < limit; i--) {
      if (filter(this.ended[i]!)) out.push(this.ended[i]!);
    }
    return out;
  }

  add(rec: ConnectionRecord): void {
    this.live.add(rec);
  }

  delete(rec: ConnectionRecord): void {
    this.live.delete(rec);
    if (this.live.size === 0 && this.waiters.length > 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const fn of w) fn();
    }
  }

  get size(): number {
    return this.live.size;
  }

  /** Live records (a copy). */
  list(): ConnectionRecord[] {
    return [...this.live];
  }

  /** Resolves true once no connection is live, or false when `deadlineMs` passes first. */
  waitIdle(clock: Clock, deadlineMs: number): Promise<boolean> {
    if (this.live.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = clock.setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve(false);
      }, deadlineMs);
      const done = (): void => {
        timer.cancel();
        resolve(true);
      };
      this.waiters.push(done);
    });
  }

  /** Abort every live connection with `reason`. */
  abortAll(reason: CloseReason): void {
    for (const rec of [...this.live]) rec.abort(reason);
  }
}
