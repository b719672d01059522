/**
 * The framing of a `weft/3` per-connection tunnel, which tells the app's FIN from a tunnel that was cut.
 *
 * A TLS stream that ends without close_notify is a truncation, but Node cannot tell one from a clean
 * TLS end: a TLSSocket reports the TCP FIN of a killed peer sidecar as `'end'`, with no error (checked on
 * Node 20 and 24; OpenSSL's shutdown state is not exposed). So the end of each direction is said inside
 * the tunnel: after the PROXY header (client → server) and after the status message (server → client),
 * every byte of the app travels in frames `[u32 big-endian length][length bytes]`, and a frame of length
 * 0 is the app's FIN, the last frame of its direction. A direction whose tunnel ends (TLS end, TCP FIN)
 * without that frame was truncated: the splice resets the app socket (close reason `peer_truncated`),
 * as it does for a reset, so a cut download or upload never looks complete. A byte after the end frame
 * is a protocol error (`peer_protocol_error`), also carried as a reset. A reset of the app is still
 * carried as a TCP reset of the tunnel, as before.
 *
 * Cost and bounds: one 4-byte header per chunk the sidecar reads (a socket read or a TLS record), written
 * with the chunk in one write so both go into one TLS record: a small chunk copied behind its header, a
 * large one under one cork (Node's TLS layer copies a corked batch into one SSL_write). The reader never buffers a frame: it parses headers (at most 3 bytes of a split
 * header kept) and hands on subarrays of what it was given, so a frame's length bounds nothing in
 * memory. A chunk that holds pieces of a few frames gives those pieces (no copy: a 16 KiB record that
 * spans two frames costs two writes under the splice's cork, not a 16 KiB allocation); past
 * `MAX_PIECES` they are joined into one buffer, so a peer that sends tiny frames costs one write per
 * chunk, not one per frame.
 */
import type { Writable } from "node:stream";

export const FRAME_HEADER_BYTES = 4;
/** The largest frame; a longer chunk is split (socket reads and TLS records are far smaller). */
const MAX_FRAME = 0xffff_ffff;
/** The end frame: length 0. Shared and never written into. */
export const END_FRAME: Buffer = Buffer.alloc(FRAME_HEADER_BYTES);

function header(n: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt32BE(n, 0);
  return h;
}

/** Chunks up to this size are copied behind their header into one buffer: one plain write. */
const COPY_MAX = 4 * 1024;

/**
 * Write `chunk` to `dst` as frames, header and bytes in one write so they leave in one TLS record: a
 * small chunk is copied behind its header (one buffer from Node's pool, no writev), a larger one is
 * written after its header under one cork (nested in the caller's, if it corked already). An empty
 * chunk writes nothing (a frame of length 0 would say FIN).
 */
export function writeFramed(dst: Writable, chunk: Buffer): void {
  const n = chunk.length;
  if (n === 0) return;
  if (n <= COPY_MAX) {
    const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + n);
    b.writeUInt32BE(n, 0);
    chunk.copy(b, FRAME_HEADER_BYTES);
    dst.write(b);
    return;
  }
  dst.cork();
  for (let at = 0; at < n; at += MAX_FRAME) {
    const part = at === 0 && n <= MAX_FRAME ? chunk : chunk.subarray(at, at + MAX_FRAME);
    dst.write(header(part.length));
    dst.write(part);
  }
  dst.uncork();
}

/** `preamble` then `chunks` as one frame, as one buffer (the early bytes of a connection, see early-data.ts). */
export function framedConcat(preamble: Buffer | undefined, chunks: readonly Buffer[]): Buffer {
  let size = 0;
  for (const c of chunks) size += c.length;
  const parts: Buffer[] = preamble ? [preamble] : [];
  if (size > 0) parts.push(header(size), ...chunks);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** More app-byte pieces than this in one chunk are joined into one buffer (tiny frames). */
const MAX_PIECES = 4;
const NONE: readonly Buffer[] = [];

/** Reads one direction of frames; see the module comment. */
export class FrameReader {
  /** The end frame was read: the peer's app sent its FIN. */
  ended = false;
  /** Bytes came after the end frame: the peer broke the protocol. */
  violated = false;
  /** App bytes still to come in the current frame. */
  private remaining = 0;
  /** A header split across chunks: its first bytes. */
  private readonly head = Buffer.alloc(FRAME_HEADER_BYTES);
  private headLen = 0;
  /** The pieces of the last chunk read (reused: valid until the next `read`). */
  private readonly pieces: Buffer[] = [];

  /**
   * The app bytes in `chunk`, as subarrays of it (at most `MAX_PIECES`, else joined into one copy), in
   * order; empty if it held only framing. The array is reused: consume it before the next call. Sets
   * `ended` at the end frame and `violated` on any byte after it.
   */
  read(chunk: Buffer): readonly Buffer[] {
    if (this.ended) {
      if (chunk.length > 0) this.violated = true;
      return NONE;
    }
    const pieces = this.pieces;
    pieces.length = 0;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        pieces.push(take === n ? chunk : chunk.subarray(i, i + take));
        this.remaining -= take;
        i += take;
        continue;
      }
      let len: number;
      if (this.headLen === 0 && n - i >= FRAME_HEADER_BYTES) {
        len = chunk.readUInt32BE(i);
        i += FRAME_HEADER_BYTES;
      } else {
        const take = Math.min(FRAME_HEADER_BYTES - this.headLen, n - i);
        chunk.copy(this.head, this.headLen, i, i + take);
        this.headLen += take;
        i += take;
        if (this.headLen < FRAME_HEADER_BYTES) break;
        this.headLen = 0;
        len = this.head.readUInt32BE(0);
      }
      if (len === 0) {
        this.ended = true;
        if (i < n) this.violated = true;
        break;
      }
      this.remaining = len;
    }
    if (pieces.length > MAX_PIECES) {
      const joined = Buffer.concat(pieces);
      pieces.length = 0;
      pieces.push(joined);
    }
    return pieces;
  }
}
