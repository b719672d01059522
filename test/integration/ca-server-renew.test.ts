// Renewal over mTLS against the real CA server on loopback: the current certificate proves the identity and
// buys a new one for the same identity only. A different identity, a missing client certificate, a
// certificate from another CA and an expired certificate are all refused, and nothing is issued.
import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
import { createCsr } from "../../src/ca/authority.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { parseBundle, verifySvid } from "../../src/ca/verify.ts";
import { type Clock, ManualClock, systemClock } from "../../src/core/clock.ts";
import { createTestCa } from "../helpers/ca.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");
const API = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");

interface Reply {
  status: number;
  body: { error?: { code: string; reason: string }; chain?: string; bundle?: string; spiffeId?: string };
}

async function startServer(t: TestContext, clock: Clock = systemClock) {
  const s = await startTestCaServer(t, { clock });
  const renew = (csr: string, identity?: { keyPem: string; chainPem: string }) =>
    s.postJson<Reply["body"]>("/v1/renew", { csr }, identity);
  return { ...s, renew };
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
