/**
 * Certificates that each break one X.509-SVID or RFC 5280 rule, made with the builder the CA uses, for
 * two suites: verify-svid.test.ts (Weft's verdict and reason) and verify-openssl.test.ts (the same chain
 * through `openssl verify -x509_strict`). Each case says the role the peer plays (client or server), the
 * reason Weft must give, and what OpenSSL says: `refuses` for the X.509 rules both stacks enforce,
 * `accepts` for SPIFFE-only rules OpenSSL has no notion of, `n/a` when there is no chain to give it.
 */
import { X509Certificate } from "node:crypto";
import { CertificateAuthority, createTrustDomain } from "../../src/ca/authority.ts";
import { parseBundle } from "../../src/ca/verify.ts";
import {
  buildCertificate,
  type CryptoKey,
  Eku,
  exportPrivateKeyPem,
  generateKeyPair,
  importSigningKey,
  KeyUsage,
  parseCertificate,
  randomSerial,
  x509,
} from "../../src/ca/x509.ts";

export const TD = "weft.local";
const HOUR = 3_600_000;

export interface SvidCase {
  readonly name: string;
  /** The presented chain, leaf first (DER or PEM). */
  readonly make: () => Promise<(Buffer | string)[]>;
  readonly role: "client" | "server";
  readonly reason: string;
  readonly openssl: "refuses" | "accepts" | "n/a";
}

/** A critical extension nobody knows (private OID, NULL value). */
export function unknownCritical(): x509.Extension {
  return new x509.Extension("1.3.6.1.4.1.55555.1.1", true, new Uint8Array([0x05, 0x00]));
}

/**
 * A workload leaf signed by a CA's intermediate with chosen SPIFFE ID and EKUs (the CA itself would
 * never sign these): key and chain (leaf + intermediate).
 */
export async function leafUnder(
  ca: { intermediateKeyPem: string; intermediateCertPem: string },
  spec: { uri: string; ekus?: string[]; now?: number },
): Promise<{ keyPem: string; chainPem: string }> {
  const now = spec.now ?? Date.now();
  const keys = await generateKeyPair();
  const certPem = await buildCertificate(
    {
      serial: randomSerial(),
      subject: "O=Weft",
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + HOUR),
      publicKey: keys.publicKey,
      ca: false,
      keyUsages: KeyUsage.digitalSignature,
      extendedKeyUsages: spec.ekus ?? [Eku.serverAuth, Eku.clientAuth],
      uris: [spec.uri],
    },
    { key: await importSigningKey(ca.intermediateKeyPem), cert: parseCertificate(ca.intermediateCertPem) },
  );
  return { keyPem: await exportPrivateKeyPem(keys.privateKey), chainPem: certPem + ca.intermediateCertPem };
}

