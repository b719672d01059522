/**
 * A client's first bytes while its connection is placed: read from the client as they come, written to
 * the current upstream attempt at once (after the PROXY header, in the same write, so the peer's answer
 * costs no round trip of its own), and kept until the peer answers, so that an attempt the peer refused
 * can be replayed on another endpoint (the app there received nothing). At most `limit` bytes are kept:
 * at the limit the client is paused and TCP flow control holds it (`limits.earlyDataBytes`, also the
 * socket's high-water mark, so the whole connection holds at most twice that). A FIN from the client is
 * remembered, not forwarded: the splice carries it once the peer accepted (Splice sees `readableEnded`).
 * To a `weft/3` tunnel (`framed`) the bytes go as frames (connection/frames.ts): the kept bytes as one
 * frame after the preamble, later ones a frame each.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { framedConcat, writeFramed } from "../connection/frames.ts";
import type { ByteSink } from "../connection/splice.ts";

export class EarlyData {
  private chunks: Buffer[] = [];
  private size = 0;
  private target: Duplex | undefined;
  private framed = false;
  private reading = false;

  constructor(
    private readonly client: Socket,
    private readonly limit: number,
  ) {}

  /** Start reading the client (before the first dial, so the first attempt can carry its bytes). */
  start(): void {
    if (this.reading) return;
    this.reading = true;
    this.client.on("data", this.onData);
  }

  /** Bytes kept now. */
  get bytes(): number {
    return this.size;
  }

  /**
   * Send `preamble` and every byte kept so far to `dst` in one write, and later bytes as they come;
   * `framed`: the bytes as frames (a weft/3 tunnel).
   */
  attach(dst: Duplex, preamble?: Buffer, framed = false): void {
    this.target = dst;
    this.framed = framed;
    if (framed) {
      if (preamble || this.size > 0) dst.write(framedConcat(preamble, this.chunks));
      return;
    }
    const parts = preamble ? [preamble, ...this.chunks] : this.chunks;
    if (parts.length > 0) dst.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
  }

  /** The attempt failed: stop writing to it (the bytes stay kept for the next one). */
  detach(): void {
    this.target = undefined;
  }

  /**
   * The peer accepted (`accepted`, the bytes are upstream and are counted on `sink` as received from the
   * client) or the connection failed: either way nothing is kept. The client is left paused, with its
   * 'data' free for the splice, which resumes it.
   */
  release(accepted?: ByteSink): void {
    if (accepted && this.size > 0) accepted.addReceived(this.size);
    this.client.pause();
    this.client.removeListener("data", this.onData);
    this.reading = false;
    this.target = undefined;
    this.chunks = [];
    this.size = 0;
  }

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const t = this.target;
    if (t && !t.destroyed) {
      if (this.framed) writeFramed(t, chunk);
      else t.write(chunk);
    }
    if (this.size >= this.limit) this.client.pause();
  };
}
