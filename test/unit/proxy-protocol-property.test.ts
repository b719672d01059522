/**
 * Property-based tests of the PROXY v2 decoder (fast-check), the parser every tunnel stream's first
 * bytes go through:
 * - random bytes, and valid headers with random mutations (flipped, dropped, inserted bytes; any
 *   chunking), never make anything but a WeftError E_PROXY_HEADER (with a reason) leave the decoder;
 * - every header it accepts re-encodes to exactly the bytes it was decoded from;
 * - what it accepts is TCP over IPv4/IPv6 (PROXY) or LOCAL, never UDP, UNIX or an unspecified family.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { isWeftError } from "../../src/core/errors.ts";
import {
  encodeProxyV2,
  PROXY_V2_SIGNATURE,
  type ProxyHeader,
  ProxyHeaderParser,
} from "../../src/proxy/transport/proxy-protocol.ts";

const RUNS = 2_000;

/** Feed `bytes` in the given chunk sizes; the result, or the error thrown. */
function decode(
  bytes: Uint8Array,
  chunks: number[] = [],
): { result?: ReturnType<ProxyHeaderParser["push"]>; consumed?: number; error?: unknown } {
  const parser = new ProxyHeaderParser();
  let at = 0;
  try {
    let result: ReturnType<ProxyHeaderParser["push"]>;
    for (const n of [...chunks, bytes.length]) {
      if (at >= bytes.length) break;
      const end = Math.min(bytes.length, at + Math.max(1, n));
      result = parser.push(Buffer.from(bytes.subarray(at, end)));
      at = end;
      // The header's bytes: everything pushed so far but what the parser hands back as the rest.
      if (result) return { result, consumed: at - result.rest.length };
    }
    return { result: undefined };
  } catch (error) {
    return { error };
  }
}

function assertOnlyHeaderErrors(error: unknown): void {
  if (error === undefined) return;
  assert.ok(
    isWeftError(error, "E_PROXY_HEADER"),
    `only E_PROXY_HEADER may leave the decoder, got ${String(error)}`,
  );
  assert.match(error.reason, /^[a-z0-9_]+$/, "with a reason");
}

const ipv4 = fc.ipV4();
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is sent as IPv4 by the encoder; a header pairs one family.
const ipv6 = fc.ipV6().filter((a) => !/^::ffff:\d+\./i.test(a));
const port = fc.integer({ min: 0, max: 65535 });
const tlvs = fc.array(
  fc.record({
    type: fc.integer({ min: 0, max: 255 }),
    value: fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
  }),
  { maxLength: 6 },
);
const header: fc.Arbitrary<ProxyHeader> = fc.oneof(
  fc.record({
    command: fc.constant("PROXY" as const),
    source: fc.record({ address: ipv4, port }),
    destination: fc.record({ address: ipv4, port }),
    tlvs,
  }),
  fc.record({
    command: fc.constant("PROXY" as const),
    source: fc.record({ address: ipv6, port }),
    destination: fc.record({ address: ipv6, port }),
    tlvs,
  }),
  fc.record({ command: fc.constant("LOCAL" as const), tlvs }),
);

test("random bytes: nothing but E_PROXY_HEADER leaves the decoder", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 600 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 8 }),
      (bytes, chunks) => {
        assertOnlyHeaderErrors(decode(bytes, chunks).error);
      },
    ),
    { numRuns: RUNS, includeErrorInReport: true },
  );
});

test("random bytes after the v2 signature: nothing but E_PROXY_HEADER leaves the decoder", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 4, maxLength: 400 }), (tail) => {
      assertOnlyHeaderErrors(decode(Buffer.concat([PROXY_V2_SIGNATURE, tail])).error);
    }),
    { numRuns: RUNS, includeErrorInReport: true },
  );
});

test("mutated valid headers: no other throw; whatever is accepted re-encodes to itself and is TCP or LOCAL", () => {
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant("drop" as const), at: fc.nat(), value: fc.constant(0) }),
    fc.record({
      kind: fc.constant("insert" as const),
      at: fc.nat(),
      value: fc.integer({ min: 0, max: 255 }),
    }),
  );
  fc.assert(
    fc.property(
      header,
      fc.array(mutation, { maxLength: 4 }),
      fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 6 }),
      (h, muts, chunks) => {
        const bytes = [...encodeProxyV2(h)];
        for (const m of muts) {
          const at = m.at % (bytes.length + 1);
          if (m.kind === "flip" && at < bytes.length) bytes[at] = m.value;
          else if (m.kind === "drop" && at < bytes.length) bytes.splice(at, 1);
          else if (m.kind === "insert") bytes.splice(at, 0, m.value);
        }
        const input = Uint8Array.from(bytes);
        const { result, consumed, error } = decode(input, chunks);
        assertOnlyHeaderErrors(error);
        if (!result) return;
        assert.deepEqual(
          encodeProxyV2(result.header),
          Buffer.from(input.subarray(0, consumed)),
          "re-encodes to itself",
        );
        const fam = input[13]!;
        assert.ok(
          result.header.command === "LOCAL" ? fam === 0x00 : fam === 0x11 || fam === 0x21,
          `family 0x${fam.toString(16)}`,
        );
      },
    ),
    { numRuns: RUNS, includeErrorInReport: true },
  );
});

test("valid headers decode to what was encoded, in any chunking", () => {
  fc.assert(
    fc.property(header, fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 6 }), (h, chunks) => {
      const bytes = encodeProxyV2(h);
      const { result, error } = decode(bytes, chunks);
      assert.equal(error, undefined);
      assert.ok(result);
      assert.deepEqual(encodeProxyV2(result.header), bytes);
      assert.equal(result.header.command, h.command);
    }),
    { numRuns: RUNS, includeErrorInReport: true },
  );
});

test("UDP, UNIX and unspecified families are refused with a reason; LOCAL with a family too", () => {
  const body = (fam: number, len: number) => {
    const b = Buffer.alloc(16 + len);
    PROXY_V2_SIGNATURE.copy(b);
    b[12] = 0x21;
    b[13] = fam;
    b.writeUInt16BE(len, 14);
    return b;
  };
  for (const [fam, len, reason] of [
    [0x12, 12, "udp_transport"],
    [0x22, 36, "udp_transport"],
    [0x31, 216, "unix_family"],
    [0x32, 216, "udp_transport"],
    [0x00, 0, "unspec_family"],
    [0x10, 12, "unspec_family"],
  ] as const) {
    const { error } = decode(body(fam, len));
    assert.ok(isWeftError(error, "E_PROXY_HEADER"), `0x${fam.toString(16)}`);
    assert.equal(error.reason, reason, `0x${fam.toString(16)}`);
  }
  const local = body(0x11, 12);
  local[12] = 0x20;
  assert.equal((decode(local).error as { reason: string }).reason, "local_with_family");
});
