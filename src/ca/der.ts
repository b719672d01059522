/**
 * A small, bounded DER reader: just enough ASN.1 to walk an X.509 certificate to its extensions
 * (cert-facts.ts). Every read is checked against the end of its enclosing element, lengths are definite
 * and at most 4 bytes long, tags are single-byte (X.509 uses no high tag numbers), and nesting is as deep
 * as the caller walks, never recursive on input. Bad input throws `DerError`; nothing reads past a
 * buffer or loops on its own.
 */

export class DerError extends Error {
  override readonly name = "DerError";
}

/** One element: its tag byte and where its contents lie in the buffer. */
export interface Tlv {
  readonly tag: number;
  /** First byte of the contents. */
  readonly start: number;
  /** One past the last byte of the contents (and the offset of the next element). */
  readonly end: number;
}

export const Tag = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  oid: 0x06,
  sequence: 0x30,
} as const;

/** The element starting at `offset`, which must end at or before `limit`. */
export function readTlv(buf: Uint8Array, offset: number, limit: number): Tlv {
  if (offset + 2 > limit) throw new DerError("truncated element");
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError("high tag numbers are not used in X.509");
  let len = buf[offset + 1]!;
  let start = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError("indefinite length is not DER");
    if (n > 4) throw new DerError("length over 4 bytes");
    if (start + n > limit) throw new DerError("truncated length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  const end = start + len;
  if (end > limit) throw new DerError("element runs past its parent");
  return { tag, start, end };
}

/** `readTlv` that also requires the tag. */
export function expectTlv(buf: Uint8Array, offset: number, limit: number, tag: number, what: string): Tlv {
  const t = readTlv(buf, offset, limit);
  if (t.tag !== tag)
    throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, got 0x${t.tag.toString(16)}`);
  return t;
}

/** The elements directly inside a constructed element, in order (at most `max` of them). */
export function children(buf: Uint8Array, parent: Tlv, max = 1024): Tlv[] {
  const out: Tlv[] = [];
  let at = parent.start;
  while (at < parent.end) {
    if (out.length >= max) throw new DerError(`more than ${max} elements`);
    const t = readTlv(buf, at, parent.end);
    out.push(t);
    at = t.end;
  }
  return out;
}

/**
 * Dotted text of an OBJECT IDENTIFIER's contents. Arcs of any size are read (a UUID-form OID under
 * 2.25 has a 128-bit arc), exactly, as BigInt once they outgrow a safe number; the element's own length
 * bounds the work.
 */
export function oidText(buf: Uint8Array, t: Tlv): string {
  if (t.end === t.start) throw new DerError("empty object identifier");
  const arcs: string[] = [];
  let value = 0n;
  let inArc = false;
  for (let i = t.start; i < t.end; i++) {
    const b = buf[i]!;
    if (!inArc && b === 0x80) throw new DerError("object identifier arc with a leading zero byte");
    inArc = true;
    value = (value << 7n) | BigInt(b & 0x7f);
    if ((b & 0x80) === 0) {
      if (arcs.length === 0) {
        const first = value < 40n ? 0n : value < 80n ? 1n : 2n;
        arcs.push(String(first), String(value - first * 40n));
      } else arcs.push(String(value));
      value = 0n;
      inArc = false;
    }
  }
  if (inArc) throw new DerError("object identifier ends inside an arc");
  return arcs.join(".");
}

/**
 * A BOOLEAN's value. DER says TRUE is 0xff; any other non-zero byte is read as TRUE too, as OpenSSL
 * does, so a CA that writes 0x01 (critical, cA) is read as every other verifier reads it.
 */
export function booleanValue(buf: Uint8Array, t: Tlv): boolean {
  if (t.end - t.start !== 1) throw new DerError("a BOOLEAN is one byte");
  return buf[t.start]! !== 0;
}

/** A non-negative INTEGER that fits a safe JavaScript number. */
export function smallInteger(buf: Uint8Array, t: Tlv): number {
  const n = t.end - t.start;
  if (n === 0) throw new DerError("empty INTEGER");
  if (buf[t.start]! & 0x80) throw new DerError("negative INTEGER where a count is expected");
  if (n > 6) throw new DerError("INTEGER too large");
  let v = 0;
  for (let i = t.start; i < t.end; i++) v = v * 256 + buf[i]!;
  return v;
}

/**
 * A BIT STRING's bits as flags: bit i of the string (counting from the first byte's most significant
 * bit, as ASN.1 names them) becomes 1 << i. At most 31 bits are read (key usage has 9).
 */
export function bitFlags(buf: Uint8Array, t: Tlv): number {
  const n = t.end - t.start;
  if (n === 0) throw new DerError("empty BIT STRING");
  const unused = buf[t.start]!;
  if (unused > 7 || (n === 1 && unused !== 0)) throw new DerError("bad unused-bits count in a BIT STRING");
  let flags = 0;
  const bits = (n - 1) * 8 - unused;
  for (let i = 0; i < Math.min(bits, 31); i++) {
    if (buf[t.start + 1 + (i >> 3)]! & (0x80 >> (i & 7))) flags |= 1 << i;
  }
  return flags;
}
