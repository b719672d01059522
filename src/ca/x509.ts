/**
 * The only importer of @peculiar/x509: key pairs, certificate and CSR building, and reading CSRs (the CA
 * path). Everything else in Weft speaks PEM strings and node:crypto's X509Certificate; the certificate
 * facts the SVID rules read come from cert-facts.ts, which needs no ASN.1 library. The shared names
 * (key usage flags, EKU purposes, PEM splitting, serials) are re-exported here for the CA code.
 */
import "reflect-metadata";
import nodeCrypto, { randomBytes, type webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { WeftError } from "../core/errors.ts";

x509.cryptoProvider.set(nodeCrypto.webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/** WebCrypto key type (the project compiles without the DOM library). */
export type CryptoKey = webcrypto.CryptoKey;
type EcKeyImportParams = webcrypto.EcKeyImportParams;
type RsaHashedImportParams = webcrypto.RsaHashedImportParams;
type Algorithm = webcrypto.Algorithm;
type EcKeyGenParams = webcrypto.EcKeyGenParams;
type RsaHashedKeyGenParams = webcrypto.RsaHashedKeyGenParams;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const subtle = nodeCrypto.webcrypto.subtle;

import { KEY_ALGORITHMS, type KeyAlgorithm } from "./key-policy.ts";

export {
  type CertFacts,
  certFacts,
  Eku,
  ENFORCED_EXTENSIONS,
  KeyUsage,
  normalizeSerial,
  splitPemCertificates,
} from "./cert-facts.ts";

export { KEY_ALGORITHMS, type KeyAlgorithm };

type Alg = EcKeyImportParams | RsaHashedImportParams | Algorithm;

function keyParams(alg: KeyAlgorithm): {
  gen: EcKeyGenParams | RsaHashedKeyGenParams | Algorithm;
  sign: Alg;
} {
  switch (alg) {
    case "ecdsa-p256":
      return { gen: { name: "ECDSA", namedCurve: "P-256" }, sign: { name: "ECDSA", hash: "SHA-256" } as Alg };
    case "ecdsa-p384":
      return { gen: { name: "ECDSA", namedCurve: "P-384" }, sign: { name: "ECDSA", hash: "SHA-384" } as Alg };
    case "rsa-2048":
    case "rsa-3072":
    case "rsa-4096":
      return {
        gen: {
          name: "RSASSA-PKCS1-v1_5",
          modulusLength: Number(alg.slice(4)),
          publicExponent: new Uint8Array([1, 0, 1]),
          hash: "SHA-256",
        },
        sign: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } as Alg,
      };
    case "ed25519":
      return { gen: { name: "Ed25519" }, sign: { name: "Ed25519" } };
  }
}

export interface KeyPair {
  readonly algorithm: KeyAlgorithm;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
}

export async function generateKeyPair(algorithm: KeyAlgorithm = "ecdsa-p256"): Promise<KeyPair> {
  if (!KEY_ALGORITHMS.includes(algorithm)) {
    throw new WeftError("E_USAGE", `key algorithm "${algorithm}" is not one of ${KEY_ALGORITHMS.join(", ")}`);
  }
  const pair = (await subtle.generateKey(keyParams(algorithm).gen as EcKeyGenParams, true, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  return { algorithm, privateKey: pair.privateKey, publicKey: pair.publicKey };
}

function pem(label: string, der: ArrayBuffer | Uint8Array): string {
  const b64 = Buffer.from(der as ArrayBuffer).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, "$&\n")}-----END ${label}-----\n`;
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  return pem("PRIVATE KEY", await subtle.exportKey("pkcs8", key));
}

/** Import a PKCS#8 PEM private key (as `exportPrivateKeyPem` writes) for signing. */
export async function importSigningKey(
  keyPem: string,
  algorithm: KeyAlgorithm = "ecdsa-p256",
): Promise<CryptoKey> {
  const m = /-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/.exec(keyPem);
  if (!m)
    throw new WeftError("E_PEM", "expected a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)", {
      reason: "bad_key_pem",
    });
  const der = Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
  try {
    return await subtle.importKey("pkcs8", der, keyParams(algorithm).gen as EcKeyImportParams, true, [
      "sign",
    ]);
  } catch (err) {
    throw new WeftError("E_PEM", `the private key does not load as ${algorithm}`, {
      reason: "bad_key",
      cause: err,
    });
  }
}

/** A positive, random serial of 16 bytes (the top bit cleared so DER keeps it positive). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString("hex");
}

export interface CertProfile {
  readonly serial: string;
  readonly subject: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly publicKey: CryptoKey | x509.PublicKey;
  readonly ca: boolean;
  /** Path length constraint for CAs (undefined: none). */
  readonly pathLength?: number;
  /** Key usage flags: the test-only builder passes odd ones on purpose. */
  readonly keyUsages: number;
  readonly keyUsageCritical?: boolean;
  readonly extendedKeyUsages?: readonly string[];
  /** Extra extensions as they are (the test fixtures add unknown critical ones). */
  readonly extraExtensions?: readonly x509.Extension[];
  readonly uris: readonly string[];
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
}

/**
 * Build and sign a certificate. `issuer` absent: self-signed with `signingKey`'s pair.
 */
export async function buildCertificate(
  profile: CertProfile,
  signer: { key: CryptoKey; cert?: x509.X509Certificate; algorithm?: KeyAlgorithm },
): Promise<string> {
  const sans: x509.JsonGeneralName[] = [
    ...profile.uris.map((value) => ({ type: "url" as const, value })),
    ...(profile.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
    ...(profile.ipAddresses ?? []).map((value) => ({ type: "ip" as const, value })),
  ];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(profile.ca, profile.pathLength, true),
    new x509.KeyUsagesExtension(profile.keyUsages, profile.keyUsageCritical ?? true),
    await x509.SubjectKeyIdentifierExtension.create(profile.publicKey as CryptoKey),
  ];
  if (signer.cert) extensions.push(await x509.AuthorityKeyIdentifierExtension.create(signer.cert));
  if (profile.extendedKeyUsages && profile.extendedKeyUsages.length > 0) {
    extensions.push(new x509.ExtendedKeyUsageExtension([...profile.extendedKeyUsages], false));
  }
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));
  extensions.push(...(profile.extraExtensions ?? []));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: profile.serial,
    subject: profile.subject,
    issuer: signer.cert ? signer.cert.subject : profile.subject,
    notBefore: profile.notBefore,
    notAfter: profile.notAfter,
    publicKey: profile.publicKey as CryptoKey,
    signingKey: signer.key,
    signingAlgorithm: keyParams(signer.algorithm ?? "ecdsa-p256").sign,
    extensions,
  });
  return cert.toString("pem").replace(/\r\n/g, "\n").trimEnd() + "\n";
}

export function parseCertificate(certPem: string): x509.X509Certificate {
  return new x509.X509Certificate(certPem);
}

export interface CsrFacts {
  readonly uris: string[];
  readonly otherSans: string[];
  readonly requestsCa: boolean;
  readonly publicKey: x509.PublicKey;
  /** The CSR's signature algorithm: WebCrypto name and hash ("SHA-1", "SHA-256", ...; none for Ed25519). */
  readonly signatureAlgorithm: { name: string; hash: string | undefined };
  readonly signatureValid: boolean;
}

/** Parse a PEM CSR and check its self-signature; throws `E_PEM` when it is not a CSR at all. */
export async function readCsr(csrPem: string): Promise<CsrFacts> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    if (!/-----BEGIN CERTIFICATE REQUEST-----/.test(csrPem)) throw new Error("no CERTIFICATE REQUEST block");
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new WeftError("E_PEM", "the request is not a PEM PKCS#10 certificate request", {
      reason: "bad_csr_pem",
      cause: err,
    });
  }
  const sigAlg = csr.signatureAlgorithm as { name?: string; hash?: { name?: string } | string };
  const signatureAlgorithm = {
    name: String(sigAlg?.name ?? "unknown"),
    hash: typeof sigAlg?.hash === "string" ? sigAlg.hash : sigAlg?.hash?.name,
  };
  let signatureValid = false;
  try {
    signatureValid = await csr.verify();
  } catch {
    signatureValid = false;
  }
  const sanExt = csr.getExtension("2.5.29.17");
  const san = sanExt ? new x509.SubjectAlternativeNameExtension(sanExt.rawData) : undefined;
  const names = san?.names.items ?? [];
  const bcExt = csr.getExtension("2.5.29.19");
  const bc = bcExt ? new x509.BasicConstraintsExtension(bcExt.rawData) : undefined;
  return {
    uris: names.filter((n) => n.type === "url").map((n) => n.value),
    otherSans: names.filter((n) => n.type !== "url").map((n) => `${n.type}:${n.value}`),
    requestsCa: bc?.ca === true,
    publicKey: csr.publicKey,
    signatureAlgorithm,
    signatureValid,
  };
}

/** Make a CSR for one URI SAN with a fresh key pair. */
export async function buildCsr(
  uri: string,
  keyAlgorithm: KeyAlgorithm,
): Promise<{ csrPem: string; keyPem: string }> {
  const keys = await generateKeyPair(keyAlgorithm);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "O=Weft",
    keys: { privateKey: keys.privateKey, publicKey: keys.publicKey },
    signingAlgorithm: keyParams(keyAlgorithm).sign,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: uri }], false)],
  });
  return {
    csrPem: csr.toString("pem").replace(/\r\n/g, "\n"),
    keyPem: await exportPrivateKeyPem(keys.privateKey),
  };
}

/** A CSR with arbitrary SANs and CA bit: the tests use it to ask for more than a workload may have. */
export async function buildCsrWith(opts: {
  uris: string[];
  dnsNames?: string[];
  ca?: boolean;
  signWith?: CryptoKey;
}): Promise<{ csrPem: string; keyPem: string }> {
  const keys = await generateKeyPair("ecdsa-p256");
  const sans = [
    ...opts.uris.map((value) => ({ type: "url" as const, value })),
    ...(opts.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
  ];
  const extensions: x509.Extension[] = [];
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));
  if (opts.ca) extensions.push(new x509.BasicConstraintsExtension(true, undefined, true));
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "O=Weft",
    keys: { privateKey: opts.signWith ?? keys.privateKey, publicKey: keys.publicKey },
    signingAlgorithm: keyParams("ecdsa-p256").sign,
    extensions,
  });
  return {
    csrPem: csr.toString("pem").replace(/\r\n/g, "\n"),
    keyPem: await exportPrivateKeyPem(keys.privateKey),
  };
}

export { x509 };
