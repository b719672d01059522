/**
 * cert-facts.ts (the sidecar's DER reader) against @peculiar/x509 (the library the CA builds with, and
 * what verify.ts read extensions with before): on every certificate of the SVID fixture table, the CA's
 * own roots, intermediates, leaves and server certificates, and certificates made by `openssl req`, the
 * two must read the same facts. Then hostile input: truncations and byte flips of a real certificate
 * either read or fail with E_SVID malformed_certificate, never another exception.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import fc from "fast-check";
import { CertificateAuthority } from "../../src/ca/authority.ts";
import { type CertFacts, certFacts, Eku, ENFORCED_EXTENSIONS } from "../../src/ca/cert-facts.ts";
import { normalizeSerial, x509 } from "../../src/ca/x509.ts";
import { WeftError } from "../../src/core/errors.ts";
import { makeFixtures, TD } from "../helpers/svid-fixtures.ts";

const run = promisify(execFile);

/** The facts as @peculiar/x509 reads them (verify.ts's former implementation). */
function peculiarFacts(der: Uint8Array): CertFacts {
  const cert = new x509.X509Certificate(der as unknown as ArrayBuffer);
  const names = cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [];
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  return {
    uris: names.filter((n) => n.type === "url").map((n) => n.value),
    otherSans: names.filter((n) => n.type !== "url").length,
    ca: bc?.ca,
    pathLength: bc?.pathLength,
    keyUsages: cert.getExtension(x509.KeyUsagesExtension)?.usages,
    extendedKeyUsages: eku ? [...eku.usages].map(String) : undefined,
    unknownCritical: [...cert.extensions]
      .filter((e) => e.critical && !ENFORCED_EXTENSIONS.has(e.type))
      .map((e) => e.type),
    serial: normalizeSerial(cert.serialNumber),
  };
}

function ders(items: readonly (Buffer | string)[]): Buffer[] {
  return items.flatMap((item) => {
    if (typeof item !== "string") return [item];
    const blocks = item.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    return blocks.map((b) => new X509Certificate(b).raw);
  });
}

const { material, cases, valid } = await makeFixtures();

test("the DER reader reads what @peculiar/x509 reads, on every certificate of the SVID table", async () => {
  const all: Buffer[] = ders([material.bundlePem, material.intermediateCertPem]);
  for (const c of [...cases, ...valid]) {
    let chain: (Buffer | string)[];
    try {
      chain = await c.make();
    } catch {
      continue;
    }
    for (const der of ders(chain)) {
      try {
        new X509Certificate(der);
      } catch {
        continue; // not a certificate at all: node:crypto refuses it before the facts are read
      }
      all.push(der);
    }
  }
  const ca = new CertificateAuthority(material);
  all.push(...ders([(await ca.issue({ id: `spiffe://${TD}/ns/a/sa/b` })).chainPem]));
  all.push(
    ...ders([
      (await ca.issueServer({ dnsNames: ["ca.weft.local"], ipAddresses: ["127.0.0.1", "::1"] })).chainPem,
    ]),
  );
  assert.ok(all.length >= 40, `only ${all.length} certificates compared`);
  const kinds = new Set<string>();
  for (const der of all) {
    const mine = certFacts(der);
    assert.deepEqual(mine, peculiarFacts(der));
    kinds.add(JSON.stringify([mine.ca, mine.pathLength, mine.keyUsages, mine.extendedKeyUsages?.length]));
    if (mine.unknownCritical.length > 0) kinds.add("unknown critical");
    if (mine.uris.length > 1) kinds.add("two URIs");
  }
  // The table really covers the facts: CA and leaf, path lengths, key usages, EKUs, critical extensions.
  assert.ok(kinds.size >= 8, `only ${kinds.size} kinds of certificate: ${[...kinds].join(" ")}`);
  assert.ok(kinds.has("unknown critical") && kinds.has("two URIs"));
});

/** `openssl req -x509` (P-256, O=Weft, one day) with one `-addext`; the path of `<name>.pem` in `dir`. */
async function opensslSelfSigned(dir: string, name: string, ext: string, serial: string): Promise<string> {
  const out = join(dir, `${name}.pem`);
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    join(dir, `${name}.key`),
    "-subj",
    "/O=Weft",
    "-days",
    "1",
    "-set_serial",
    serial,
    "-addext",
    ext,
    "-out",
    out,
  ]);
  return out;
}

