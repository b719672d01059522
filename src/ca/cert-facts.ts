/**
 * The facts Weft's SVID rules read from a certificate (URI SANs, basic constraints, key usage, extended
 * key usage, critical extensions, serial), taken from its DER with the bounded reader of der.ts. This
 * module is what the sidecar's peer verification (verify.ts) loads; it needs no ASN.1 library, so a
 * sidecar does not carry @peculiar/x509 (about 18 MiB of RSS), which only the CA path (x509.ts) loads.
 * Signatures, names and dates come from node:crypto's X509Certificate; so does the first parse, which
 * refuses malformed DER before these facts are read.
 */
import { WeftError } from "../core/errors.ts";
import {
  bitFlags,
  booleanValue,
  children,
  DerError,
  expectTlv,
  oidText,
  readTlv,
  smallInteger,
  Tag,
  type Tlv,
} from "./der.ts";

/** Key usage bits as flags (RFC 5280 §4.2.1.3: bit i is 1 << i); the values of @peculiar/x509's KeyUsageFlags. */
export const KeyUsage = {
  digitalSignature: 1,
  nonRepudiation: 2,
  keyEncipherment: 4,
  dataEncipherment: 8,
  keyAgreement: 16,
  keyCertSign: 32,
  cRLSign: 64,
  encipherOnly: 128,
  decipherOnly: 256,
} as const;

/** Extended key usage purposes (RFC 5280 §4.2.1.12). */
export const Eku = {
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
  codeSigning: "1.3.6.1.5.5.7.3.3",
} as const;

const OID = {
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extendedKeyUsage: "2.5.29.37",
  subjectAltName: "2.5.29.17",
} as const;

/**
 * The extensions Weft's verifier understands and enforces; any other extension marked critical makes a
 * certificate unusable (RFC 5280 §4.2: "A certificate-using system MUST reject the certificate if it
 * encounters a critical extension it does not recognize"). SKI/AKI are informational (OpenSSL does not
 * accept them as critical either); name constraints and policies are not processed, so they are refused
 * when critical rather than silently ignored.
 */
export const ENFORCED_EXTENSIONS: ReadonlySet<string> = new Set(Object.values(OID));

/** Split PEM text into its certificates (garbage between blocks is refused). */
export function splitPemCertificates(text: string): string[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => `${b}\n`);
}

/** A serial number as Weft keeps it: lower-case hex, no leading zeros ("0" for zero). */
export function normalizeSerial(hex: string): string {
  const s = hex.toLowerCase().replace(/^0+/, "");
  return s === "" ? "0" : s;
}

/** The parts of a certificate's extensions that Weft's SVID rules need, read once per certificate. */
export interface CertFacts {
  readonly uris: string[];
  /** SANs of other kinds (DNS names, IP addresses, ...): counted, not read. */
  readonly otherSans: number;
  /** Undefined when the certificate has no basicConstraints extension. */
  readonly ca: boolean | undefined;
  /** basicConstraints pathLenConstraint (undefined: none). */
  readonly pathLength: number | undefined;
  /** Undefined when the certificate has no key usage extension. */
  readonly keyUsages: number | undefined;
  /** Undefined when the certificate has no EKU extension (then it is not restricted by purpose). */
  readonly extendedKeyUsages: string[] | undefined;
  /** OIDs of critical extensions Weft does not enforce. */
  readonly unknownCritical: string[];
  /** Serial number, lower-case hex without leading zeros. */
  readonly serial: string;
}

/** A GeneralName's tag for uniformResourceIdentifier: [6] IMPLICIT IA5String. */
const URI_NAME = 0x86;

/**
 * The tags a GeneralName (RFC 5280 §4.2.1.6) may have in DER: otherName [0], x400Address [3],
 * directoryName [4] and ediPartyName [5] are constructed; rfc822Name [1], dNSName [2], URI [6],
 * iPAddress [7] and registeredID [8] are primitive. Anything else, such as a URI in constructed form
 * (which OpenSSL and node read as a URI, and a reader that only knew 0x86 would miss), is malformed.
 */
const GENERAL_NAME_TAGS: ReadonlySet<number> = new Set([
  0xa0, 0x81, 0x82, 0xa3, 0xa4, 0xa5, 0x86, 0x87, 0x88,
]);

/**
 * Read the facts of one certificate (DER). Throws `E_SVID` (reason `malformed_certificate`) when the
 * structure or one of the extensions Weft reads does not decode, or one of them appears twice.
 */
export function certFacts(der: Uint8Array): CertFacts {
  try {
    return readFacts(der);
  } catch (err) {
    if (!(err instanceof DerError)) throw err;
    throw new WeftError("E_SVID", `a presented certificate does not decode: ${err.message}`, {
      reason: "malformed_certificate",
      cause: err,
    });
  }
}

