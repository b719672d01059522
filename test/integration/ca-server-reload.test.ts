// `meshca rotate` without restarting `meshca serve`: the server re-reads its CA directory, and after a
// root rotation it signs with the new intermediate, serves the two-root bundle, presents a server
// certificate from the new CA, and still renews certificates of the old root. A directory caught
// between two files of a rotation (new intermediate, old key) is not taken; the old CA keeps signing.
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CertificateAuthority, createCsr, createTrustDomain, rotateRoot } from "../../src/ca/authority.ts";
import { createCaServer } from "../../src/ca/server.ts";
import { CaStore } from "../../src/ca/store.ts";
import { TokenStore } from "../../src/ca/tokens.ts";
import { parseBundle, verifySvid } from "../../src/ca/verify.ts";
import { splitPemCertificates } from "../../src/ca/x509.ts";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const WEB = "spiffe://weft.local/ns/default/sa/web";

function call(
  url: string,
  ca: string,
  method: string,
  path: string,
  body?: unknown,
  identity?: { keyPem: string; chainPem: string },
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${url}${path}`,
      {
        method,
        agent: false,
        ca,
        ...(identity ? { key: identity.keyPem, cert: identity.chainPem } : {}),
        headers: payload
          ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) }
          : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

test("a rotated CA directory is picked up without a restart", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-ca-reload-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const store = new CaStore(dir);
  const first = await createTrustDomain({ trustDomain: "weft.local" });
  await store.save(first);
  const tokens = new TokenStore({
    file: join(dir, "tokens.json"),
    clock: systemClock,
    trustDomain: "weft.local",
  });
  const logger = new MemoryLogger();
  const server = await createCaServer({
    ca: new CertificateAuthority(first),
    tokens,
    logger,
    clock: systemClock,
    listen: "127.0.0.1:0",
    reloadIntervalMs: 50,
    loadCa: async () => {
      const ca = new CertificateAuthority(await store.load());
      ca.checkConsistent();
      return ca;
    },
  });
  t.after(() => server.close());

  const sign = async (trust: string) => {
    const { token } = await tokens.create({ idPattern: WEB });
    const { csrPem, keyPem } = await createCsr(WEB);
    const r = await call(server.url, trust, "POST", "/v1/sign", { csr: csrPem, token });
    assert.equal(r.status, 200, r.text);
    return { ...(JSON.parse(r.text) as { chain: string }), keyPem };
  };
  const before = await sign(first.bundlePem);
  assert.equal(splitPemCertificates(before.chain)[1], splitPemCertificates(first.intermediateCertPem)[0]);

  // A rotation caught half-written: the new intermediate beside the old key is not taken.
  const rotated = await rotateRoot(first);
  await writeFile(join(dir, "intermediate.pem"), rotated.intermediateCertPem);
  assert.equal(await server.reloadCa(), false);
  assert.equal(
    splitPemCertificates((await sign(first.bundlePem)).chain)[1],
    splitPemCertificates(first.intermediateCertPem)[0],
    "still signing with the old intermediate",
  );
  assert.match(JSON.stringify(logger.records), /intermediate-key\.pem does not match intermediate\.pem/);

  // The complete rotation is picked up by the timer, no restart.
  await store.save(rotated, { force: true });
  const servedRoots = async () =>
    splitPemCertificates((await call(server.url, rotated.bundlePem, "GET", "/v1/bundle")).text).length;
  await eventually("the two-root bundle is served", async () => (await servedRoots()) === 2, {
    intervalMs: 25,
  });
  // The server's own certificate now comes from the new CA: a client trusting only the new root connects.
  const newRootOnly = rotated.rootCertPem;
  const after = await sign(newRootOnly);
  assert.equal(splitPemCertificates(after.chain)[1], splitPemCertificates(rotated.intermediateCertPem)[0]);
  assert.equal(verifySvid(after.chain, parseBundle(rotated.bundlePem, "weft.local")).toString(), WEB);
  // A workload of the old root renews (the old root is still in the bundle) and gets a new-root chain.
  const { csrPem } = await createCsr(WEB);
  const renewed = await call(
    server.url,
    rotated.bundlePem,
    "POST",
    "/v1/renew",
    { csr: csrPem },
    {
      keyPem: before.keyPem,
      chainPem: before.chain,
    },
  );
  assert.equal(renewed.status, 200, renewed.text);
  const leafIssuer = new X509Certificate(
    splitPemCertificates((JSON.parse(renewed.text) as { chain: string }).chain)[0]!,
  ).issuer;
  assert.equal(leafIssuer, new X509Certificate(rotated.intermediateCertPem).subject);
  const metrics = await server.metrics.render();
  assert.match(metrics, /meshca_ca_reloads_total\{outcome="reloaded"\} 1/);
  assert.match(metrics, /meshca_certificate_expiry_timestamp_seconds\{cert="root",serial="[0-9a-f]+"\} \d+/);
  assert.match(metrics, /meshca_certificate_expiry_timestamp_seconds\{cert="intermediate"/);
});
