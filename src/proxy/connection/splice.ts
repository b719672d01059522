/**
 * The byte pump between the two sockets of one proxied connection: the downstream client (or the tunnel
 * peer) and the upstream (the tunnel, or the local app). It owns TCP semantics through the proxy:
 *
 * - Backpressure is exact and bounded: a direction pauses its source as soon as the destination holds
 *   `MAX_BUFFERED` (256 KiB) not yet taken by the kernel, and resumes on `'drain'`. So a slow
 *   reader never makes the proxy buffer more than that (plus one read) per direction. Pausing on
 *   `write() === false` instead would pause after every 16 KiB TLS record (a stream's default
 *   high-water mark), one event-loop turn per record (docs/benchmarks.md, earlier fixes).
 * - Writes are batched per event-loop turn when a turn brings many chunks: a full chunk (8 KiB or more:
 *   a TLS record's plaintext, an HTTP/2 slice of one, a big socket read) corks the destination until
 *   the turn ends (`setImmediate`), so the records of one read go out in one `writev`. A short chunk while not corked is written at once and
 *   schedules nothing, so a request or a reply costs no extra loop turn (see docs/benchmarks.md).
 * - Half-close is carried: `'end'` on one side becomes `end()` on the other (FIN on TCP, close_notify
 *   then FIN on TLS). Both sockets are created with `allowHalfOpen: true`, so the other direction keeps
 *   flowing until it ends too, or until the half-close timeout reaps it. The timer runs until both
 *   sources are closed: for a framed tunnel that is its transport's end, not its end frame.
 * - A reset is carried as a reset: when one side fails (ECONNRESET and friends) the other side's TCP
 *   socket is closed with `resetAndDestroy()` (SO_LINGER 0), so the far peer sees RST, not FIN. An
 *   `'end'` is checked against the kernel first (`wasReset`, SO_ERROR and TCP state): libuv reports EOF
 *   when a peer's last bytes and its RST arrive in one poll, and forwarding that as a FIN would make a
 *   truncated transfer look complete.
 * - A truncated tunnel is carried as a reset: a `weft/3` tunnel side (`framed`, see frames.ts) says its
 *   app's FIN with an end frame, which is forwarded as the FIN at once; a tunnel that ends without one
 *   (a killed peer sidecar: its kernel sends a FIN for the process's sockets) resets the other side
 *   (`peer_truncated`), and so does a byte after the end frame (`peer_protocol_error`). App bytes go
 *   into the tunnel as frames, header and chunk in one write.
 * - An idle timer ends connections with no bytes either way; it is re-armed once per turn, not per chunk.
 * - Byte counts are plain numbers, added to the connection's `ByteSink`.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import { noop } from "../../core/noop.ts";
import { NO_SOCKET_ERRORS, type SocketErrors } from "../capture/sockopt.ts";
import { END_FRAME, FrameReader, writeFramed } from "./frames.ts";

/**
 * One side of a splice: the stream that carries bytes and the TCP socket under it (the same for plain
 * TCP). A stream of a pooled HTTP/2 tunnel has no socket of its own: it brings its own `reset`
 * (RST_STREAM, see pool.ts) and `resetByPeer` instead.
 */
export interface SpliceSide {
  readonly stream: Duplex;
  /** The kernel socket, reset with SO_LINGER 0 to carry a reset. For TLS, the socket TLS runs over. */
  readonly raw?: Socket;
  /** How to carry a reset when there is no socket of this side's own. */
  readonly reset?: () => void;
  /** Without a socket: whether the peer ended this stream with a reset (an HTTP/2 RST_STREAM). */
  readonly resetByPeer?: () => boolean;
  /** A `weft/3` tunnel: its bytes are frames, and it must end with an end frame (frames.ts). */
  readonly framed?: boolean;
}

/** Why a splice ended; the connection maps these onto its closed set of reasons. */
export type SpliceEnd =
  | "closed"
  | "idle_timeout"
  | "half_close_timeout"
  | "downstream_reset"
  | "upstream_reset"
  | "downstream_error"
  | "upstream_error"
  /** A framed tunnel ended without its end frame (frames.ts). */
  | "peer_truncated"
  /** A framed tunnel sent bytes after its end frame. */
  | "peer_protocol_error"
  | "aborted";

/** Where the splice adds byte counts (the connection record). */
export interface ByteSink {
  /** Bytes read from downstream and forwarded upstream. */
  addReceived(n: number): void;
  /** Bytes read from upstream and forwarded downstream. */
  addSent(n: number): void;
}

