// The CA client's schedule on a manual clock: first certificate with a token, renewal at half life (jittered),
// exponential backoff bounded by the remaining lifetime, loud errors near expiry, checks on every answer.
// The CA is real (in-process, same manual clock); only the transport is a function instead of HTTPS.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CertificateAuthority, createTrustDomain } from "../../src/ca/authority.ts";
import { CaClient, type CaRequest, type CaResponse, type IdentityMaterial } from "../../src/ca/client.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { parseBundle, verifySvid } from "../../src/ca/verify.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { isWeftError, WeftError } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";

const TD = "weft.local";
const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");
const API = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");
const TOKEN = `wjt.${"T".repeat(43)}`;
const HOUR = 3_600_000;
const LEAF_TTL = 24 * HOUR;

type Step = CaResponse | Error | ((req: CaRequest) => Promise<CaResponse>);

async function setup(options: { random?: () => number; retryMaxMs?: number } = {}) {
  const clock = new ManualClock(Date.now());
  const material = await createTrustDomain({ trustDomain: TD, clock });
  const ca = new CertificateAuthority(material, { clock, defaultTtlMs: LEAF_TTL });
  const bundle = parseBundle(ca.bundlePem(), TD);
  const requests: CaRequest[] = [];
  const script: Step[] = [];
  const transport = async (req: CaRequest): Promise<CaResponse> => {
    requests.push(req);
    const step = script.shift();
    if (step instanceof Error) throw step;
    if (typeof step === "function") return step(req);
    if (step) return step;
    return serve(req);
  };
  async function serve(req: CaRequest): Promise<CaResponse> {
    const body = req.body as { csr: string; token?: string };
    if (req.path === "/v1/sign" && body.token !== TOKEN) {
      return {
        status: 401,
        body: { error: { code: "E_TOKEN_INVALID", reason: "unknown", message: "unknown token" } },
      };
    }
    let proven: SpiffeId | undefined;
    if (req.path === "/v1/renew") {
      assert.ok(req.clientIdentity, "renewal must present the current certificate");
      proven = verifySvid(req.clientIdentity.chainPem, bundle, { now: new Date(clock.now()) });
    }
    const cert = await ca.signCsr(body.csr, {
      authorize: (id) => {
        if (proven && !id.equals(proven)) throw new WeftError("E_RENEW_IDENTITY", "different identity");
      },
    });
    return {
      status: 200,
      body: {
        chain: cert.chainPem,
        bundle: cert.bundlePem,
        serial: cert.serial,
        notAfter: cert.notAfter.toISOString(),
      },
    };
  }
  const logger = new MemoryLogger();
  const identities: IdentityMaterial[] = [];
  const attempts: { ok: boolean; via: string; error?: WeftError }[] = [];
  const waiters: (() => void)[] = [];
  const client = new CaClient({
    url: "https://ca.test:15443",
    bundlePem: ca.bundlePem(),
    id: WEB,
    token: TOKEN,
    clock,
    logger,
    transport,
    random: options.random ?? (() => 0.5),
    retryBaseMs: 1000,
    retryMaxMs: options.retryMaxMs ?? 2 * HOUR,
    onIdentity: (m) => identities.push(m),
    onAttempt: (a) => {
      attempts.push(a);
      waiters.shift()?.();
    },
  });
  /** Resolves after the next attempt finished and the client has acted on it (timers re-armed). */
  const nextAttempt = async () => {
    await new Promise<void>((resolve) => waiters.push(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    return attempts.at(-1)!;
  };
  return { clock, ca, client, requests, script, logger, identities, attempts, nextAttempt };
}

function unreachable(): WeftError {
  return new WeftError("E_CA_UNREACHABLE", "connect ECONNREFUSED", { reason: "econnrefused" });
}

test("start trades the token for a first certificate and schedules renewal at half its life", async (t) => {
  const s = await setup();
  t.after(() => s.client.stop());
  await s.client.start();
  assert.equal(s.identities.length, 1);
  const first = s.identities[0]!;
  assert.ok(first.id.equals(WEB));
  assert.match(first.keyPem, /PRIVATE KEY/);
  assert.equal(s.requests[0]!.path, "/v1/sign");
  assert.ok(!JSON.stringify(s.requests[0]!.body).includes("PRIVATE KEY"), "the key never leaves the client");
  const st = s.client.status();
  assert.equal(st.state, "running");
  assert.equal(st.notAfter!.getTime(), first.notAfter.getTime());
  const lifetime = first.notAfter.getTime() - s.clock.now();
  assert.ok(Math.abs(st.nextRenewalAt!.getTime() - (s.clock.now() + lifetime / 2)) <= 1);
});

test("renewal jitter stays within ±10 % of half the lifetime", async (t) => {
  for (const r of [0, 0.999999]) {
    const factor = 1 + (r * 2 - 1) * 0.1;
    const s = await setup({ random: () => r });
    t.after(() => s.client.stop());
    await s.client.start();
    const lifetime = s.identities[0]!.notAfter.getTime() - s.clock.now();
    const delay = s.client.status().nextRenewalAt!.getTime() - s.clock.now();
    assert.ok(Math.abs(delay - (lifetime / 2) * factor) < 5, `random ${r}: delay ${delay}`);
  }
});

test("renewal fires at half life, over mTLS with the current certificate and a new key", async (t) => {
  const s = await setup();
  t.after(() => s.client.stop());
  await s.client.start();
  const first = s.identities[0]!;
  const due = s.client.status().nextRenewalAt!.getTime();
  s.clock.advance(due - s.clock.now() - 1);
  assert.equal(s.requests.length, 1, "nothing before the renewal time");
  const attempt = s.nextAttempt();
  s.clock.advance(1);
  assert.deepEqual(await attempt, { ok: true, via: "renew" });
  const renewal = s.requests[1]!;
  assert.equal(renewal.path, "/v1/renew");
  assert.equal(renewal.clientIdentity!.chainPem, first.chainPem);
  assert.equal((renewal.body as { token?: string }).token, undefined, "renewal carries no token");
  const second = s.identities[1]!;
  assert.notEqual(second.keyPem, first.keyPem);
  assert.ok(second.notAfter > first.notAfter);
  const st = s.client.status();
  assert.equal(st.renewals, 1);
  const half = (second.notAfter.getTime() - s.clock.now()) / 2;
  assert.ok(Math.abs(st.nextRenewalAt!.getTime() - (s.clock.now() + half)) <= 1);
});

test("failed renewals back off exponentially, never past expiry, and get loud as expiry nears", async (t) => {
  const s = await setup();
  t.after(() => s.client.stop());
  await s.client.start();
  const notAfter = s.identities[0]!.notAfter.getTime();
  const lifetime = notAfter - s.clock.now();
  const delays: number[] = [];
  let next = s.client.status().nextRenewalAt!.getTime();
  for (let i = 0; i < 200 && s.clock.now() < notAfter; i++) {
    s.script.push(unreachable());
    const attempt = s.nextAttempt();
    s.clock.advance(next - s.clock.now());
    assert.equal((await attempt).ok, false);
    const st = s.client.status();
    assert.equal(st.consecutiveFailures, i + 1);
    assert.equal(st.lastErrorCode, "E_CA_UNREACHABLE");
    next = st.nextRenewalAt!.getTime();
    const delay = next - s.clock.now();
    const remaining = notAfter - s.clock.now();
    if (remaining > 0) {
      assert.ok(
        delay <= Math.max(1000, remaining / 2),
        `retry ${i + 1}: ${delay} ms with ${remaining} ms left`,
      );
      assert.ok(delay >= Math.min(1000, remaining), `retry ${i + 1}: ${delay} ms is below the base`);
    }
    delays.push(delay);
  }
  assert.ok(s.clock.now() >= notAfter, "the loop reached expiry within its bound");
  // random() = 0.5 → equal jitter gives 0.75 × base × 2^n (never below the 1 s base) while time allows.
  assert.deepEqual(delays.slice(0, 5), [1000, 1500, 3000, 6000, 12000]);
  const levels = (msg: RegExp) => s.logger.records.filter((r) => msg.test(r.msg)).map((r) => r.level);
  assert.ok(levels(/renewal failed; will retry/).length > 0, "early failures are warnings");
  assert.ok(levels(/expires soon/).every((l) => l === "error") && levels(/expires soon/).length > 0);
  const firstError = s.logger.records.find((r) => r.level === "error")!;
  assert.ok((firstError.expires_in_ms as number) < lifetime * 0.25, "errors start in the last quarter");
  assert.ok(levels(/EXPIRED/).length > 0, "an expired certificate is reported as such");
  // The CA comes back: the client recovers with the (unlimited in this fake) token, counters reset.
  const recovered = s.nextAttempt();
  s.clock.advance(next - s.clock.now());
  assert.deepEqual(await recovered, { ok: true, via: "token" });
  assert.equal(s.client.status().consecutiveFailures, 0);
  assert.equal(s.client.status().lastError, undefined);
  assert.ok(s.identities.at(-1)!.notAfter.getTime() > s.clock.now());
});

test("start gives up at once on a refusal, and retries transient failures with backoff", async (t) => {
  const refused = await setup();
  t.after(() => refused.client.stop());
  refused.script.push({
    status: 403,
    body: { error: { code: "E_TOKEN_USED", reason: "used", message: "E_TOKEN_USED: used 1 of 1" } },
  });
  await assert.rejects(refused.client.start(), (e) => isWeftError(e, "E_TOKEN_USED") && e.reason === "used");
  assert.equal(refused.requests.length, 1);
  assert.equal(refused.client.status().state, "stopped");

  const flaky = await setup();
  t.after(() => flaky.client.stop());
  flaky.script.push(unreachable(), {
    status: 503,
    body: { error: { code: "E_CA_EXPIRED", message: "later" } },
  });
  let pending = flaky.nextAttempt();
  const started = flaky.client.start();
  assert.equal((await pending).ok, false, "first attempt: unreachable");
  // random() = 0.5: the retries wait 750 ms then 1500 ms; advancing by base×2^n fires exactly the armed timer.
  pending = flaky.nextAttempt();
  flaky.clock.advance(1000);
  assert.equal((await pending).ok, false, "second attempt: 503");
  pending = flaky.nextAttempt();
  flaky.clock.advance(2000);
  assert.equal((await pending).ok, true, "third attempt succeeds");
  await started;
  assert.equal(flaky.requests.length, 3);
  assert.equal(flaky.identities.length, 1);
  assert.equal(flaky.client.status().consecutiveFailures, 0);
});

test("answers naming another identity, or certifying another key, are refused", async (t) => {
  const wrongId = await setup();
  t.after(() => wrongId.client.stop());
  const other = await wrongId.ca.issue({ id: API });
  wrongId.script.push({ status: 200, body: { chain: other.chainPem, bundle: other.bundlePem } });
  await assert.rejects(wrongId.client.start(), (e) => isWeftError(e, "E_PEER_IDENTITY"));

  const wrongKey = await setup();
  t.after(() => wrongKey.client.stop());
  const stolen = await wrongKey.ca.issue({ id: WEB });
  wrongKey.script.push({ status: 200, body: { chain: stolen.chainPem, bundle: stolen.bundlePem } });
  await assert.rejects(
    wrongKey.client.start(),
    (e) => isWeftError(e, "E_CERT_INVALID") && e.reason === "key_mismatch",
  );

  const foreign = await setup();
  t.after(() => foreign.client.stop());
  const elsewhere = await createTrustDomain({ trustDomain: TD, clock: foreign.clock });
  const forged = await new CertificateAuthority(elsewhere, { clock: foreign.clock }).issue({ id: WEB });
  foreign.script.push({ status: 200, body: { chain: forged.chainPem, bundle: foreign.ca.bundlePem() } });
  await assert.rejects(foreign.client.start(), (e) => isWeftError(e, "E_SVID"));
  assert.equal(wrongId.identities.length + wrongKey.identities.length + foreign.identities.length, 0);
});

test("a live stored certificate is adopted without a token; stop() disarms every timer", async (t) => {
  const s = await setup();
  const stored = await s.ca.issue({ id: WEB });
  const identities: IdentityMaterial[] = [];
  const client = new CaClient({
    url: "https://ca.test:15443",
    bundlePem: s.ca.bundlePem(),
    id: WEB,
    clock: s.clock,
    logger: s.logger,
    transport: async () => {
      throw new Error("no request expected");
    },
    initial: { keyPem: stored.keyPem, chainPem: stored.chainPem },
    onIdentity: (m) => identities.push(m),
  });
  t.after(() => client.stop());
  await client.start();
  assert.equal(identities.length, 1);
  assert.equal(identities[0]!.chainPem, stored.chainPem);
  assert.ok(client.status().nextRenewalAt! < stored.notAfter);
  client.stop();
  assert.equal(s.clock.pending(), 0);
  assert.equal(client.status().state, "stopped");
});

test("the client needs the trust bundle and an https URL; without token or certificate start refuses", async () => {
  const s = await setup();
  const base = {
    url: "https://ca.test:15443",
    bundlePem: s.ca.bundlePem(),
    id: WEB,
    clock: s.clock,
    logger: s.logger,
    onIdentity: () => {},
  };
  assert.throws(
    () => new CaClient({ ...base, bundlePem: "" }),
    (e) => isWeftError(e, "E_USAGE") && e.reason === "no_bundle",
  );
  assert.throws(
    () => new CaClient({ ...base, url: "http://ca.test:15443" }),
    (e) => isWeftError(e, "E_USAGE"),
  );
  assert.throws(
    () => new CaClient({ ...base, url: "not a url" }),
    (e) => isWeftError(e, "E_USAGE"),
  );
  await assert.rejects(
    new CaClient(base).start(),
    (e) => isWeftError(e, "E_USAGE") && e.reason === "no_token",
  );
});
