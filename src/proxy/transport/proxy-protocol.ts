/**
 * The PROXY protocol (HAProxy's spec, versions 1 and 2), written for the data path: a strict,
 * streaming, bounded parser and the two encoders. Sidecars put a v2 header (with Weft's service TLV)
 * first inside every mesh tunnel; the inbound side may send the app a v1 or v2 header so it sees the
 * real client. The parser never buffers more than one header (v2: 16 + length, length capped; v1: 107
 * bytes), accepts any chunking down to single bytes, and rejects bad input with a named reason. v2 headers
 * are accepted for TCP over IPv4/IPv6 (PROXY) and LOCAL only: UDP, UNIX and unspecified families are
 * refused (`udp_transport`, `unix_family`, `unspec_family`). Every accepted v2 header re-encodes to the
 * same bytes (test/unit/proxy-protocol-property.test.ts, fast-check).
 */
import { isIP } from "node:net";
import type { Duplex } from "node:stream";
import { type Clock, systemClock } from "../../core/clock.ts";
import { WeftError } from "../../core/errors.ts";
import type { SocketAddr } from "../../discovery/types.ts";
import { type ClientAddr, clientAddr, type OrigDstAddr, origDstAddr } from "../addresses.ts";

/** The 12-byte v2 signature: `\r\n\r\n\0\r\nQUIT\n`. */
export const PROXY_V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const V1_PREFIX = Buffer.from("PROXY ", "latin1");
/** The longest v1 line the spec allows, CRLF included. */
export const PROXY_V1_MAX_BYTES = 107;
/** The largest v2 header the format can express. */
export const PROXY_V2_MAX_BYTES = 16 + 65_535;

export const PP2_TYPE_ALPN = 0x01;
export const PP2_TYPE_AUTHORITY = 0x02;
export const PP2_TYPE_CRC32C = 0x03;
export const PP2_TYPE_NOOP = 0x04;
export const PP2_TYPE_UNIQUE_ID = 0x05;
/** Weft's own TLV (from the custom range 0xE0–0xEF): the name of the service the client asked for. */
export const PP2_TYPE_WEFT_SERVICE = 0xe0;

export type ProxyFamily = "tcp4" | "tcp6" | "udp4" | "udp6" | "unix" | "unspec";

export interface ProxyTlv {
  readonly type: number;
  readonly value: Buffer;
}

export interface ProxyHeader {
  /** Which version was parsed (encoders ignore it). */
  readonly version?: 1 | 2;
  /** PROXY: addresses follow. LOCAL: the proxy's own connection (health checks); no addresses. */
  readonly command: "PROXY" | "LOCAL";
  readonly family?: ProxyFamily;
  readonly source?: SocketAddr;
  readonly destination?: SocketAddr;
  readonly tlvs: readonly ProxyTlv[];
}

/** A header as read: its source is the client, its destination where the client was going. */
export interface ParsedProxyHeader extends ProxyHeader {
  readonly source?: ClientAddr;
  readonly destination?: OrigDstAddr;
}

/**
 * Why a header is refused (the `reason` of its E_PROXY_HEADER / E_TIMEOUT error): bad bytes, a header that
 * describes something other than a TCP stream, or a stream that ended, failed or stalled first.
 */
export const PROXY_HEADER_FAILURES = [
  "bad_address",
  "bad_command",
  "bad_family",
  "bad_port",
  "bad_signature",
  "bad_tlv",
  "bad_version",
  "local_with_family",
  "missing_addresses",
  "mixed_families",
  "tlv_overflow",
  "too_long",
  "truncated_addresses",
  "udp_transport",
  "unix_family",
  "unspec_family",
  "v1_bad_address",
  "v1_bad_line",
  "truncated",
  "closed",
  "proxy_header_timeout",
] as const;
export type ProxyHeaderFailure = (typeof PROXY_HEADER_FAILURES)[number];

function fail(reason: ProxyHeaderFailure, message: string): never {
  throw new WeftError("E_PROXY_HEADER", message, { reason });
}