function readFacts(der: Uint8Array): CertFacts {
  const cert = expectTlv(der, 0, der.length, Tag.sequence, "Certificate");
  const tbs = expectTlv(der, cert.start, cert.end, Tag.sequence, "TBSCertificate");
  const fields = children(der, tbs, 16);
  let i = 0;
  if (fields[i]?.tag === 0xa0) i++; // [0] EXPLICIT version
  const serialTlv = fields[i];
  if (serialTlv?.tag !== Tag.integer || serialTlv.end === serialTlv.start)
    throw new DerError("TBSCertificate: no serialNumber");
  const serial = normalizeSerial(Buffer.from(der.subarray(serialTlv.start, serialTlv.end)).toString("hex"));
  // signature, issuer, validity, subject, subjectPublicKeyInfo: five SEQUENCEs that node:crypto reads.
  for (let k = 1; k <= 5; k++) {
    if (fields[i + k]?.tag !== Tag.sequence)
      throw new DerError("TBSCertificate: a required field is missing");
  }
  i += 6;
  // [1] issuerUniqueID, [2] subjectUniqueID (IMPLICIT, primitive or constructed), then [3] extensions.
  const uniqueIds = [0x81, 0xa1, 0x82, 0xa2];
  while (i < fields.length && uniqueIds.includes(fields[i]!.tag)) i++;
  const facts: MutableFacts = {
    uris: [] as string[],
    otherSans: 0,
    ca: undefined as boolean | undefined,
    pathLength: undefined as number | undefined,
    keyUsages: undefined as number | undefined,
    extendedKeyUsages: undefined as string[] | undefined,
    unknownCritical: [] as string[],
    serial,
  };
  const wrapper = fields[i];
  if (wrapper === undefined) return facts;
  if (wrapper.tag !== 0xa3 || i !== fields.length - 1)
    throw new DerError("TBSCertificate: unexpected field after the public key");
  const list = expectTlv(der, wrapper.start, wrapper.end, Tag.sequence, "Extensions");
  if (list.end !== wrapper.end) throw new DerError("Extensions: trailing bytes");
  const seen = new Set<string>();
  for (const ext of children(der, list, 64)) {
    if (ext.tag !== Tag.sequence) throw new DerError("Extension: not a SEQUENCE");
    const parts = children(der, ext, 3);
    const id = parts[0];
    if (id?.tag !== Tag.oid) throw new DerError("Extension: no extnID");
    const oid = oidText(der, id);
    let critical = false;
    let next = 1;
    if (parts[next]?.tag === Tag.boolean) critical = booleanValue(der, parts[next++]!);
    const value = parts[next];
    if (value?.tag !== Tag.octetString || next !== parts.length - 1)
      throw new DerError(`Extension ${oid}: no extnValue`);
    if (seen.has(oid)) throw new DerError(`extension ${oid} appears twice`);
    seen.add(oid);
    if (critical && !ENFORCED_EXTENSIONS.has(oid)) facts.unknownCritical.push(oid);
    const inner = readTlv(der, value.start, value.end);
    if (inner.end !== value.end) throw new DerError(`Extension ${oid}: trailing bytes`);
    readExtension(der, oid, inner, facts);
  }
  return facts;
}

type MutableFacts = { -readonly [K in keyof CertFacts]: CertFacts[K] };

/** Read one extension Weft enforces (`inner`: its extnValue's element) into `facts`; others are skipped. */
function readExtension(der: Uint8Array, oid: string, inner: Tlv, facts: MutableFacts): void {
  switch (oid) {
    case OID.subjectAltName:
      if (inner.tag !== Tag.sequence) throw new DerError("subjectAltName: not a SEQUENCE");
      for (const name of children(der, inner, 256)) {
        if (!GENERAL_NAME_TAGS.has(name.tag))
          throw new DerError(`subjectAltName: a name with tag 0x${name.tag.toString(16)} is not DER`);
        if (name.tag === URI_NAME)
          facts.uris.push(Buffer.from(der.subarray(name.start, name.end)).toString("latin1"));
        else facts.otherSans++;
      }
      break;
    case OID.basicConstraints: {
      if (inner.tag !== Tag.sequence) throw new DerError("basicConstraints: not a SEQUENCE");
      const bc = children(der, inner, 2);
      let j = 0;
      facts.ca = bc[j]?.tag === Tag.boolean ? booleanValue(der, bc[j++]!) : false;
      if (bc[j] !== undefined) {
        if (bc[j]!.tag !== Tag.integer) throw new DerError("basicConstraints: bad pathLenConstraint");
        facts.pathLength = smallInteger(der, bc[j++]!);
      }
      if (j !== bc.length) throw new DerError("basicConstraints: unexpected field");
      break;
    }
    case OID.keyUsage:
      if (inner.tag !== Tag.bitString) throw new DerError("keyUsage: not a BIT STRING");
      facts.keyUsages = bitFlags(der, inner);
      break;
    case OID.extendedKeyUsage:
      if (inner.tag !== Tag.sequence) throw new DerError("extendedKeyUsage: not a SEQUENCE");
      facts.extendedKeyUsages = children(der, inner, 64).map((p) => {
        if (p.tag !== Tag.oid) throw new DerError("extendedKeyUsage: not an OBJECT IDENTIFIER");
        return oidText(der, p);
      });
      break;
  }
}
