import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { WeftError } from "../../src/core/errors.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  PP2_TYPE_WEFT_SERVICE,
  PROXY_V2_SIGNATURE,
  type ProxyHeader,
  ProxyHeaderParser,
  readProxyHeader,
} from "../../src/proxy/transport/proxy-protocol.ts";

const require = createRequire(import.meta.url);
const pp = require("proxy-protocol-js");

const v4: ProxyHeader = {
  command: "PROXY",
  source: { address: "198.18.0.10", port: 40000 },
  destination: { address: "198.18.0.20", port: 8080 },
  tlvs: [{ type: PP2_TYPE_WEFT_SERVICE, value: Buffer.from("backend") }],
};
const v6: ProxyHeader = {
  command: "PROXY",
  source: { address: "fd00:198:18::a", port: 1 },
  destination: { address: "fd00:198:18:0:1::14", port: 65535 },
  tlvs: [],
};

function parseAll(bytes: Buffer, opts = {}) {
  const r = new ProxyHeaderParser(opts).push(bytes);
  assert.ok(r, "header complete");
  return r;
}

test("v2 round trip: IPv4 with a TLV, IPv6, LOCAL, IPv4-mapped sent as tcp4", () => {
  const a = parseAll(Buffer.concat([encodeProxyV2(v4), Buffer.from("hello")]));
  assert.deepEqual(a.header.source, v4.source);
  assert.deepEqual(a.header.destination, v4.destination);
  assert.equal(a.header.family, "tcp4");
  assert.equal(a.header.tlvs[0]?.type, PP2_TYPE_WEFT_SERVICE);
  assert.equal(a.header.tlvs[0]?.value.toString(), "backend");
  assert.equal(a.rest.toString(), "hello");
  const enc = encodeProxyV2(v4);
  assert.equal(enc.readUInt16BE(14), 12 + 3 + 7, "length field counts the TLV bytes");

  const b = parseAll(encodeProxyV2(v6));
  assert.deepEqual(b.header.source, v6.source);
  assert.deepEqual(b.header.destination, v6.destination);
  assert.equal(b.header.family, "tcp6");

  const c = parseAll(encodeProxyV2({ command: "LOCAL", tlvs: [] }));
  assert.equal(c.header.command, "LOCAL");
  assert.equal(c.header.source, undefined);

  const d = parseAll(
    encodeProxyV2({
      command: "PROXY",
      source: { address: "::ffff:127.0.0.1", port: 5 },
      destination: { address: "127.0.0.2", port: 6 },
      tlvs: [],
    }),
  );
  assert.equal(d.header.family, "tcp4");
  assert.equal(d.header.source?.address, "127.0.0.1");
});

test("any chunking works, down to one byte at a time, and the rest is kept", () => {
  const bytes = Buffer.concat([encodeProxyV2(v4), Buffer.from("payload")]);
  const parser = new ProxyHeaderParser();
  let result: ReturnType<ProxyHeaderParser["push"]>;
  for (let i = 0; i < bytes.length && !result; i++) result = parser.push(bytes.subarray(i, i + 1));
  assert.ok(result);
  assert.deepEqual(result.header.destination, v4.destination);
  assert.equal(parser.buffered, 0);
});

test("v1 round trip and its limits", () => {
  const line = encodeProxyV1(v4);
  assert.equal(line.toString(), "PROXY TCP4 198.18.0.10 198.18.0.20 40000 8080\r\n");
  const r = parseAll(Buffer.concat([line, Buffer.from("x")]), { allowV1: true });
  assert.deepEqual(r.header.source, v4.source);
  assert.equal(r.rest.toString(), "x");
  assert.equal(encodeProxyV1(v6).toString(), "PROXY TCP6 fd00:198:18::a fd00:198:18:0:1::14 1 65535\r\n");
  assert.equal(encodeProxyV1({ command: "LOCAL", tlvs: [] }).toString(), "PROXY UNKNOWN\r\n");
  assert.equal(parseAll(Buffer.from("PROXY UNKNOWN\r\n"), { allowV1: true }).header.family, "unspec");
});