export interface SpliceOptions {
  readonly clock: Clock;
  /** No bytes either way for this long ends the connection (0 = never). */
  readonly idleTimeoutMs: number;
  /** After the first half-close, the other direction may flow this long before both are closed. */
  readonly halfCloseTimeoutMs: number;
  readonly bytes: ByteSink;
  /** Asked at end of stream whether the kernel holds a reset for the socket (default: never). */
  readonly socketErrors?: SocketErrors;
  /** Called exactly once, after both sockets are closed, with why the splice ended and the first error. */
  readonly onDone: (end: SpliceEnd, err: Error | undefined) => void;
}

const MAX_BUFFERED = 256 * 1024;
/**
 * A chunk this big says more is coming in this turn. Node's TLS layer hands over one record's plaintext
 * (16 KiB) at a time, and an HTTP/2 stream a slice of a record (16 KiB less the 9-byte frame headers):
 * both must count as full, or each record becomes a write() of its own (docs/benchmarks.md, earlier
 * fixes on the data path).
 */
const FULL_CHUNK = 8 * 1024;

/** Error codes that mean "the peer reset": TCP's, and an HTTP/2 stream closed with an error code. */
const RESET_CODES = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED", "ETIMEDOUT", "ERR_HTTP2_STREAM_ERROR"]);

/** Close `side` so that its peer sees a TCP reset (falls back to destroy when the socket is gone). */
export function resetSide(side: SpliceSide): void {
  const raw = side.raw;
  if (!raw) {
    if (side.reset) side.reset();
    else side.stream.destroy();
    return;
  }
  // While our FIN is still queued (end() called, shutdown not done) libuv refuses SO_LINGER 0 (EINVAL)
  // and Node would then never close the handle: plain destroy is all that is left.
  const shuttingDown = raw.writableEnded && !raw.writableFinished;
  if (!raw.destroyed && !shuttingDown && (raw as { _handle?: unknown })._handle) {
    try {
      raw.resetAndDestroy();
    } catch {
      raw.destroy();
    }
  } else {
    raw.destroy();
  }
  if (side.stream !== raw) side.stream.destroy();
}

/** One direction: src -> dst. */
class Pump {
  /** The source's FIN was forwarded (for a framed tunnel: its end frame). */
  ended = false;
  /**
   * The source itself is finished: its transport ended cleanly. Same as `ended` for a plain side; a
   * framed tunnel forwards its FIN at the end frame but may keep its transport open after it.
   */
  sourceClosed = false;
  /** 'end' was emitted; `ended` once it is known to be a FIN and forwarded. */
  eofSeen = false;
  private corked = false;
  private waiting = false;
  private readonly src: Duplex;
  private readonly dst: Duplex;
  /** Never below the destination's high-water mark: crossing it must have made write() return false. */
  private readonly limit: number;
  /** The source is a framed tunnel: its frames are read here. */
  private readonly frames: FrameReader | undefined;
  /** The destination is a framed tunnel: chunks go out as frames. */
  private readonly framedOut: boolean;

  constructor(
    private readonly owner: Splice,
    private readonly srcSide: SpliceSide,
    dstSide: SpliceSide,
    private readonly upload: boolean,
  ) {
    this.src = srcSide.stream;
    this.dst = dstSide.stream;
    this.limit = Math.max(MAX_BUFFERED, this.dst.writableHighWaterMark);
    this.frames = srcSide.framed ? new FrameReader() : undefined;
    this.framedOut = dstSide.framed === true;
  }

  readonly onData = (got: Buffer): void => {
    const frames = this.frames;
    if (!frames) {
      this.forward(got, got.length);
      return;
    }
    const parts = frames.read(got);
    if (frames.violated) {
      this.owner.failFramed("peer_protocol_error");
      return;
    }
    for (let i = 0; i < parts.length; i++) this.forward(parts[i]!, got.length);
    if (frames.ended) this.endFrame();
  };

  /** Count and write one chunk of app bytes; `readSize` is what the source read (says if more is coming). */
  private forward(chunk: Buffer, readSize: number): void {
    const n = chunk.length;
    if (this.upload) this.owner.bytes.addReceived(n);
    else this.owner.bytes.addSent(n);
    this.owner.activity = true;
    // The size read, not the app bytes in it, says whether more is coming in this turn.
    if (!this.corked && readSize >= FULL_CHUNK) {
      // A full chunk (a whole 16 KiB TLS record, or a big socket read) says more is coming in this
      // turn: gather the turn's chunks into one writev, flushed when the turn ends.
      this.corked = true;
      this.dst.cork();
      setImmediate(this.endTurn);
    }
    // A short chunk while not corked is the end of what was there (a request, a reply): it goes out at
    // once, with no extra turn of the event loop.
    if (this.framedOut) writeFramed(this.dst, chunk);
    else this.dst.write(chunk);
    // A write that crosses the limit also returned false (the limit is at least the high-water mark),
    // so the destination will emit 'drain' once its buffer is empty.
    if (!this.waiting && this.dst.writableLength >= this.limit) {
      this.waiting = true;
      this.src.pause();
    }
  }

