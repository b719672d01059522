// The CA server over real HTTPS on loopback: a join token buys exactly one certificate; replayed (also in
// parallel), expired and mismatched tokens are refused with their reason and nothing is issued. The sidecar's
// CaClient gets and renews an identity through the real server and refuses a server its bundle does not trust.
import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
import { createCsr } from "../../src/ca/authority.ts";
import { CaClient, type IdentityMaterial } from "../../src/ca/client.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { parseBundle, verifySvid } from "../../src/ca/verify.ts";
import { systemClock } from "../../src/core/clock.ts";
import { isWeftError } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { createTestCa } from "../helpers/ca.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");
const API = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");

interface Reply {
  status: number;
  body: {
    error?: { code: string; reason: string; message: string };
    chain?: string;
    spiffeId?: string;
    bundle?: string;
  };
}

async function startServer(t: TestContext) {
  const s = await startTestCaServer(t);
  return { ...s, post: (path: string, body: unknown) => s.postJson<Reply["body"]>(path, body) };
}

test("a CSR with a valid join token gets a chain that verifies, and the issuance is logged without secrets", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const { csrPem, keyPem } = await createCsr(WEB);
  const reply = await s.post("/v1/sign", { csr: csrPem, token });
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  assert.equal(reply.body.spiffeId, WEB.toString());
  const id = verifySvid(reply.body.chain!, parseBundle(reply.body.bundle!, "weft.local"));
  assert.ok(id.equals(WEB));
  assert.equal(s.signCount(), 1);
  assert.equal(s.server.stats().issued, 1);
  const issued = s.logger.records.filter((r) => r.msg === "certificate issued");
  assert.equal(issued.length, 1);
  assert.equal(issued[0]!.spiffe_id, WEB.toString());
  assert.ok(typeof issued[0]!.serial === "string" && typeof issued[0]!.not_after === "string");
  const logText = JSON.stringify(s.logger.records);
  assert.ok(!logText.includes(token), "the token is never logged");
  assert.ok(
    !logText.includes("PRIVATE KEY") && !logText.includes(keyPem.slice(40, 80)),
    "no key material in logs",
  );
  assert.ok(!logText.includes("CERTIFICATE REQUEST"), "no CSR in logs");
});

test("a replayed token is refused as used and nothing more is issued", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  assert.equal((await s.post("/v1/sign", { csr: (await createCsr(WEB)).csrPem, token })).status, 200);
  const replay = await s.post("/v1/sign", { csr: (await createCsr(WEB)).csrPem, token });
  assert.equal(replay.status, 403);
  assert.equal(replay.body.error!.code, "E_TOKEN_USED");
  assert.equal(replay.body.error!.reason, "used");
  assert.equal(s.signCount(), 1);
});

test("the same token sent in parallel issues exactly one certificate", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const csrs = await Promise.all(Array.from({ length: 12 }, () => createCsr(WEB)));
  const replies = await Promise.all(csrs.map(({ csrPem }) => s.post("/v1/sign", { csr: csrPem, token })));
  assert.deepEqual(
    replies.map((r) => r.status).sort(),
    [200, ...Array(11).fill(403)],
    JSON.stringify(replies.map((r) => r.body.error?.code)),
  );
  assert.ok(replies.filter((r) => r.status === 403).every((r) => r.body.error!.code === "E_TOKEN_USED"));
  assert.equal(s.signCount(), 1);
  assert.equal(s.server.stats().issued, 1);
});

test("an expired token is refused as expired and nothing is issued", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString(), ttlMs: 60_000 });
  s.tokenClock.advance(61_000);
  const reply = await s.post("/v1/sign", { csr: (await createCsr(WEB)).csrPem, token });
  assert.equal(reply.status, 403);
  assert.equal(reply.body.error!.code, "E_TOKEN_EXPIRED");
  assert.match(reply.body.error!.message, /expired at .*meshca token create/);
  assert.equal(s.signCount(), 0);
});

test("a token bound to another identity is refused as a mismatch and stays usable for its own", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const reply = await s.post("/v1/sign", { csr: (await createCsr(API)).csrPem, token });
  assert.equal(reply.status, 403);
  assert.equal(reply.body.error!.code, "E_TOKEN_MISMATCH");
  assert.match(reply.body.error!.message, /bound to spiffe:\/\/weft\.local\/ns\/default\/sa\/web/);
  assert.equal(s.signCount(), 0);
  assert.equal((await s.post("/v1/sign", { csr: (await createCsr(WEB)).csrPem, token })).status, 200);
  assert.equal(s.signCount(), 1);
});

test("unknown and malformed tokens are refused as invalid", async (t) => {
  const s = await startServer(t);
  const csr = (await createCsr(WEB)).csrPem;
  const unknown = await s.post("/v1/sign", { csr, token: `wjt.${"x".repeat(43)}` });
  assert.equal(unknown.status, 401);
  assert.deepEqual([unknown.body.error!.code, unknown.body.error!.reason], ["E_TOKEN_INVALID", "unknown"]);
  const malformed = await s.post("/v1/sign", { csr, token: "let-me-in" });
  assert.deepEqual([malformed.status, malformed.body.error!.reason], [401, "malformed"]);
  assert.equal(s.signCount(), 0);
});

test("CaClient gets a certificate with a token and renews it over mTLS against the real server", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const identities: IdentityMaterial[] = [];
  const client = new CaClient({
    url: s.server.url,
    bundlePem: s.testCa.ca.bundlePem(),
    id: WEB,
    token,
    clock: systemClock,
    logger: new MemoryLogger(),
    onIdentity: (m) => identities.push(m),
  });
  t.after(() => client.stop());
  await client.start();
  await client.renew();
  assert.equal(identities.length, 2);
  assert.notEqual(identities[0]!.keyPem, identities[1]!.keyPem);
  for (const m of identities)
    assert.ok(verifySvid(m.chainPem, parseBundle(m.bundlePem, "weft.local")).equals(WEB));
  assert.equal(s.signCount(), 2);
  assert.deepEqual(
    s.logger.records.filter((r) => r.msg === "certificate issued").map((r) => r.via),
    [`token:${(await s.tokens.list())[0]!.ref}`, "renew"],
  );
});

test("CaClient refuses a CA server whose certificate its bundle does not trust, before sending the token", async (t) => {
  const s = await startServer(t);
  const stranger = await createTestCa({ trustDomain: "weft.local" });
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const client = new CaClient({
    url: s.server.url,
    bundlePem: stranger.ca.bundlePem(),
    id: WEB,
    token,
    clock: systemClock,
    logger: new MemoryLogger(),
    onIdentity: () => assert.fail("no identity from an untrusted server"),
  });
  t.after(() => client.stop());
  await assert.rejects(
    client.start(),
    (e) => isWeftError(e, "E_CA_UNREACHABLE") && e.reason === "server_untrusted",
  );
  assert.equal(s.signCount(), 0);
  assert.equal((await s.tokens.list())[0]!.uses, 0, "the token never reached the server");
});