const sig = PROXY_V2_SIGNATURE;
const bad: Array<[string, Buffer, string, object?]> = [
  ["plaintext HTTP", Buffer.from("GET / HTTP/1.1\r\n\r\n"), "bad_signature"],
  ["TLS ClientHello", Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5]), "bad_signature"],
  ["v1 when only v2 is allowed", Buffer.from("PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"), "bad_signature"],
  [
    "version 1 nibble in a v2 header",
    Buffer.concat([sig, Buffer.from([0x11, 0x11, 0, 12]), Buffer.alloc(12)]),
    "bad_version",
  ],
  ["command 5", Buffer.concat([sig, Buffer.from([0x25, 0x11, 0, 12]), Buffer.alloc(12)]), "bad_command"],
  ["family 0x51", Buffer.concat([sig, Buffer.from([0x21, 0x51, 0, 12]), Buffer.alloc(12)]), "bad_family"],
  [
    "IPv4 with a length of 4",
    Buffer.concat([sig, Buffer.from([0x21, 0x11, 0, 4]), Buffer.alloc(4)]),
    "truncated_addresses",
  ],
  [
    "TLV running past the end",
    Buffer.concat([sig, Buffer.from([0x21, 0x11, 0, 15]), Buffer.alloc(12), Buffer.from([0xe0, 0, 9])]),
    "bad_tlv",
  ],
  [
    "half a TLV header",
    Buffer.concat([sig, Buffer.from([0x21, 0x11, 0, 14]), Buffer.alloc(12), Buffer.from([0xe0, 0])]),
    "bad_tlv",
  ],
  [
    "LOCAL header with more TLV bytes than the limit",
    encodeProxyV2({ command: "LOCAL", tlvs: [{ type: 0xe1, value: Buffer.alloc(200) }] }),
    "tlv_overflow",
    { maxTlvBytes: 100 },
  ],
  [
    "addresses plus TLVs longer than the header cap",
    encodeProxyV2({ ...v4, tlvs: [{ type: 0xe1, value: Buffer.alloc(5000) }] }),
    "too_long",
  ],
  ["length field beyond the cap", Buffer.concat([sig, Buffer.from([0x21, 0x11, 0xff, 0xff])]), "too_long"],
  [
    "v1 with no CRLF in 107 bytes",
    Buffer.from(`PROXY TCP4 ${"1".repeat(120)}`),
    "too_long",
    { allowV1: true },
  ],
  [
    "v1 with a bad family",
    Buffer.from("PROXY TCP5 1.1.1.1 2.2.2.2 1 2\r\n"),
    "v1_bad_line",
    { allowV1: true },
  ],
  [
    "v1 with an IPv6 address as TCP4",
    Buffer.from("PROXY TCP4 ::1 ::1 1 2\r\n"),
    "v1_bad_address",
    { allowV1: true },
  ],
  [
    "v1 with port 70000",
    Buffer.from("PROXY TCP4 1.1.1.1 2.2.2.2 70000 2\r\n"),
    "bad_port",
    { allowV1: true },
  ],
];

for (const [name, bytes, reason, opts] of bad) {
  test(`refused: ${name} → ${reason}`, () => {
    assert.throws(
      () => new ProxyHeaderParser(opts).push(bytes),
      (err: unknown) => err instanceof WeftError && err.code === "E_PROXY_HEADER" && err.reason === reason,
    );
  });
}

