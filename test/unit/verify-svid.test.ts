/**
 * verifySvid against certificates that each break one X.509-SVID rule, generated here with the same
 * builder the CA uses, and the valid cases beside them.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { CertificateAuthority, createTrustDomain } from "../../src/ca/authority.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { parseBundle, SvidVerifier, verifySvid } from "../../src/ca/verify.ts";
import {
  buildCertificate,
  Eku,
  generateKeyPair,
  importSigningKey,
  KeyUsage,
  parseCertificate,
  randomSerial,
} from "../../src/ca/x509.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { WeftError } from "../../src/core/errors.ts";

const TD = "weft.local";
const HOUR = 3_600_000;
const material = await createTrustDomain({ trustDomain: TD });
const other = await createTrustDomain({ trustDomain: TD });
const bundle = parseBundle(material.bundlePem, TD);
const interKey = await importSigningKey(material.intermediateKeyPem);
const interCert = parseCertificate(material.intermediateCertPem);
const now = Date.now();

interface LeafSpec {
  uris?: string[];
  ca?: boolean;
  keyUsages?: number;
  notBefore?: number;
  notAfter?: number;
  signKey?: CryptoKey;
  signCert?: ReturnType<typeof parseCertificate>;
}
type CryptoKey = Awaited<ReturnType<typeof importSigningKey>>;

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
      extendedKeyUsages: [Eku.serverAuth, Eku.clientAuth],
      uris: spec.uris ?? [`spiffe://${TD}/ns/default/sa/web`],
    },
    { key: spec.signKey ?? interKey, cert: spec.signCert ?? interCert },
  );
}

/** An intermediate under the real root with chosen flaws. */
async function intermediate(opts: { ca: boolean; keyUsages: number; uri: string }) {
  const keys = await generateKeyPair();
  const rootKey = await importSigningKey(material.rootKeyPem!);
  const pem = await buildCertificate(
    {
      serial: randomSerial(),
      subject: "CN=bad intermediate,O=Weft",
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + HOUR),
      publicKey: keys.publicKey,
      ca: opts.ca,
      keyUsages: opts.keyUsages,
      uris: [opts.uri],
    },
    { key: rootKey, cert: parseCertificate(material.rootCertPem) },
  );
  return { pem, key: keys.privateKey, cert: parseCertificate(pem) };
}

function tamper(pem: string): Buffer {
  const der = Buffer.from(new X509Certificate(pem).raw);
  der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff;
  return der;
}

const chainOf = (l: string) => [l, material.intermediateCertPem];

