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

/** The human summary `meshca inspect` prints for one certificate. */
export function describeCertificate(cert: X509Certificate, now: number, title: string): string[] {
  const uris = (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((s) => s.startsWith("URI:"))
    .map((s) => s.slice(4));
  const others = (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((s) => s.length > 0 && !s.startsWith("URI:"));
  const selfSigned = cert.subject === cert.issuer && cert.checkIssued(cert);
  const role = cert.ca ? (selfSigned ? "root CA" : "intermediate CA") : "leaf";
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  const validity =
    now < notBefore.getTime()
      ? `not valid for another ${formatDuration(notBefore.getTime() - now)}`
      : countdown(notAfter, now);
  const lines = [
    `${title}: ${role}`,
    `  SPIFFE ID:   ${uris.length === 0 ? "(none)" : uris.join(", ")}`,
    `  subject:     ${cert.subject.replaceAll("\n", ", ") || "(empty)"}`,
    `  issuer:      ${cert.issuer.replaceAll("\n", ", ") || "(empty)"}`,
    `  serial:      ${cert.serialNumber.toLowerCase()}`,
    `  not before:  ${notBefore.toISOString()}`,
    `  not after:   ${notAfter.toISOString()} (${validity})`,
    `  key:         ${describeKey(cert)}`,
    `  CA:          ${cert.ca ? "yes" : "no"}`,
  ];
  if (others.length > 0) lines.push(`  other SANs:  ${others.join(", ")}`);
  if (cert.keyUsage && cert.keyUsage.length > 0)
    lines.push(`  ext usage:   ${cert.keyUsage.map(ekuName).join(", ")}`);
  lines.push(`  sha256:      ${cert.fingerprint256}`);
  return lines;
}

function ekuName(oid: string): string {
  return oid === "1.3.6.1.5.5.7.3.1" ? "serverAuth" : oid === "1.3.6.1.5.5.7.3.2" ? "clientAuth" : oid;
}