export async function makeFixtures() {
  const material = await createTrustDomain({ trustDomain: TD });
  const other = await createTrustDomain({ trustDomain: TD });
  const bundle = parseBundle(material.bundlePem, TD);
  const interKey = await importSigningKey(material.intermediateKeyPem);
  const interCert = parseCertificate(material.intermediateCertPem);
  const rootKey = await importSigningKey(material.rootKeyPem!);
  const rootCert = parseCertificate(material.rootCertPem);
  const now = Date.now();

  interface LeafSpec {
    uris?: string[];
    ca?: boolean;
    keyUsages?: number;
    ekus?: string[];
    notBefore?: number;
    notAfter?: number;
    signKey?: CryptoKey;
    signCert?: x509.X509Certificate;
    extra?: x509.Extension[];
  }

  async function leaf(spec: LeafSpec = {}): Promise<string> {
    const keys = await generateKeyPair();
    return buildCertificate(
      {
        serial: randomSerial(),
        subject: "O=Weft",
        notBefore: new Date(spec.notBefore ?? now - HOUR),
        notAfter: new Date(spec.notAfter ?? now + HOUR),
        publicKey: keys.publicKey,
        ca: spec.ca ?? false,
        keyUsages: spec.keyUsages ?? KeyUsage.digitalSignature,
        extendedKeyUsages: spec.ekus ?? [Eku.serverAuth, Eku.clientAuth],
        uris: spec.uris ?? [`spiffe://${TD}/ns/default/sa/web`],
        ...(spec.extra ? { extraExtensions: spec.extra } : {}),
      },
      { key: spec.signKey ?? interKey, cert: spec.signCert ?? interCert },
    );
  }

  /** A signing certificate with chosen flaws, under the real root (or under `parent`). */
  async function signing(opts: {
    ca: boolean;
    keyUsages: number;
    uri: string;
    ekus?: string[];
    pathLength?: number;
    extra?: x509.Extension[];
    parent?: { key: CryptoKey; cert: x509.X509Certificate };
  }) {
    const keys = await generateKeyPair();
    const pem = await buildCertificate(
      {
        serial: randomSerial(),
        subject: `CN=test signing ${randomSerial().slice(0, 8)},O=Weft`,
        notBefore: new Date(now - HOUR),
        notAfter: new Date(now + HOUR),
        publicKey: keys.publicKey,
        ca: opts.ca,
        ...(opts.pathLength === undefined ? {} : { pathLength: opts.pathLength }),
        keyUsages: opts.keyUsages,
        ...(opts.ekus ? { extendedKeyUsages: opts.ekus } : {}),
        ...(opts.extra ? { extraExtensions: opts.extra } : {}),
        uris: [opts.uri],
      },
      opts.parent ?? { key: rootKey, cert: rootCert },
    );
    return { pem, key: keys.privateKey, cert: parseCertificate(pem) };
  }

  function tamper(pem: string): Buffer {
    const der = Buffer.from(new X509Certificate(pem).raw);
    der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff;
    return der;
  }

  const chainOf = (l: string) => [l, material.intermediateCertPem];
  const signingTd = `spiffe://${TD}`;
  const cases: SvidCase[] = [
    // ---- RFC 5280 rules (both stacks refuse) ----
    {
      name: "a leaf with serverAuth only, as a client",
      make: async () => chainOf(await leaf({ ekus: [Eku.serverAuth] })),
      role: "client",
      reason: "eku_no_client_auth",
      openssl: "refuses",
    },
    {
      name: "a leaf with codeSigning only, as a client",
      make: async () => chainOf(await leaf({ ekus: [Eku.codeSigning] })),
      role: "client",
      reason: "eku_no_client_auth",
      openssl: "refuses",
    },
    {
      name: "a leaf with codeSigning only, as a server",
      make: async () => chainOf(await leaf({ ekus: [Eku.codeSigning] })),
      role: "server",
      reason: "eku_no_server_auth",
      openssl: "refuses",
    },
    {
      name: "a leaf with clientAuth only, as a server",
      make: async () => chainOf(await leaf({ ekus: [Eku.clientAuth] })),
      role: "server",
      reason: "eku_no_server_auth",
      openssl: "refuses",
    },
    {
      name: "an intermediate whose EKU allows serverAuth only, signing a client",
      make: async () => {
        const bad = await signing({
          ca: true,
          keyUsages: KeyUsage.keyCertSign,
          uri: signingTd,
          ekus: [Eku.serverAuth],
        });
        return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
      },
      role: "client",
      reason: "eku_no_client_auth",
      openssl: "refuses",
    },
    {
      name: "a sub-CA under the pathlen:0 intermediate",
      make: async () => {
        const sub = await signing({
          ca: true,
          keyUsages: KeyUsage.keyCertSign,
          uri: signingTd,
          parent: { key: interKey, cert: interCert },
        });
        return [await leaf({ signKey: sub.key, signCert: sub.cert }), sub.pem, material.intermediateCertPem];
      },
      role: "client",
      reason: "path_length_exceeded",
      openssl: "refuses",
    },
    {
      name: "a leaf with an unknown critical extension",
      make: async () => chainOf(await leaf({ extra: [unknownCritical()] })),
      role: "client",
      reason: "unknown_critical_extension",
      openssl: "refuses",
    },
    {
      name: "an intermediate with an unknown critical extension",
      make: async () => {
        const bad = await signing({
          ca: true,
          keyUsages: KeyUsage.keyCertSign,
          uri: signingTd,
          extra: [unknownCritical()],
        });
        return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
      },
      role: "server",
      reason: "unknown_critical_extension",
      openssl: "refuses",
    },
    {
      name: "expired",
      make: async () => chainOf(await leaf({ notBefore: now - 3 * HOUR, notAfter: now - HOUR })),
      role: "client",
      reason: "expired",
      openssl: "refuses",
    },
    {
      name: "not yet valid",
      make: async () => chainOf(await leaf({ notBefore: now + HOUR, notAfter: now + 2 * HOUR })),
      role: "server",
      reason: "not_yet_valid",
      openssl: "refuses",
    },
    {
      name: "an untrusted root (same trust domain name, other CA)",
      make: async () => {
        const ca = new CertificateAuthority(other);
        return [(await ca.issue({ id: `spiffe://${TD}/ns/a/sa/b` })).chainPem];
      },
      role: "client",
      reason: "untrusted_root",
      openssl: "refuses",
    },
    {
      name: "a tampered signature",
      make: async () => [tamper(await leaf()), material.intermediateCertPem],
      role: "client",
      reason: "bad_signature",
      openssl: "refuses",
    },
    {
      name: "an issuer with the right name but another key",
      make: async () => chainOf(await leaf({ signKey: (await generateKeyPair()).privateKey })),
      role: "server",
      reason: "bad_signature",
      openssl: "refuses",
    },
    {
      name: "an intermediate that is not a CA",
      make: async () => {
        const bad = await signing({ ca: false, keyUsages: KeyUsage.keyCertSign, uri: signingTd });
        return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
      },
      role: "client",
      reason: "intermediate_not_ca",
      openssl: "refuses",
    },
    {
      name: "an intermediate without keyCertSign",
      make: async () => {
        const bad = await signing({ ca: true, keyUsages: KeyUsage.cRLSign, uri: signingTd });
        return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
      },
      role: "client",
      reason: "intermediate_no_key_cert_sign",
      openssl: "refuses",
    },
    {
      name: "a leaf without its intermediate",
      make: async () => [await leaf()],
      role: "client",
      reason: "untrusted_root",
      openssl: "refuses",
    },
    {
      name: "no digitalSignature",
      make: async () => chainOf(await leaf({ keyUsages: KeyUsage.keyEncipherment })),
      role: "client",
      reason: "leaf_no_digital_signature",
      openssl: "refuses",
    },
    {
      name: "keyCertSign on a leaf",
      make: async () => chainOf(await leaf({ keyUsages: KeyUsage.digitalSignature | KeyUsage.keyCertSign })),
      role: "client",
      reason: "leaf_key_cert_sign",
      openssl: "refuses",
    },
    // ---- SPIFFE-only rules (OpenSSL has no such rule and accepts the chain) ----
    {
      name: "two URI SANs",
      make: async () =>
        chainOf(await leaf({ uris: [`spiffe://${TD}/ns/a/sa/b`, `spiffe://${TD}/ns/c/sa/d`] })),
      role: "client",
      reason: "multiple_uri_sans",
      openssl: "accepts",
    },
    {
      name: "no URI SAN",
      make: async () => chainOf(await leaf({ uris: [] })),
      role: "client",
      reason: "no_uri_san",
      openssl: "accepts",
    },
    {
      name: "a URI that is not spiffe://",
      make: async () => chainOf(await leaf({ uris: ["https://weft.local/web"] })),
      role: "client",
      reason: "not_spiffe_id",
      openssl: "accepts",
    },
    {
      name: "a SPIFFE ID with a query",
      make: async () => chainOf(await leaf({ uris: [`spiffe://${TD}/ns/a/sa/b?x=1`] })),
      role: "client",
      reason: "not_spiffe_id",
      openssl: "accepts",
    },
    {
      name: "a leaf naming only the trust domain",
      make: async () => chainOf(await leaf({ uris: [`spiffe://${TD}`] })),
      role: "client",
      reason: "leaf_without_path",
      openssl: "accepts",
    },
    {
      name: "a CA leaf",
      make: async () => chainOf(await leaf({ ca: true })),
      role: "client",
      reason: "leaf_is_ca",
      openssl: "accepts",
    },
    {
      name: "cRLSign on a leaf",
      make: async () => chainOf(await leaf({ keyUsages: KeyUsage.digitalSignature | KeyUsage.cRLSign })),
      role: "client",
      reason: "leaf_crl_sign",
      openssl: "accepts",
    },
    {
      name: "another trust domain",
      make: async () => chainOf(await leaf({ uris: ["spiffe://example.org/ns/a/sa/b"] })),
      role: "client",
      reason: "wrong_trust_domain",
      openssl: "accepts",
    },
    {
      name: "a path in a signing certificate's SPIFFE ID",
      make: async () => {
        const bad = await signing({ ca: true, keyUsages: KeyUsage.keyCertSign, uri: `spiffe://${TD}/ns/x` });
        return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
      },
      role: "client",
      reason: "path_in_signing_cert",
      openssl: "accepts",
    },
    // ---- not a chain at all ----
    {
      name: "no certificate at all",
      make: async () => [],
      role: "client",
      reason: "no_certificate",
      openssl: "n/a",
    },
    {
      name: "bytes that are not a certificate",
      make: async () => [Buffer.from("not a certificate")],
      role: "client",
      reason: "malformed_certificate",
      openssl: "n/a",
    },
  ];

  /** Chains both stacks accept: the EKU check is by role, and a leaf without EKU serves both roles. */
  const valid: Array<{ name: string; make: () => Promise<(Buffer | string)[]>; role: "client" | "server" }> =
    [
      { name: "the CA's own leaf, as a client", make: async () => chainOf(await leaf()), role: "client" },
      { name: "the CA's own leaf, as a server", make: async () => chainOf(await leaf()), role: "server" },
      {
        name: "serverAuth only, as a server",
        make: async () => chainOf(await leaf({ ekus: [Eku.serverAuth] })),
        role: "server",
      },
      {
        name: "clientAuth only, as a client",
        make: async () => chainOf(await leaf({ ekus: [Eku.clientAuth] })),
        role: "client",
      },
      {
        name: "no EKU extension, as a client",
        make: async () => chainOf(await leaf({ ekus: [] })),
        role: "client",
      },
    ];

  return { material, other, bundle, now, leaf, signing, chainOf, cases, valid };
}