const cases: Array<[string, () => Promise<(Buffer | string)[]>, string]> = [
  [
    "two URI SANs",
    async () => chainOf(await leaf({ uris: [`spiffe://${TD}/ns/a/sa/b`, `spiffe://${TD}/ns/c/sa/d`] })),
    "multiple_uri_sans",
  ],
  ["no URI SAN", async () => chainOf(await leaf({ uris: [] })), "no_uri_san"],
  [
    "a URI that is not spiffe://",
    async () => chainOf(await leaf({ uris: ["https://weft.local/web"] })),
    "not_spiffe_id",
  ],
  [
    "a SPIFFE ID with a query",
    async () => chainOf(await leaf({ uris: [`spiffe://${TD}/ns/a/sa/b?x=1`] })),
    "not_spiffe_id",
  ],
  [
    "a leaf naming only the trust domain",
    async () => chainOf(await leaf({ uris: [`spiffe://${TD}`] })),
    "leaf_without_path",
  ],
  ["a CA leaf", async () => chainOf(await leaf({ ca: true })), "leaf_is_ca"],
  [
    "keyCertSign on a leaf",
    async () => chainOf(await leaf({ keyUsages: KeyUsage.digitalSignature | KeyUsage.keyCertSign })),
    "leaf_key_cert_sign",
  ],
  [
    "cRLSign on a leaf",
    async () => chainOf(await leaf({ keyUsages: KeyUsage.digitalSignature | KeyUsage.cRLSign })),
    "leaf_crl_sign",
  ],
  [
    "no digitalSignature",
    async () => chainOf(await leaf({ keyUsages: KeyUsage.keyEncipherment })),
    "leaf_no_digital_signature",
  ],
  [
    "another trust domain",
    async () => chainOf(await leaf({ uris: ["spiffe://example.org/ns/a/sa/b"] })),
    "wrong_trust_domain",
  ],
  [
    "expired",
    async () => chainOf(await leaf({ notBefore: now - 3 * HOUR, notAfter: now - HOUR })),
    "expired",
  ],
  [
    "not yet valid",
    async () => chainOf(await leaf({ notBefore: now + HOUR, notAfter: now + 2 * HOUR })),
    "not_yet_valid",
  ],
  [
    "an untrusted root (same trust domain name, other CA)",
    async () => {
      const ca = new CertificateAuthority(other);
      return [(await ca.issue({ id: `spiffe://${TD}/ns/a/sa/b` })).chainPem];
    },
    "untrusted_root",
  ],
  ["a tampered signature", async () => [tamper(await leaf()), material.intermediateCertPem], "bad_signature"],
  [
    "an intermediate that is not a CA",
    async () => {
      const bad = await intermediate({ ca: false, keyUsages: KeyUsage.keyCertSign, uri: `spiffe://${TD}` });
      return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
    },
    "intermediate_not_ca",
  ],
  [
    "an intermediate without keyCertSign",
    async () => {
      const bad = await intermediate({ ca: true, keyUsages: KeyUsage.cRLSign, uri: `spiffe://${TD}` });
      return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
    },
    "intermediate_no_key_cert_sign",
  ],
  [
    "a path in a signing certificate's SPIFFE ID",
    async () => {
      const bad = await intermediate({
        ca: true,
        keyUsages: KeyUsage.keyCertSign,
        uri: `spiffe://${TD}/ns/x`,
      });
      return [await leaf({ signKey: bad.key, signCert: bad.cert }), bad.pem];
    },
    "path_in_signing_cert",
  ],
  ["a leaf without its intermediate", async () => [await leaf()], "untrusted_root"],
  [
    "an issuer with the right name but another key",
    async () => {
      const impostorKey = (await generateKeyPair()).privateKey;
      return chainOf(await leaf({ signKey: impostorKey }));
    },
    "bad_signature",
  ],
  ["no certificate at all", async () => [], "no_certificate"],
  [
    "bytes that are not a certificate",
    async () => [Buffer.from("not a certificate")],
    "malformed_certificate",
  ],
];

for (const [name, make, reason] of cases) {
  test(`refused: ${name} → ${reason}`, async () => {
    const chain = await make();
    assert.throws(
      () => verifySvid(chain, bundle),
      (err: unknown) => err instanceof WeftError && err.code === "E_SVID" && err.reason === reason,
    );
  });
}

test("valid: a leaf with its intermediate, as PEM list or one PEM text, with a DNS SAN beside the URI", async () => {
  const ca = new CertificateAuthority(material);
  const issued = await ca.issue({ id: `spiffe://${TD}/ns/default/sa/web` });
  assert.equal(verifySvid(issued.chainPem, bundle).toString(), `spiffe://${TD}/ns/default/sa/web`);
  assert.ok(
    verifySvid(chainOf(issued.certPem), bundle).equals(SpiffeId.parse(`spiffe://${TD}/ns/default/sa/web`)),
  );
  const server = await ca.issueServer({ dnsNames: ["ca.weft.local"], ipAddresses: ["127.0.0.1"] });
  assert.equal(verifySvid(server.chainPem, bundle).toString(), `spiffe://${TD}/weft/ca`);
});

test("SvidVerifier caches the structure but checks expiry against its clock on every call", async () => {
  const clock = new ManualClock(now);
  const verifier = new SvidVerifier(bundle, { clock });
  const pem = await leaf({ notAfter: now + 60_000 });
  const chain = [new X509Certificate(pem).raw, new X509Certificate(material.intermediateCertPem).raw];
  assert.equal(verifier.verify(chain).toString(), `spiffe://${TD}/ns/default/sa/web`);
  clock.advance(120_000);
  assert.throws(
    () => verifier.verify(chain),
    (e: unknown) => e instanceof WeftError && e.reason === "expired",
  );
  verifier.setBundle(parseBundle(other.bundlePem, TD));
  clock.advance(-120_000 + 1);
  assert.throws(
    () => verifier.verify(chain),
    (e: unknown) => e instanceof WeftError && e.reason === "untrusted_root",
  );
});
