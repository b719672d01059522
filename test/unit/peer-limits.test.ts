/**
 * Per-peer-identity limits (peer-limits.ts): each limit holds across all of an identity's sessions,
 * other identities are not affected, what is over a limit is refused and counted, the reset rate closes
 * every session of the peer, state is forgotten once nothing is open, and memory is given back once
 * after a burst.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { PeerLimits } from "../../src/proxy/tunnel/peer-limits.ts";

const A = SpiffeId.parse("spiffe://weft.local/ns/default/sa/a");
const B = SpiffeId.parse("spiffe://weft.local/ns/default/sa/b");

function setup() {
  const clock = new ManualClock();
  const metrics = new WeftMetrics();
  const log = new MemoryLogger();
  let givenBack = 0;
  const limits = new PeerLimits({
    settings: () => ({ streams: 3, sessions: 2, pendingHeaders: 2, resetsPerSecond: 5 }),
    clock,
    metrics,
    logger: log,
    giveBack: () => givenBack++,
  });
  return { clock, metrics, log, limits, givenBack: () => givenBack };
}

test("streams, sessions and header waits are bounded per identity, across sessions; others unaffected", async () => {
  const { limits, metrics, log } = setup();
  const s1 = limits.openSession(A, () => {});
  const s2 = limits.openSession(A, () => {});
  assert.ok(s1 && s2);
  assert.equal(
    limits.openSession(A, () => {}),
    undefined,
    "a third session of A",
  );
  assert.ok(
    limits.openSession(B, () => {}),
    "B has its own budget",
  );
  const streams = [limits.openStream(A), limits.openStream(A), limits.openStream(A)];
  assert.ok(streams.every(Boolean));
  assert.equal(limits.openStream(A), undefined, "a fourth stream of A, whichever session");
  streams[0]!();
  streams[0]!();
  assert.ok(limits.openStream(A), "a release frees exactly one");
  const w = [limits.awaitHeader(A), limits.awaitHeader(A)];
  assert.equal(limits.awaitHeader(A), undefined);
  w[0]!();
  assert.ok(limits.awaitHeader(A));
  assert.equal(await metrics.value("weft_peer_limit_hits_total", { limit: "sessions" }), 1);
  assert.equal(await metrics.value("weft_peer_limit_hits_total", { limit: "streams" }), 1);
  assert.equal(await metrics.value("weft_peer_limit_hits_total", { limit: "pending_headers" }), 1);
  assert.ok(
    log.records.some((r) => r.peer_identity === A.toString() && r.limit === "streams" && r.level === "warn"),
  );
});

test("past the reset rate every session of the peer is closed; the window restarts each second", () => {
  const { limits, clock } = setup();
  const closed: string[] = [];
  limits.openSession(A, () => closed.push("a1"));
  limits.openSession(A, () => closed.push("a2"));
  limits.openSession(B, () => closed.push("b1"));
  for (let i = 0; i < 5; i++) limits.peerReset(A);
  clock.advance(1_000);
  for (let i = 0; i < 5; i++) limits.peerReset(A);
  assert.deepEqual(closed, [], "5 per second is allowed");
  limits.peerReset(A);
  assert.deepEqual(closed.sort(), ["a1", "a2"], "the sixth in a second closes all of A's sessions, not B's");
});

test("a peer that keeps opening header-less streams past the limit gets its sessions closed", () => {
  const { limits } = setup();
  const closed: string[] = [];
  limits.openSession(A, () => closed.push("a1"));
  limits.awaitHeader(A);
  limits.awaitHeader(A);
  assert.equal(limits.awaitHeader(A), undefined);
  assert.equal(limits.awaitHeader(A), undefined);
  assert.deepEqual(closed, [], "refusals up to the limit (2) leave the sessions alone");
  assert.equal(limits.awaitHeader(A), undefined);
  assert.deepEqual(closed, ["a1"], "one more within the second closes them");
});

test("state is forgotten when nothing is open; memory is given back once, after the burst", () => {
  const { limits, clock, givenBack } = setup();
  const r = limits.openStream(A)!;
  const s = limits.openSession(A, () => {})!;
  limits.openStream(A);
  limits.openStream(A);
  limits.openStream(A);
  limits.openStream(A);
  assert.equal(givenBack(), 0);
  clock.advance(1_000);
  assert.equal(givenBack(), 1, "one give-back a second after the last hit");
  r();
  s();
  assert.equal(limits.tracked, 1, "A still has two streams open");
});
