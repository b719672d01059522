/**
 * verifySvid against certificates that each break one X.509-SVID or RFC 5280 rule (the fixtures in
 * test/helpers/svid-fixtures.ts, shared with the OpenSSL cross-check), and the valid cases beside them.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { CertificateAuthority } from "../../src/ca/authority.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { parseBundle, SvidVerifier, verifySvid } from "../../src/ca/verify.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { WeftError } from "../../src/core/errors.ts";
import { makeFixtures, TD } from "../helpers/svid-fixtures.ts";

const { material, other, bundle, now, leaf, chainOf, cases, valid } = await makeFixtures();

for (const c of cases) {
  test(`refused: ${c.name} → ${c.reason}`, async () => {
    const chain = await c.make();
    assert.throws(
      () => verifySvid(chain, bundle, { role: c.role }),
      (err: unknown) => err instanceof WeftError && err.code === "E_SVID" && err.reason === c.reason,
    );
  });
}

for (const v of valid) {
  test(`valid: ${v.name}`, async () => {
    const chain = await v.make();
    assert.equal(verifySvid(chain, bundle, { role: v.role }).toString(), `spiffe://${TD}/ns/default/sa/web`);
  });
}

test("SvidVerifier checks EKU by role and keeps the two verdicts apart in its cache", async () => {
  const verifier = new SvidVerifier(bundle);
  const { Eku } = await import("../../src/ca/x509.ts");
  const serverOnly = chainOf(await leaf({ ekus: [Eku.serverAuth] })).map((p) => new X509Certificate(p).raw);
  assert.equal(verifier.verify(serverOnly, "server").toString(), `spiffe://${TD}/ns/default/sa/web`);
  assert.throws(
    () => verifier.verify(serverOnly, "client"),
    (e: unknown) => e instanceof WeftError && e.reason === "eku_no_client_auth",
  );
  assert.equal(verifier.verify(serverOnly, "server").toString(), `spiffe://${TD}/ns/default/sa/web`);
});

test("SvidVerifier refuses a revoked leaf serial, also when the chain was verified (and cached) before", async () => {
  const verifier = new SvidVerifier(bundle);
  const pem = await leaf();
  const chain = chainOf(pem).map((p) => new X509Certificate(p).raw);
  verifier.verify(chain, "client");
  const serial = new X509Certificate(pem).serialNumber;
  verifier.setRevoked([serial.toUpperCase()]);
  assert.throws(
    () => verifier.verify(chain, "client"),
    (e: unknown) => e instanceof WeftError && e.reason === "revoked",
  );
  verifier.setRevoked([]);
  assert.equal(verifier.verify(chain, "client").toString(), `spiffe://${TD}/ns/default/sa/web`);
});

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