test("the DER reader reads certificates made by openssl the same as @peculiar/x509", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-cert-facts-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const exts = [
    "subjectAltName=URI:spiffe://x.test/ns/a/sa/b,DNS:a.test,IP:10.0.0.1,email:a@x.test",
    "basicConstraints=critical,CA:TRUE,pathlen:3",
    "keyUsage=critical,digitalSignature,keyCertSign,cRLSign,decipherOnly",
    "extendedKeyUsage=serverAuth,clientAuth,codeSigning,1.2.3.4.5.6.7.8.9.4294967297",
    "basicConstraints=CA:FALSE",
    "nameConstraints=critical,permitted;DNS:x.test",
    "certificatePolicies=critical,1.2.3.4",
    // A UUID-form OID (128-bit arc) as an extension and as an EKU purpose: read, not refused.
    "2.25.329800735698586629295641978511506172918=ASN1:NULL",
    "extendedKeyUsage=clientAuth,2.25.329800735698586629295641978511506172918",
    // cA written as BOOLEAN 0x01 (BER, not DER): TRUE, as OpenSSL reads it.
    "2.5.29.19=critical,DER:30:03:01:01:01",
  ];
  for (const [i, ext] of exts.entries()) {
    const out = await opensslSelfSigned(dir, `c${i}`, ext, i === 0 ? "0x00ff00" : String(i + 1));
    const der = new X509Certificate(await readFile(out, "utf8")).raw;
    const ours = certFacts(der);
    const theirs = peculiarFacts(der);
    if (ext.startsWith("extendedKeyUsage=") && ext.includes("2.25.")) {
      // @peculiar/x509 prints a 128-bit arc in its own hex form; the dotted decimal is what OpenSSL prints.
      assert.deepEqual(ours.extendedKeyUsages, [
        Eku.clientAuth,
        "2.25.329800735698586629295641978511506172918",
      ]);
      assert.deepEqual({ ...ours, extendedKeyUsages: [] }, { ...theirs, extendedKeyUsages: [] }, ext);
    } else assert.deepEqual(ours, theirs, ext);
  }
});

test("hostile DER: truncated or flipped certificates read or fail with E_SVID malformed_certificate", async () => {
  const der = ders([(await valid[0]!.make())[0]!])[0]!;
  const check = (bytes: Uint8Array) => {
    try {
      certFacts(bytes);
    } catch (err) {
      assert.ok(
        err instanceof WeftError && err.code === "E_SVID" && err.reason === "malformed_certificate",
        `unexpected ${String(err)}`,
      );
    }
  };
  for (let n = 0; n < der.length; n++) check(der.subarray(0, n));
  fc.assert(
    fc.property(
      fc.array(fc.record({ at: fc.nat(der.length - 1), byte: fc.integer({ min: 0, max: 255 }) }), {
        minLength: 1,
        maxLength: 6,
      }),
      (flips) => {
        const bytes = Buffer.from(der);
        for (const f of flips) bytes[f.at] = f.byte;
        check(bytes);
      },
    ),
    { numRuns: 3000 },
  );
  // A length field claiming 4 GiB, an indefinite length, a duplicated extension: refused, not read.
  for (const bad of [
    Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30, 0x00]),
    Buffer.from([0x30, 0x80, 0x30, 0x00, 0x00, 0x00]),
    Buffer.from([0x30, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00]),
  ]) {
    assert.throws(
      () => certFacts(bad),
      (e: unknown) => e instanceof WeftError && e.reason === "malformed_certificate",
    );
  }
});

test("a certificate with the same extension twice is refused as malformed", async () => {
  const key = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "O=Weft",
    keys: key,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${TD}/a` }]),
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${TD}/b` }]),
    ],
  });
  assert.throws(
    () => certFacts(new Uint8Array(cert.rawData)),
    (e: unknown) => e instanceof WeftError && e.reason === "malformed_certificate" && /twice/.test(e.message),
  );
});

test("a URI SAN in constructed form is refused, not skipped (OpenSSL and node read it as a URI)", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-cert-facts-san-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // SAN = SEQUENCE { [6] "spiffe://td/a", [6] constructed { OCTET STRING "spiffe://td/b" } }
  const san =
    "2.5.29.17=DER:30:20:86:0d:73:70:69:66:66:65:3a:2f:2f:74:64:2f:61:a6:0f:04:0d:73:70:69:66:66:65:3a:2f:2f:74:64:2f:62";
  const out = await opensslSelfSigned(dir, "c", san, "1");
  const cert = new X509Certificate(await readFile(out, "utf8"));
  assert.match(cert.subjectAltName ?? "", /spiffe:\/\/td\/b/, "node reads the second URI");
  assert.throws(
    () => certFacts(cert.raw),
    (e: unknown) => e instanceof WeftError && e.reason === "malformed_certificate" && /0xa6/.test(e.message),
  );
});
