// Revocation on the CA side: every certificate issued is recorded; a certificate that a renewal replaced
// cannot renew again (also when two renewals race with it), a revoked one cannot renew at all, and the
// revoked, unexpired serials are served with the bundle. `meshca revoke --serial | --id` against the
// directory a running server uses; `meshca rotate --retire-root` only once nothing the old root anchors
// is still valid.
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { request } from "node:https";
import { join } from "node:path";
import { test } from "node:test";
import { CertificateAuthority, createCsr } from "../../src/ca/authority.ts";
import { SerialStore } from "../../src/ca/serials.ts";
import { createCaServer } from "../../src/ca/server.ts";
import { CaStore } from "../../src/ca/store.ts";
import { TokenStore } from "../../src/ca/tokens.ts";
import { splitPemCertificates } from "../../src/ca/x509.ts";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";

import { meshcaWorkspace } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const WEB = "spiffe://weft.local/ns/default/sa/web";

function call(
  url: string,
  ca: string,
  path: string,
  body?: unknown,
  identity?: { keyPem: string; chainPem: string },
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${url}${path}`,
      {
        method: payload ? "POST" : "GET",
        agent: false,
        ca,
        ...(identity ? { key: identity.keyPem, cert: identity.chainPem } : {}),
        headers: payload
          ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) }
          : { Accept: "application/json" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }),
        );
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

async function setup(t: import("node:test").TestContext) {
  const { cwd, meshca, ok } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  const dir = join(cwd, "certs");
  const material = await new CaStore(dir).load();
  const ca = new CertificateAuthority(material);
  const tokens = new TokenStore({
    file: join(dir, "tokens.json"),
    clock: systemClock,
    trustDomain: "weft.local",
  });
  const server = await createCaServer({
    ca,
    tokens,
    serials: new SerialStore(join(dir, "serials.json"), systemClock),
    logger: new MemoryLogger(),
    clock: systemClock,
    listen: "127.0.0.1:0",
  });
  t.after(() => server.close());
  const bundle = material.bundlePem;
  const first = async () => {
    const { token } = await tokens.create({ idPattern: WEB });
    const { csrPem, keyPem } = await createCsr(WEB);
    const r = await call(server.url, bundle, "/v1/sign", { csr: csrPem, token });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return { keyPem, chainPem: r.body.chain as string, serial: r.body.serial as string };
  };
  const renew = async (with_: { keyPem: string; chainPem: string }) => {
    const { csrPem, keyPem } = await createCsr(WEB);
    const r = await call(server.url, bundle, "/v1/renew", { csr: csrPem }, with_);
    return { ...r, next: { keyPem, chainPem: r.body.chain as string, serial: r.body.serial as string } };
  };
  return { cwd, dir, server, bundle, first, renew, meshca };
}

test("a superseded certificate cannot renew again, also when two renewals race with it", async (t) => {
  const s = await setup(t);
  const a = await s.first();
  const b = await s.renew(a);
  assert.equal(b.status, 200);
  const again = await s.renew(a);
  assert.equal(again.status, 403);
  assert.deepEqual(
    [(again.body.error as { code: string }).code, (again.body.error as { reason: string }).reason],
    ["E_REVOKED", "superseded"],
  );
  // Two renewals with one certificate at once: one certificate comes out.
  const raced = await Promise.all([s.renew(b.next), s.renew(b.next)]);
  assert.deepEqual(raced.map((r) => r.status).sort(), [200, 403]);
  // The newest renews normally.
  const winner = raced.find((r) => r.status === 200)!;
  assert.equal((await s.renew(winner.next)).status, 200);
});

test("meshca revoke --serial: no renewal, and the serial is served with the bundle until it expires", async (t) => {
  const s = await setup(t);
  const a = await s.first();
  const other = await s.first();
  const r = await s.meshca("revoke", "--serial", a.serial.toUpperCase(), "--reason", "key_compromise");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`revoked ${a.serial.replace(/^0+/, "")} \\(${WEB}\\)`));
  const refused = await s.renew(a);
  assert.equal(refused.status, 403);
  assert.equal((refused.body.error as { reason: string }).reason, "revoked");
  assert.match((refused.body.error as { message: string }).message, /key_compromise/);
  const listed = await call(s.server.url, s.bundle, "/v1/bundle?format=json");
  assert.deepEqual(
    (listed.body.revoked as Array<{ serial: string }>).map((x) => x.serial),
    [a.serial.replace(/^0+/, "")],
  );
  assert.equal((await s.renew(other)).status, 200, "another certificate of the same identity renews");
  const list = await s.meshca("revoke", "--list");
  assert.match(list.stdout, /key_compromise/);
  assert.equal((await s.meshca("revoke", "--serial", "abc", "--id", WEB)).code, 2);
  assert.match((await s.meshca("revoke", "--serial", "abcdef")).stderr, /no certificate with serial abcdef/);
});

test("meshca revoke --id revokes every unexpired certificate of the identity", async (t) => {
  const s = await setup(t);
  const a = await s.first();
  const b = await s.first();
  const r = await s.meshca("revoke", "--id", WEB);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.split("\n").filter((l: string) => l.startsWith("revoked ")).length, 2);
  assert.equal((await s.renew(a)).status, 403);
  assert.equal((await s.renew(b)).status, 403);
  const listed = await call(s.server.url, s.bundle, "/v1/bundle?format=json");
  assert.equal((listed.body.revoked as unknown[]).length, 2);
  assert.match(await s.server.metrics.render(), /meshca_revoked_serials 2/);
});

test("meshca rotate --retire-root waits until nothing the old root anchors is valid", async (t) => {
  const { cwd, clock, meshca, ok } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  assert.match((await ok("rotate", "--retire-root")).stdout, /nothing to retire/);
  await ok("issue", "--ns", "default", "--sa", "old", "--ttl", "2h");
  const oldRoot = new X509Certificate(await readFile(join(cwd, "certs/root.pem"), "utf8")).fingerprint256;
  await ok("rotate", "root");
  await ok("issue", "--ns", "default", "--sa", "new", "--ttl", "24h");
  const early = await meshca("rotate", "--retire-root");
  assert.equal(early.code, 1);
  assert.match(
    early.stderr,
    new RegExp(`no old root can be retired yet: ${oldRoot}: 1 certificate\\(s\\) still valid`),
  );
  assert.equal(splitPemCertificates(await readFile(join(cwd, "certs/bundle.pem"), "utf8")).length, 2);
  clock.advance(2 * 3_600_000 + 1000);
  const done = await ok("rotate", "--retire-root");
  assert.match(done.stdout, new RegExp(`retired root ${oldRoot}`));
  assert.equal(splitPemCertificates(await readFile(join(cwd, "certs/bundle.pem"), "utf8")).length, 1);
  await ok("verify", "certs/issued/default-new/chain.pem");
  assert.equal((await meshca("verify", "certs/issued/default-old/chain.pem")).code, 1);
});