  /**
   * The peer's end frame: its app's FIN, forwarded now. The source is kept reading (also when paused
   * for backpressure: a destination that is ending emits no 'drain'), so the tunnel's own end is seen.
   */
  private endFrame(): void {
    if (this.ended || this.owner.isDone) return;
    this.eofSeen = true;
    this.ended = true;
    if (!this.dst.destroyed && !this.dst.writableEnded) this.dst.end();
    if (this.waiting) {
      this.waiting = false;
      this.src.resume();
    }
    this.owner.halfClosed();
  }

  readonly endTurn = (): void => {
    if (this.corked) {
      this.corked = false;
      this.dst.uncork();
    }
  };

  readonly onDrain = (): void => {
    if (this.waiting) {
      this.waiting = false;
      this.src.resume();
    }
  };

  readonly onEnd = (): void => {
    this.eofSeen = true;
    if (!this.srcSide.raw) {
      // An HTTP/2 stream emits 'end' before the RST_STREAM that ended it is visible (rstCode, then
      // 'aborted' and 'error'); decide once those have had their turn.
      setImmediate(this.afterEnd);
      return;
    }
    this.afterEnd();
  };

  private readonly afterEnd = (): void => {
    if (this.owner.isDone) return;
    if (wasReset(this.owner.socketErrors, this.srcSide)) {
      // The peer reset the connection; its FIN-looking EOF must not be forwarded as a clean end.
      this.owner.resetFrom(this.upload ? "downstream" : "upstream");
      return;
    }
    if (this.frames) {
      // A framed tunnel: its FIN went on at the end frame; ending without one is a truncation.
      if (!this.frames.ended) {
        this.owner.failFramed("peer_truncated");
        return;
      }
      this.sourceClosed = true;
      this.owner.halfClosed();
      return;
    }
    this.ended = true;
    this.sourceClosed = true;
    // Forward the FIN: end() flushes anything corked, then shuts down the write side (after the end
    // frame, for a framed tunnel).
    if (!this.dst.destroyed && !this.dst.writableEnded) {
      if (this.framedOut) this.dst.end(END_FRAME);
      else this.dst.end();
    }
    this.owner.halfClosed();
  };

  attach(): void {
    this.src.on("data", this.onData);
    this.src.on("end", this.onEnd);
    this.dst.on("drain", this.onDrain);
  }
}

/**
 * A running splice. Create it when both sides are connected and any preamble (PROXY header, early
 * bytes) has been written; it resumes both sides at once.
 */
export class Splice {
  /** Set on every chunk; the idle timer clears it and re-arms while it keeps being set. */
  activity = false;
  readonly bytes: ByteSink;
  readonly socketErrors: SocketErrors;
  private readonly up: Pump;
  private readonly down: Pump;
  private idleTimer: TimerHandle | undefined;
  private halfCloseTimer: TimerHandle | undefined;
  private closedSockets = 0;
  private end: SpliceEnd | undefined;
  private firstError: Error | undefined;
  private done = false;

  constructor(
    readonly downstream: SpliceSide,
    readonly upstream: SpliceSide,
    private readonly options: SpliceOptions,
  ) {
    this.bytes = options.bytes;
    this.socketErrors = options.socketErrors ?? NO_SOCKET_ERRORS;
    this.up = new Pump(this, downstream, upstream, true);
    this.down = new Pump(this, upstream, downstream, false);
    this.up.attach();
    this.down.attach();
    this.watch(downstream, "downstream");
    this.watch(upstream, "upstream");
    if (options.idleTimeoutMs > 0) {
      this.idleTimer = options.clock.setTimeout(this.onIdle, options.idleTimeoutMs);
    }
    // A side may already be gone (closed while the connection was being set up).
    if (downstream.stream.destroyed || upstream.stream.destroyed) {
      this.fail(downstream.stream.destroyed ? "downstream_reset" : "upstream_reset", undefined);
      return;
    }
    downstream.stream.resume();
    upstream.stream.resume();
    // The client's FIN may have been read while the connection was placed (its early bytes were read
    // then): carry it now, as its 'end' will not come again.
    if (downstream.stream.readableEnded) this.up.onEnd();
  }

