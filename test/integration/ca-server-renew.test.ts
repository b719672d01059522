// Renewal over mTLS against the real CA server on loopback: the current certificate proves the identity and
// buys a new one for the same identity only. A different identity, a missing client certificate, a
// certificate from another CA and an expired certificate are all refused, and nothing is issued.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { createCsr } from "../../src/ca/authority.ts";
import { createCaServer } from "../../src/ca/server.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { TokenStore } from "../../src/ca/tokens.ts";
import { parseBundle, verifySvid } from "../../src/ca/verify.ts";
import { type Clock, ManualClock, systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { createTestCa } from "../helpers/ca.ts";

const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");
const API = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");

interface Reply {
  status: number;
  body: { error?: { code: string; reason: string }; chain?: string; bundle?: string; spiffeId?: string };
}

async function startServer(t: import("node:test").TestContext, clock: Clock = systemClock) {
  const testCa = await createTestCa({ trustDomain: "weft.local" });
  const dir = await mkdtemp(join(tmpdir(), "weft-ca-renew-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const tokens = new TokenStore({ file: join(dir, "tokens.json"), clock: systemClock });
  let signed = 0;
  const sign = testCa.ca.signCsr.bind(testCa.ca);
  testCa.ca.signCsr = async (...args: Parameters<typeof sign>) => {
    const cert = await sign(...args);
    signed += 1;
    return cert;
  };
  const server = await createCaServer({
    ca: testCa.ca,
    tokens,
    logger: new MemoryLogger(),
    clock,
    listen: "127.0.0.1:0",
  });
  t.after(() => server.close());
  const renew = (csr: string, identity?: { keyPem: string; chainPem: string }): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const payload = JSON.stringify({ csr });
      const req = request(
        `${server.url}/v1/renew`,
        {
          method: "POST",
          agent: false,
          ca: testCa.ca.bundlePem(),
          ...(identity ? { key: identity.keyPem, cert: identity.chainPem } : {}),
          headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) },
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
  return { testCa, server, renew, signCount: () => signed };
}

test("renewal over mTLS with the current certificate issues a new one for the same identity", async (t) => {
  const s = await startServer(t);
  const current = await s.testCa.issue(WEB.toString());
  const { csrPem } = await createCsr(WEB);
  const reply = await s.renew(csrPem, current);
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  assert.equal(reply.body.spiffeId, WEB.toString());
  assert.ok(verifySvid(reply.body.chain!, parseBundle(reply.body.bundle!, "weft.local")).equals(WEB));
  assert.equal(s.signCount(), 1);
});

test("renewal asking for a different identity is refused", async (t) => {
  const s = await startServer(t);
  const current = await s.testCa.issue(WEB.toString());
  const reply = await s.renew((await createCsr(API)).csrPem, current);
  assert.equal(reply.status, 403);
  assert.equal(reply.body.error!.code, "E_RENEW_IDENTITY");
  assert.equal(s.signCount(), 0);
});

test("renewal without a client certificate is refused", async (t) => {
  const s = await startServer(t);
  const reply = await s.renew((await createCsr(WEB)).csrPem);
  assert.equal(reply.status, 401);
  assert.deepEqual([reply.body.error!.code, reply.body.error!.reason], ["E_SVID", "no_client_cert"]);
  assert.equal(s.signCount(), 0);
});

test("renewal with a certificate from another CA of the same trust domain name is refused", async (t) => {
  const s = await startServer(t);
  const impostorCa = await createTestCa({ trustDomain: "weft.local" });
  const impostor = await impostorCa.issue(WEB.toString());
  const reply = await s.renew((await createCsr(WEB)).csrPem, impostor);
  assert.equal(reply.status, 401);
  assert.equal(reply.body.error!.code, "E_SVID");
  assert.equal(s.signCount(), 0);
});

test("renewal with an expired certificate is refused", async (t) => {
  // The server's clock runs two days ahead: the presented 24 h certificate has expired by its reckoning.
  const s = await startServer(t, new ManualClock(Date.now() + 48 * 3_600_000));
  const current = await s.testCa.issue(WEB.toString());
  const reply = await s.renew((await createCsr(WEB)).csrPem, current);
  assert.equal(reply.status, 401);
  assert.equal(reply.body.error!.code, "E_SVID");
  assert.equal(s.signCount(), 0);
});
