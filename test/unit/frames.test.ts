/**
 * The weft/3 framing (src/proxy/connection/frames.ts), as property tests (fast-check): whatever chunks
 * the writer is given and however the bytes are cut on the way, the reader hands on exactly the app's
 * bytes; it says `ended` only after the end frame, so any cut before it is a truncation; a byte after
 * the end frame is a violation; and a chunk's app bytes come out as one buffer.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import fc from "fast-check";
import { END_FRAME, FrameReader, framedConcat, writeFramed } from "../../src/proxy/connection/frames.ts";

const RUNS = 1_000;

/** What `writeFramed` writes for each chunk, then the end frame; and how many writes reached the sink. */
function encode(chunks: readonly Buffer[], preamble?: readonly Buffer[]): { wire: Buffer; writes: number[] } {
  const out: Buffer[] = [];
  const writes: number[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.push(chunk);
      writes.push(1);
      cb();
    },
    writev(batch, cb) {
      for (const { chunk } of batch) out.push(chunk as Buffer);
      writes.push(batch.length);
      cb();
    },
  });
  if (preamble) sink.write(framedConcat(undefined, preamble));
  for (const c of chunks) writeFramed(sink, c);
  sink.write(END_FRAME);
  return { wire: Buffer.concat(out), writes };
}

/** Feed `wire` to a reader cut at `cuts` (sizes, repeated); the app bytes, and the reader. */
function decode(
  wire: Buffer,
  cuts: readonly number[],
): { bytes: Buffer; reader: FrameReader; outputs: number } {
  const reader = new FrameReader();
  const got: Buffer[] = [];
  let outputs = 0;
  let at = 0;
  for (let i = 0; at < wire.length; i++) {
    const n = Math.max(1, cuts.length > 0 ? cuts[i % cuts.length]! : wire.length);
    const part = wire.subarray(at, Math.min(wire.length, at + n));
    at += part.length;
    const parts = reader.read(part);
    assert.ok(parts.length <= 4, "at most 4 pieces per chunk");
    got.push(...parts);
    outputs += parts.length;
  }
  return { bytes: Buffer.concat(got), reader, outputs };
}

const chunksArb = fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { maxLength: 12 });
const cutsArb = fc.array(fc.integer({ min: 1, max: 400 }), { maxLength: 8 });

test("any chunks, any cuts: exactly the app's bytes, and ended only at the end frame", () => {
  fc.assert(
    fc.property(chunksArb, chunksArb, cutsArb, (early, chunks, cuts) => {
      const bufs = chunks.map((c) => Buffer.from(c));
      const earlyBufs = early.map((c) => Buffer.from(c));
      const { wire } = encode(bufs, earlyBufs);
      const { bytes, reader } = decode(wire, cuts);
      assert.deepEqual(bytes, Buffer.concat([...earlyBufs, ...bufs]));
      assert.equal(reader.ended, true);
      assert.equal(reader.violated, false);
    }),
    { numRuns: RUNS },
  );
});

test("cut anywhere before the end frame's last byte: never ended (a truncation)", () => {
  fc.assert(
    fc.property(chunksArb, cutsArb, fc.nat(), (chunks, cuts, at) => {
      const { wire } = encode(chunks.map((c) => Buffer.from(c)));
      const cut = at % wire.length;
      const { reader } = decode(wire.subarray(0, cut), cuts);
      assert.equal(reader.ended, false);
    }),
    { numRuns: RUNS },
  );
});

test("any byte after the end frame is a violation, in the same chunk or a later one", () => {
  fc.assert(
    fc.property(chunksArb, fc.uint8Array({ minLength: 1, maxLength: 20 }), cutsArb, (chunks, extra, cuts) => {
      const { wire } = encode(chunks.map((c) => Buffer.from(c)));
      const { reader } = decode(Buffer.concat([wire, Buffer.from(extra)]), cuts);
      assert.equal(reader.ended, true);
      assert.equal(reader.violated, true);
    }),
    { numRuns: RUNS },
  );
});

test("tiny frames come out as one buffer per chunk; a frame's bytes are not copied", () => {
  const tiny = Array.from({ length: 1000 }, (_, i) => Buffer.from([i & 0xff]));
  const { wire } = encode(tiny);
  const { bytes, outputs } = decode(wire, [wire.length]);
  assert.equal(bytes.length, 1000);
  assert.equal(outputs, 1, "one output for the one chunk read");

  // A record that spans two frames: two subarrays of it, no copy.
  const a = Buffer.alloc(10_000, 7);
  const b = Buffer.alloc(10_000, 8);
  const { wire: two } = encode([a, b]);
  const reader = new FrameReader();
  const record = two.subarray(0, 16 * 1024);
  const parts = reader.read(record);
  assert.equal(parts.length, 2);
  assert.ok(
    parts.every((p) => p.buffer === record.buffer),
    "subarrays of what was read, not copies",
  );
  assert.equal(parts[0]!.length + parts[1]!.length, 16 * 1024 - 8);
});

test("header and bytes of a frame leave in one write (so they share a TLS record)", () => {
  const small = encode([Buffer.from("GET / HTTP/1.1\r\n\r\n")]);
  assert.deepEqual(small.writes, [1, 1], "one write of header+bytes, then the end frame");
  assert.equal(small.wire.length, 4 + 18 + 4);
  const large = encode([Buffer.alloc(64 * 1024, 1)]);
  assert.deepEqual(large.writes, [2, 1], "one writev of header and bytes, then the end frame");
});