  private watch(side: SpliceSide, name: "downstream" | "upstream"): void {
    side.stream.on("error", (err: Error) => {
      const code = (err as { code?: string }).code ?? "";
      this.fail(RESET_CODES.has(code) ? `${name}_reset` : `${name}_error`, err);
    });
    if (!side.raw) {
      // An HTTP/2 stream killed by RST_STREAM CANCEL/NO_ERROR or by its session dying reports no
      // 'error', only 'aborted': still a reset, even after its 'end' was forwarded.
      side.stream.on("aborted", () => {
        if (!this.end) this.fail(`${name}_reset`, undefined);
      });
    }
    side.stream.on("close", () => {
      this.closedSockets++;
      const pump = name === "downstream" ? this.up : this.down;
      // Closed without its FIN having been read: the peer went away abruptly. Carry it as a reset.
      // A socketless stream closed before our own writes went out was cut off too. "Went out" is not
      // only 'finish': an HTTP/2 stream can report 'close' just before 'finish' after a clean exchange
      // of END_STREAMs (seen once in CI: 256 MiB byte-exact, yet logged downstream_reset), so ended
      // with nothing left in its buffer counts too; a peer's RST_STREAM is caught by 'aborted'/rstCode.
      const s = side.stream;
      const cutOff = !side.raw && !s.writableFinished && !(s.writableEnded && s.writableLength === 0);
      if (((!pump.ended && !pump.eofSeen) || cutOff) && !this.end) this.fail(`${name}_reset`, undefined);
      if (this.closedSockets === 2) this.finish();
    });
    if (side.raw && side.raw !== side.stream) side.raw.on("error", noop);
  }

  private readonly onIdle = (): void => {
    if (this.done) return;
    if (this.activity) {
      this.activity = false;
      this.idleTimer?.refresh();
      return;
    }
    this.abort("idle_timeout");
  };

  /** Called by a pump whose source "ended" with a reset pending in the kernel. */
  resetFrom(name: "downstream" | "upstream"): void {
    this.fail(`${name}_reset`, undefined);
  }

  /** Called by a pump whose framed tunnel was cut short or broke the framing. */
  failFramed(end: "peer_truncated" | "peer_protocol_error"): void {
    this.fail(end, undefined);
  }

  /**
   * Called by a pump when its source ended (a FIN was forwarded) or, framed, its transport ended after
   * that. The half-close timer runs from the first FIN until both sources are closed: a framed tunnel
   * whose end frame came but whose transport stays open (a peer that never sends close_notify or FIN)
   * would otherwise hold its sockets, its peer's stream slot and its TLS buffers until the idle timer.
   * Reaped by the timer, it ends as `half_close_timeout`; both apps have had their FINs by then.
   */
  halfClosed(): void {
    if (this.up.sourceClosed && this.down.sourceClosed) {
      this.halfCloseTimer?.cancel();
      return;
    }
    if (!this.halfCloseTimer && this.options.halfCloseTimeoutMs > 0) {
      this.halfCloseTimer = this.options.clock.setTimeout(
        () => this.abort("half_close_timeout"),
        this.options.halfCloseTimeoutMs,
      );
    }
  }

  private fail(end: SpliceEnd, err: Error | undefined): void {
    if (!this.end) {
      this.end = end;
      this.firstError = err;
    }
    // Carry the failure to the other side as a reset, and close the failed side.
    resetSide(this.downstream);
    resetSide(this.upstream);
  }

  /** End the connection from outside (idle, drain deadline, shutdown): both sides are reset. */
  abort(end: SpliceEnd = "aborted"): void {
    if (this.end || this.done) return;
    this.end = end;
    resetSide(this.downstream);
    resetSide(this.upstream);
  }

  /** Bytes sitting in the four stream buffers of this connection right now (for tests and /debug). */
  buffered(): number {
    const d = this.downstream.stream;
    const u = this.upstream.stream;
    return d.writableLength + d.readableLength + u.writableLength + u.readableLength;
  }

  get isDone(): boolean {
    return this.done || this.end !== undefined;
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.idleTimer?.cancel();
    this.halfCloseTimer?.cancel();
    this.options.onDone(this.end ?? "closed", this.firstError);
  }
}

/** TCP_CLOSE in tcpi_state: after a reset, or after both FINs once our own FIN was acknowledged. */
const TCP_CLOSE = 7;

/**
 * Whether an `'end'` on `side` was really a reset: the kernel still holds the error, or the connection is
 * closed although we never sent our FIN (after a peer's FIN alone it would be CLOSE_WAIT). The second
 * test covers an error already taken by someone else's read.
 */
export function wasReset(probe: SocketErrors, side: SpliceSide): boolean {
  if (!side.raw) return side.resetByPeer?.() ?? false;
  if (probe.pending(side.raw) !== 0) return true;
  return !side.stream.writableEnded && probe.tcpState(side.raw) === TCP_CLOSE;
}