test("random bytes and truncations never throw anything but E_PROXY_HEADER (bounded)", () => {
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const valid = Buffer.concat([encodeProxyV2(v4), encodeProxyV1(v6)]);
  for (let i = 0; i < 3000; i++) {
    const len = Math.floor(rand() * 80);
    const base = rand() < 0.5 ? Buffer.from(valid.subarray(0, len)) : Buffer.alloc(len);
    for (let j = 0; j < base.length; j++)
      if (rand() < 0.1 || rand() < 0.5) base[j] = Math.floor(rand() * 256);
    try {
      new ProxyHeaderParser({ allowV1: rand() < 0.5 }).push(base);
    } catch (err) {
      assert.ok(err instanceof WeftError && err.code === "E_PROXY_HEADER", `unexpected ${String(err)}`);
    }
  }
});

test("cross-check with proxy-protocol-js where it is correct (v1, v2 without TLVs)", () => {
  // Ours → theirs: v1.
  const theirsV1 = pp.V1ProxyProtocol.parse(encodeProxyV1(v4).toString());
  assert.equal(theirsV1.source.ipAddress, "198.18.0.10");
  assert.equal(theirsV1.destination.port, 8080);
  // Theirs → ours: v1 and v2 (IPv4, no TLVs).
  const line = new pp.V1ProxyProtocol(
    pp.INETProtocol.TCP4,
    new pp.Peer("198.18.1.1", 1234),
    new pp.Peer("198.18.1.2", 4321),
  ).build();
  const r1 = parseAll(Buffer.from(line), { allowV1: true });
  assert.deepEqual(r1.header.source, { address: "198.18.1.1", port: 1234 });
  const v2 = new pp.V2ProxyProtocol(
    pp.Command.PROXY,
    pp.TransportProtocol.STREAM,
    new pp.IPv4ProxyAddress(
      pp.IPv4Address.createFrom([198, 18, 1, 1]),
      1234,
      pp.IPv4Address.createFrom([198, 18, 1, 2]),
      4321,
    ),
  ).build();
  const r2 = parseAll(Buffer.from(v2));
  assert.deepEqual(r2.header.destination, { address: "198.18.1.2", port: 4321 });
  // Ours → theirs: v2 without TLVs.
  const mine = encodeProxyV2({ ...v4, tlvs: [] });
  const theirs = pp.V2ProxyProtocol.parse(new Uint8Array(mine));
  assert.equal(theirs.proxyAddress.sourcePort, 40000);
  assert.equal(theirs.proxyAddress.destinationPort, 8080);
});

test("readProxyHeader: unshifts the rest and leaves the stream paused", async () => {
  const s = new PassThrough();
  const p = readProxyHeader(s, { timeoutMs: 1000, clock: new ManualClock() });
  s.write(encodeProxyV2(v4).subarray(0, 10));
  s.write(Buffer.concat([encodeProxyV2(v4).subarray(10), Buffer.from("after")]));
  const h = await p;
  assert.deepEqual(h.source, v4.source);
  assert.ok(s.isPaused());
  assert.equal(s.read()?.toString(), "after");
});

test("readProxyHeader: deadline, early end and garbage each reject with a reason", async () => {
  const clock = new ManualClock();
  const s1 = new PassThrough();
  const p1 = readProxyHeader(s1, { timeoutMs: 500, clock });
  s1.write(sig.subarray(0, 5));
  clock.advance(501);
  await assert.rejects(
    p1,
    (e: unknown) => e instanceof WeftError && e.code === "E_TIMEOUT" && e.reason === "proxy_header_timeout",
  );

  const s2 = new PassThrough();
  const p2 = readProxyHeader(s2, { timeoutMs: 500, clock });
  s2.end(encodeProxyV2(v4).subarray(0, 20));
  await assert.rejects(p2, (e: unknown) => e instanceof WeftError && e.reason === "truncated");

  const s3 = new PassThrough();
  const p3 = readProxyHeader(s3, { timeoutMs: 500, clock });
  s3.write("SSH-2.0-OpenSSH\r\n");
  await assert.rejects(p3, (e: unknown) => e instanceof WeftError && e.reason === "bad_signature");
  assert.equal(clock.pending(), 0, "every deadline cancelled");
});