function unmapped(address: string): string {
  return address.startsWith("::ffff:") && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** tcp4 when both ends are IPv4 (IPv4-mapped IPv6 counts as IPv4), tcp6 when both are IPv6. */
function familyOf(h: ProxyHeader): "tcp4" | "tcp6" {
  const src = unmapped(h.source!.address);
  const dst = unmapped(h.destination!.address);
  const a = isIP(src);
  const b = isIP(dst);
  if (a === 4 && b === 4) return "tcp4";
  if (a === 6 && b === 6) return "tcp6";
  if (a === 0 || b === 0) fail("bad_address", `not an IP address: ${a === 0 ? src : dst}`);
  fail("mixed_families", `source ${src} and destination ${dst} are of different IP families`);
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail("bad_port", `port ${port} is out of range`);
}

function ipv4Bytes(address: string): number[] {
  return unmapped(address)
    .split(".")
    .map((x) => Number(x));
}

function ipv6Bytes(address: string): Buffer {
  // Expand "::" and an embedded dotted quad, then write eight 16-bit groups.
  let text = address;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = ipv4Bytes(dotted[1]!);
    text = `${text.slice(0, dotted.index)}${((a! << 8) | b!).toString(16)}:${((c! << 8) | d!).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => {
    out.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  });
  return out;
}

function formatIpv6(bytes: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups (RFC 5952), so addresses compare equal to Node's.
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestStart < 0) return groups.join(":");
  return `${groups.slice(0, bestStart).join(":")}::${groups.slice(bestStart + bestLen).join(":")}`;
}

/** A v2 header: binary, with TLVs. The length field counts the addresses and every TLV. */
export function encodeProxyV2(h: ProxyHeader): Buffer {
  let famByte = 0x00;
  let addr: Buffer = Buffer.alloc(0);
  if (h.command === "PROXY") {
    if (!h.source || !h.destination)
      fail("missing_addresses", "a PROXY command needs source and destination");
    checkPort(h.source.port);
    checkPort(h.destination.port);
    if (familyOf(h) === "tcp4") {
      famByte = 0x11;
      addr = Buffer.alloc(12);
      Buffer.from(ipv4Bytes(h.source.address)).copy(addr, 0);
      Buffer.from(ipv4Bytes(h.destination.address)).copy(addr, 4);
      addr.writeUInt16BE(h.source.port, 8);
      addr.writeUInt16BE(h.destination.port, 10);
    } else {
      famByte = 0x21;
      addr = Buffer.alloc(36);
      ipv6Bytes(h.source.address).copy(addr, 0);
      ipv6Bytes(h.destination.address).copy(addr, 16);
      addr.writeUInt16BE(h.source.port, 32);
      addr.writeUInt16BE(h.destination.port, 34);
    }
  }
  const tlvBytes = h.tlvs.reduce((n, t) => n + 3 + t.value.length, 0);
  const length = addr.length + tlvBytes;
  if (length > 65_535) fail("too_long", `header payload of ${length} bytes exceeds 65535`);
  const out = Buffer.allocUnsafe(16 + length);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = h.command === "PROXY" ? 0x21 : 0x20;
  out[13] = famByte;
  out.writeUInt16BE(length, 14);
  addr.copy(out, 16);
  let o = 16 + addr.length;
  for (const t of h.tlvs) {
    if (!Number.isInteger(t.type) || t.type < 0 || t.type > 255)
      fail("bad_tlv", `TLV type ${t.type} is not a byte`);
    out[o] = t.type;
    out.writeUInt16BE(t.value.length, o + 1);
    t.value.copy(out, o + 3);
    o += 3 + t.value.length;
  }
  return out;
}

/** A v1 header: one text line. TLVs cannot be expressed and are dropped. */
export function encodeProxyV1(h: ProxyHeader): Buffer {
  if (h.command === "LOCAL" || !h.source || !h.destination) return Buffer.from("PROXY UNKNOWN\r\n", "latin1");
  checkPort(h.source.port);
  checkPort(h.destination.port);
  const fam = familyOf(h) === "tcp4" ? "TCP4" : "TCP6";
  const src = unmapped(h.source.address);
  const dst = unmapped(h.destination.address);
  return Buffer.from(`PROXY ${fam} ${src} ${dst} ${h.source.port} ${h.destination.port}\r\n`, "latin1");
}

function parseV2(buf: Buffer, maxTlvBytes: number): ParsedProxyHeader {
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) fail("bad_version", `version nibble ${verCmd >> 4} is not 2`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) fail("bad_command", `command ${cmd} is neither LOCAL nor PROXY`);
  const famByte = buf[13]!;
  const length = buf.readUInt16BE(14);
  const body = buf.subarray(16, 16 + length);
  const afByte = famByte >> 4;
  const proto = famByte & 0x0f;
  if (afByte > 3 || proto > 2) fail("bad_family", `address family byte 0x${famByte.toString(16)} is unknown`);
  // Only TCP over IPv4 or IPv6 is carried: a UDP, UNIX or unspecified PROXY header describes a
  // connection that is not the TCP stream it arrived on. LOCAL (health checks) names no addresses.
  if (cmd === 1) {
    if (proto === 2) fail("udp_transport", "UDP (DGRAM) PROXY headers are refused: only TCP is carried");
    if (afByte === 3)
      fail("unix_family", "UNIX-socket PROXY headers are refused: only TCP over IP is carried");
    if (afByte === 0 || proto === 0) {
      fail("unspec_family", "a PROXY command with an unspecified family or transport is refused");
    }
  } else if (famByte !== 0) {
    fail("local_with_family", `a LOCAL header must name no family (got 0x${famByte.toString(16)})`);
  }
  const addrLen = [0, 12, 36, 216][afByte]!;
  if (cmd === 1 && afByte !== 0 && length < addrLen) {
    fail("truncated_addresses", `length ${length} is too short for the addresses (${addrLen})`);
  }
  let family: ProxyFamily = "unspec";
  let source: ClientAddr | undefined;
  let destination: OrigDstAddr | undefined;
  if (afByte === 1 && proto !== 0) {
    family = proto === 1 ? "tcp4" : "udp4";
    source = clientAddr({ address: [...body.subarray(0, 4)].join("."), port: body.readUInt16BE(8) });
    destination = origDstAddr({ address: [...body.subarray(4, 8)].join("."), port: body.readUInt16BE(10) });
  } else if (afByte === 2 && proto !== 0) {
    family = proto === 1 ? "tcp6" : "udp6";
    source = clientAddr({ address: formatIpv6(body.subarray(0, 16)), port: body.readUInt16BE(32) });
    destination = origDstAddr({ address: formatIpv6(body.subarray(16, 32)), port: body.readUInt16BE(34) });
  } else if (afByte === 3) {
    family = "unix";
  }
  // With LOCAL, or an unspecified family, the addresses are skipped (the spec says receivers ignore them).
  const tlvStart = afByte === 0 ? 0 : Math.min(addrLen, length);
  const tlvs: ProxyTlv[] = [];
  const tlvBytes = length - tlvStart;
  if (tlvBytes > maxTlvBytes)
    fail("tlv_overflow", `${tlvBytes} bytes of TLVs exceed the limit of ${maxTlvBytes}`);
  let p = tlvStart;
  while (p < length) {
    if (length - p < 3) fail("bad_tlv", "a TLV is cut short inside the header");
    const type = body[p]!;
    const len = body.readUInt16BE(p + 1);
    if (p + 3 + len > length)
      fail("bad_tlv", `TLV 0x${type.toString(16)} of ${len} bytes runs past the header`);
    tlvs.push({ type, value: Buffer.from(body.subarray(p + 3, p + 3 + len)) });
    p += 3 + len;
  }
  const command = cmd === 1 ? "PROXY" : "LOCAL";
  return cmd === 1
    ? { version: 2, command, family, source, destination, tlvs }
    : { version: 2, command, family: "unspec", tlvs };
}

const V1_LINE = /^PROXY (TCP4|TCP6|UNKNOWN)(?: ([^ ]+) ([^ ]+) (\d{1,5}) (\d{1,5}))?\r\n$/;

function parseV1(line: string): ParsedProxyHeader {
  const m = V1_LINE.exec(line);
  if (!m) fail("v1_bad_line", "not a PROXY v1 line");
  if (m[1] === "UNKNOWN") return { version: 1, command: "PROXY", family: "unspec", tlvs: [] };
  if (m[2] === undefined) fail("v1_bad_line", `${m[1]} needs addresses and ports`);
  const want = m[1] === "TCP4" ? 4 : 6;
  if (isIP(m[2]) !== want || isIP(m[3]!) !== want) fail("v1_bad_address", `addresses are not ${m[1]}`);
  const sp = Number(m[4]);
  const dp = Number(m[5]);
  if (sp > 65535 || dp > 65535 || /^0\d/.test(m[4]!) || /^0\d/.test(m[5]!))
    fail("bad_port", "port out of range");
  return {
    version: 1,
    command: "PROXY",
    family: want === 4 ? "tcp4" : "tcp6",
    source: clientAddr({ address: m[2], port: sp }),
    destination: origDstAddr({ address: m[3]!, port: dp }),
    tlvs: [],
  };
}

export interface ProxyParserOptions {
  /** Accept the v1 text format too (default false: the mesh tunnel speaks v2 only). */
  readonly allowV1?: boolean;
  /** Bytes of TLVs accepted (default 4096; the format allows up to 65535 less the addresses). */
  readonly maxTlvBytes?: number;
}

/**
 * Incremental parser: `push()` bytes as they arrive; it returns the header and whatever bytes followed
 * it once the header is complete, `undefined` while more are needed, and throws `E_PROXY_HEADER` as
 * soon as the bytes seen so far cannot start a valid header.
 */
export class ProxyHeaderParser {
  private buf: Buffer = Buffer.alloc(0);
  private readonly allowV1: boolean;
  private readonly maxTlvBytes: number;

  constructor(opts: ProxyParserOptions = {}) {
    this.allowV1 = opts.allowV1 ?? false;
    this.maxTlvBytes = opts.maxTlvBytes ?? 4096;
  }

  /** Bytes held so far (never more than one header's worth). */
  get buffered(): number {
    return this.buf.length;
  }

  push(chunk: Buffer): { header: ParsedProxyHeader; rest: Buffer } | undefined {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const buf = this.buf;
    const n = Math.min(buf.length, 12);
    if (buf.subarray(0, n).equals(PROXY_V2_SIGNATURE.subarray(0, n))) {
      if (buf.length < 16) return undefined;
      const total = 16 + buf.readUInt16BE(14);
      // Check what can be checked before waiting for the whole body, so garbage fails fast.
      if (buf[12]! >> 4 !== 2) fail("bad_version", `version nibble ${buf[12]! >> 4} is not 2`);
      if (total - 16 > 216 + this.maxTlvBytes) fail("too_long", `header of ${total} bytes exceeds the limit`);
      if (buf.length < total) return undefined;
      const header = parseV2(buf.subarray(0, total), this.maxTlvBytes);
      return this.done(total, header);
    }
    if (this.allowV1) {
      const m = Math.min(buf.length, V1_PREFIX.length);
      if (buf.subarray(0, m).equals(V1_PREFIX.subarray(0, m))) {
        const lf = buf.indexOf(0x0a);
        if (lf < 0) {
          if (buf.length >= PROXY_V1_MAX_BYTES)
            fail("too_long", `v1 line longer than ${PROXY_V1_MAX_BYTES} bytes`);
          return undefined;
        }
        if (lf + 1 > PROXY_V1_MAX_BYTES) fail("too_long", `v1 line longer than ${PROXY_V1_MAX_BYTES} bytes`);
        const header = parseV1(buf.subarray(0, lf + 1).toString("latin1"));
        return this.done(lf + 1, header);
      }
    }
    fail("bad_signature", this.allowV1 ? "neither a PROXY v1 nor v2 header" : "not a PROXY v2 header");
  }

  private done(length: number, header: ParsedProxyHeader): { header: ParsedProxyHeader; rest: Buffer } {
    const rest = this.buf.subarray(length);
    this.buf = Buffer.alloc(0);
    return { header, rest };
  }
}

export interface ReadProxyHeaderOptions extends ProxyParserOptions {
  /** Deadline for the whole header, from the call (E_TIMEOUT, reason proxy_header_timeout). */
  readonly timeoutMs: number;
  readonly clock?: Clock;
}

/**
 * Read one header from a stream. Resolves with the header once it is complete; the bytes that followed
 * it are `unshift()`ed back and the stream is left paused for whoever pipes it next. Rejects with
 * `E_PROXY_HEADER` on bad bytes or when the stream ends/fails first, `E_TIMEOUT` at the deadline. It
 * never destroys the stream: the caller decides how to close.
 */
export function readProxyHeader(stream: Duplex, opts: ReadProxyHeaderOptions): Promise<ParsedProxyHeader> {
  const parser = new ProxyHeaderParser(opts);
  const clock = opts.clock ?? systemClock;
  return new Promise((resolve, reject) => {
    const finish = (): void => {
      timer.cancel();
      stream.removeListener("data", onData);
      stream.removeListener("end", onEnd);
      stream.removeListener("close", onEnd);
      stream.removeListener("error", onError);
      stream.pause();
    };
    const timer = clock.setTimeout(() => {
      finish();
      reject(
        new WeftError("E_TIMEOUT", `no complete PROXY header within ${opts.timeoutMs} ms`, {
          reason: "proxy_header_timeout",
        }),
      );
    }, opts.timeoutMs);
    const onData = (chunk: Buffer): void => {
      let result: ReturnType<ProxyHeaderParser["push"]>;
      try {
        result = parser.push(chunk);
      } catch (err) {
        finish();
        reject(err);
        return;
      }
      if (!result) return;
      finish();
      if (result.rest.length > 0) stream.unshift(result.rest);
      resolve(result.header);
    };
    const onEnd = (): void => {
      finish();
      reject(
        new WeftError("E_PROXY_HEADER", `the stream ended after ${parser.buffered} bytes of a PROXY header`, {
          reason: "truncated",
        }),
      );
    };
    const onError = (err: Error): void => {
      finish();
      reject(
        new WeftError("E_PROXY_HEADER", "the stream failed while reading a PROXY header", {
          reason: "closed",
          cause: err,
        }),
      );
    };
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("close", onEnd);
    stream.once("error", onError);
    stream.resume();
  });
}
