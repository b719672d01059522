// Join tokens: bound to an ID or pattern, expiring, single- or bounded-use, stored as hashes, spent atomically.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { hashToken, TOKENS_FILE, TokenStore, validateIdPattern } from "../../src/ca/tokens.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { isWeftError } from "../../src/core/errors.ts";

const TD = "weft.local";
const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");
const API = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");

async function setup(t: import("node:test").TestContext) {
  const dir = await mkdtemp(join(tmpdir(), "weft-tokens-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const clock = new ManualClock(Date.UTC(2030, 0, 1));
  const file = join(dir, TOKENS_FILE);
  return { dir, file, clock, store: new TokenStore({ file, clock, trustDomain: TD }) };
}

function rejectsWith(code: string, reason?: string) {
  return (err: unknown) => {
    assert.ok(isWeftError(err), `expected a WeftError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (reason !== undefined) assert.equal(err.reason, reason);
    return true;
  };
}

test("a token is stored only as its hash, in a 0600 file, and shown once", async (t) => {
  const { file, store } = await setup(t);
  const created = await store.create({ idPattern: WEB.toString() });
  assert.match(created.token, /^wjt\.[A-Za-z0-9_-]{43}$/);
  const text = await readFile(file, "utf8");
  assert.ok(!text.includes(created.token), "the token itself must not be on disk");
  assert.ok(!text.includes(created.token.slice(4)), "nor its secret part");
  assert.ok(text.includes(hashToken(created.token)));
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal(created.maxUses, 1);
});

test("a single-use token issues once; the replay is refused as used", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString() });
  const use = await store.consume(token, WEB);
  assert.equal(use.usesLeft, 0);
  await assert.rejects(store.consume(token, WEB), rejectsWith("E_TOKEN_USED", "used"));
});

test("a bounded-use token issues exactly --uses times", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString(), maxUses: 3 });
  for (let i = 0; i < 3; i++) await store.consume(token, WEB);
  await assert.rejects(store.consume(token, WEB), rejectsWith("E_TOKEN_USED"));
});

test("an expired token is refused as expired, even if unused", async (t) => {
  const { store, clock } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString(), ttlMs: 60_000 });
  clock.advance(60_000);
  await assert.rejects(store.consume(token, WEB), rejectsWith("E_TOKEN_EXPIRED", "expired"));
});

test("a token for another identity is refused as a mismatch and stays unspent", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString() });
  await assert.rejects(store.consume(token, API), rejectsWith("E_TOKEN_MISMATCH", "mismatch"));
  await store.consume(token, WEB);
});

test("a pattern token matches IDs with any value in the wildcard segment only", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: "spiffe://weft.local/ns/batch/sa/*", maxUses: 5 });
  await store.consume(token, SpiffeId.parse("spiffe://weft.local/ns/batch/sa/job-1"));
  await store.consume(token, SpiffeId.parse("spiffe://weft.local/ns/batch/sa/job-2"));
  await assert.rejects(
    store.consume(token, SpiffeId.parse("spiffe://weft.local/ns/default/sa/job-1")),
    rejectsWith("E_TOKEN_MISMATCH"),
  );
  await assert.rejects(
    store.consume(token, SpiffeId.parse("spiffe://weft.local/ns/batch/sa/job/extra")),
    rejectsWith("E_TOKEN_MISMATCH"),
  );
});

test("malformed and unknown tokens are refused as invalid with distinct reasons", async (t) => {
  const { store } = await setup(t);
  await store.create({ idPattern: WEB.toString() });
  for (const bad of ["", "nope", "wjt.short", `wjt.${"A".repeat(42)}!`, `xyz.${"A".repeat(43)}`]) {
    await assert.rejects(store.consume(bad, WEB), rejectsWith("E_TOKEN_INVALID", "malformed"));
  }
  await assert.rejects(
    store.consume(`wjt.${"A".repeat(43)}`, WEB),
    rejectsWith("E_TOKEN_INVALID", "unknown"),
  );
});

test("parallel replays of a single-use token spend it exactly once", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString() });
  const results = await Promise.allSettled(Array.from({ length: 25 }, () => store.consume(token, WEB)));
  assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
  for (const r of results) {
    if (r.status === "rejected") assert.equal(r.reason.code, "E_TOKEN_USED");
  }
});

test("two stores on one file (CLI and server) neither double-spend nor lose tokens", async (t) => {
  const { file, clock, store } = await setup(t);
  const other = new TokenStore({ file, clock, trustDomain: TD });
  const { token } = await store.create({ idPattern: WEB.toString(), maxUses: 4 });
  const ops = [
    ...Array.from({ length: 10 }, (_, i) => (i % 2 ? store : other).consume(token, WEB)),
    ...Array.from({ length: 5 }, () => other.create({ idPattern: API.toString() })),
  ];
  const results = await Promise.allSettled(ops);
  assert.equal(results.slice(0, 10).filter((r) => r.status === "fulfilled").length, 4);
  assert.ok(results.slice(10).every((r) => r.status === "fulfilled"));
  const listed = await store.list();
  assert.equal(listed.length, 6);
  assert.equal(listed.filter((x) => x.idPattern === API.toString() && x.state === "active").length, 5);
});

test("refund gives a spent use back (issuance failed after the token was checked)", async (t) => {
  const { store } = await setup(t);
  const { token } = await store.create({ idPattern: WEB.toString() });
  const use = await store.consume(token, WEB);
  await use.refund();
  await use.refund(); // a second refund is a no-op
  await store.consume(token, WEB);
  await assert.rejects(store.consume(token, WEB), rejectsWith("E_TOKEN_USED"));
});

test("token terms are validated: pattern shape, trust domain, TTL, uses", async (t) => {
  const { store } = await setup(t);
  assert.throws(
    () => validateIdPattern("spiffe://*.local/ns/a/sa/b"),
    rejectsWith("E_SPIFFE_ID", "wildcard_in_trust_domain"),
  );
  assert.throws(
    () => validateIdPattern("spiffe://other.td/ns/a/sa/b", TD),
    rejectsWith("E_SPIFFE_ID", "wrong_trust_domain"),
  );
  assert.throws(() => validateIdPattern("https://weft.local/x"), rejectsWith("E_SPIFFE_ID"));
  assert.throws(() => validateIdPattern("spiffe://weft.local/ns/../sa/b"), rejectsWith("E_SPIFFE_ID"));
  await assert.rejects(store.create({ idPattern: WEB.toString(), ttlMs: 0 }), rejectsWith("E_USAGE"));
  await assert.rejects(
    store.create({ idPattern: WEB.toString(), ttlMs: 31 * 86_400_000 }),
    rejectsWith("E_USAGE"),
  );
  await assert.rejects(store.create({ idPattern: WEB.toString(), maxUses: 0 }), rejectsWith("E_USAGE"));
  await assert.rejects(store.create({ idPattern: WEB.toString(), maxUses: 1.5 }), rejectsWith("E_USAGE"));
});

test("list shows states without secrets; revoke spends a token", async (t) => {
  const { store, clock } = await setup(t);
  const a = await store.create({ idPattern: WEB.toString(), ttlMs: 1000 });
  const b = await store.create({ idPattern: API.toString(), maxUses: 2 });
  const c = await store.create({ idPattern: API.toString() });
  await store.consume(c.token, API);
  clock.advance(1000);
  const states = Object.fromEntries((await store.list()).map((x) => [x.ref, x.state]));
  assert.deepEqual(states, { [a.ref]: "expired", [b.ref]: "active", [c.ref]: "used" });
  await store.revoke(b.ref);
  await assert.rejects(store.consume(b.token, API), rejectsWith("E_TOKEN_USED"));
  await assert.rejects(store.revoke("abcdef"), rejectsWith("E_TOKEN_INVALID", "unknown"));
  await assert.rejects(store.revoke("xyz"), rejectsWith("E_USAGE"));
});

test("a corrupt token file is reported, not silently replaced", async (t) => {
  const { file, store } = await setup(t);
  await writeFile(file, "{not json");
  await assert.rejects(store.create({ idPattern: WEB.toString() }), rejectsWith("E_IO"));
  assert.equal(await readFile(file, "utf8"), "{not json");
});

test("a lock left by a dead process is taken over", async (t) => {
  const { file, store } = await setup(t);
  await writeFile(`${file}.lock`, "999999999");
  const { token } = await store.create({ idPattern: WEB.toString() });
  await store.consume(token, WEB);
});
