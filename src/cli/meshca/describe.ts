/** The human summary of a certificate that `meshca inspect` prints. */
import type { X509Certificate } from "node:crypto";
import { formatDuration } from "../../config/units.ts";
import { countdown } from "./context.ts";

function describeKey(cert: X509Certificate): string {
  const key = cert.publicKey;
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "ec": {
      const curve = details.namedCurve;
      const name =
        curve === "prime256v1"
          ? "P-256"
          : curve === "secp384r1"
            ? "P-384"
            : curve === "secp521r1"
              ? "P-521"
              : curve;
      return `ECDSA ${name}`;
    }
    case "rsa":
      return `RSA ${details.modulusLength} bits`;
    case "ed25519":
      return "Ed25519";
    default:
      return String(key.asymmetricKeyType);
  }
}

/** What `meshca inspect` shows of one certificate (`--json` prints these objects). */
export interface CertificateFacts {
  readonly role: "root CA" | "intermediate CA" | "leaf";
  readonly spiffeIds: string[];
  readonly subject: string;
  readonly issuer: string;
  readonly serial: string;
  readonly notBefore: string;
  readonly notAfter: string;
  /** `expires in 23h 59m`, `expired 2h ago`, `not valid for another 5m`. */
  readonly validity: string;
  readonly key: string;
  readonly ca: boolean;
  readonly otherSans: string[];
  readonly extendedKeyUsage: string[];
  readonly sha256: string;
}

export function certificateFacts(cert: X509Certificate, now: number): CertificateFacts {
  const sans = (cert.subjectAltName ?? "").split(/,\s*/).filter((s) => s.length > 0);
  const selfSigned = cert.subject === cert.issuer && cert.checkIssued(cert);
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  return {
    role: cert.ca ? (selfSigned ? "root CA" : "intermediate CA") : "leaf",
    spiffeIds: sans.filter((s) => s.startsWith("URI:")).map((s) => s.slice(4)),
    subject: cert.subject.replaceAll("\n", ", "),
    issuer: cert.issuer.replaceAll("\n", ", "),
    serial: cert.serialNumber.toLowerCase(),
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    validity:
      now < notBefore.getTime()
        ? `not valid for another ${formatDuration(notBefore.getTime() - now)}`
        : countdown(notAfter, now),
    key: describeKey(cert),
    ca: cert.ca,
    otherSans: sans.filter((s) => !s.startsWith("URI:")),
    extendedKeyUsage: (cert.keyUsage ?? []).map(ekuName),
    sha256: cert.fingerprint256,
  };
}

/** The human summary `meshca inspect` prints for one certificate. */
export function describeCertificate(cert: X509Certificate, now: number, title: string): string[] {
  const f = certificateFacts(cert, now);
  const lines = [
    `${title}: ${f.role}`,
    `  SPIFFE ID:   ${f.spiffeIds.length === 0 ? "(none)" : f.spiffeIds.join(", ")}`,
    `  subject:     ${f.subject || "(empty)"}`,
    `  issuer:      ${f.issuer || "(empty)"}`,
    `  serial:      ${f.serial}`,
    `  not before:  ${f.notBefore}`,
    `  not after:   ${f.notAfter} (${f.validity})`,
    `  key:         ${f.key}`,
    `  CA:          ${f.ca ? "yes" : "no"}`,
  ];
  if (f.otherSans.length > 0) lines.push(`  other SANs:  ${f.otherSans.join(", ")}`);
  if (f.extendedKeyUsage.length > 0) lines.push(`  ext usage:   ${f.extendedKeyUsage.join(", ")}`);
  lines.push(`  sha256:      ${f.sha256}`);
  return lines;
}

function ekuName(oid: string): string {
  return oid === "1.3.6.1.5.5.7.3.1" ? "serverAuth" : oid === "1.3.6.1.5.5.7.3.2" ? "clientAuth" : oid;
}
