import assert from "node:assert/strict";
import { test } from "node:test";
import { type Candidate, newBalancerState, PeakEwma, pickCandidate } from "../../src/discovery/balancers.ts";
import type { BalancerKind, Endpoint } from "../../src/discovery/types.ts";

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function ep(name: string, weight = 1): Endpoint {
  return {
    key: `${name}:80`,
    address: name,
    port: 80,
    tunnelPort: 15008,
    weight,
    identity: "spiffe://t/ns/d/sa/s",
    sidecar: true,
  };
}

function cand(e: Endpoint, active = 0, latencyMs = 0): Candidate {
  return { endpoint: e, active, latencyMs };
}

function counts(
  kind: BalancerKind,
  candidates: Candidate[],
  n: number,
  seed = 1,
  client = (i: number) => `198.18.0.${i % 250}`,
) {
  const state = newBalancerState();
  const random = seeded(seed);
  const out = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const c = pickCandidate({ kind, candidates, state, random, clientAddress: client(i) })!;
    out.set(c.endpoint.address, (out.get(c.endpoint.address) ?? 0) + 1);
  }
  return out;
}

test("round-robin is smooth and exact with weights 5:1:1", () => {
  const cs = [cand(ep("a", 5)), cand(ep("b")), cand(ep("c"))];
  const state = newBalancerState();
  const seq = Array.from(
    { length: 7 },
    () =>
      pickCandidate({ kind: "round-robin", candidates: cs, state, random: Math.random, clientAddress: "" })!
        .endpoint.address,
  );
  assert.deepEqual(seq, ["a", "a", "b", "a", "c", "a", "a"], "nginx's smooth sequence");
  const c = counts("round-robin", cs, 700);
  assert.deepEqual([c.get("a"), c.get("b"), c.get("c")], [500, 100, 100]);
});

test("random follows weights within 3 % over 30 000 picks (seeded)", () => {
  const c = counts("random", [cand(ep("a", 2)), cand(ep("b", 1)), cand(ep("c", 1))], 30_000, 7);
  assert.ok(Math.abs(c.get("a")! / 30_000 - 0.5) < 0.03, JSON.stringify([...c]));
  assert.ok(Math.abs(c.get("b")! / 30_000 - 0.25) < 0.03);
});

test("least-connections prefers the endpoint with fewer active connections per weight", () => {
  const c = counts(
    "least-connections",
    [cand(ep("busy"), 50), cand(ep("idle"), 0), cand(ep("mid"), 10)],
    3000,
    3,
  );
  // P2C: the busiest can only win when drawn twice, which cannot happen (two distinct picks).
  assert.equal(c.get("busy") ?? 0, 0);
  assert.ok(c.get("idle")! > c.get("mid")!, JSON.stringify([...c]));
  const w = counts("least-connections", [cand(ep("heavy", 10), 10), cand(ep("light", 1), 2)], 100, 3);
  assert.equal(w.get("heavy"), 100, "10 active over weight 10 costs less than 2 over weight 1");
});

test("peak-ewma prefers low latency × load; unknown latency is tried", () => {
  const c = counts(
    "peak-ewma",
    [cand(ep("fast"), 0, 1), cand(ep("slow"), 0, 50), cand(ep("loaded"), 20, 1)],
    3000,
    5,
  );
  assert.equal(c.get("slow") ?? 0, 0, "slow never beats either other");
  assert.ok(c.get("fast")! > 2 * (c.get("loaded") ?? 0));
  const n = counts("peak-ewma", [cand(ep("known"), 0, 5), cand(ep("new"), 0, 0)], 1000, 9);
  assert.ok((n.get("new") ?? 0) > 0, "a new endpoint gets traffic");
});

test("peak-ewma: peaks are taken at once, lower samples decay in", () => {
  const e = new PeakEwma(10_000);
  e.observe(10, 0);
  e.observe(100, 1);
  assert.equal(e.get(), 100);
  e.observe(10, 10_001);
  assert.ok(e.get() < 50 && e.get() > 10, String(e.get()));
});

test("source-hash: stable per client, spread over endpoints, minimal movement on change", () => {
  const three = [cand(ep("a")), cand(ep("b")), cand(ep("c"))];
  const four = [...three, cand(ep("d"))];
  const clients = Array.from({ length: 2000 }, (_, i) => `198.18.${i >> 8}.${i & 255}`);
  const pick = (cs: Candidate[], client: string) =>
    pickCandidate({
      kind: "source-hash",
      candidates: cs,
      state: newBalancerState(),
      random: Math.random,
      clientAddress: client,
    })!.endpoint.address;
  const before = clients.map((c) => pick(three, c));
  assert.deepEqual(
    before,
    clients.map((c) => pick(three, c)),
    "same answer every time",
  );
  const spread = new Map<string, number>();
  for (const b of before) spread.set(b, (spread.get(b) ?? 0) + 1);
  for (const n of spread.values()) assert.ok(Math.abs(n / 2000 - 1 / 3) < 0.05, JSON.stringify([...spread]));
  const after = clients.map((c) => pick(four, c));
  let moved = 0;
  for (let i = 0; i < clients.length; i++) {
    if (before[i] !== after[i]) {
      moved++;
      assert.equal(after[i], "d", "a client only moves to the new endpoint");
    }
  }
  assert.ok(moved / 2000 > 0.18 && moved / 2000 < 0.32, `about a quarter moves, got ${moved}`);
  const removed = clients.map((c) =>
    pick(
      three.filter((x) => x.endpoint.address !== "b"),
      c,
    ),
  );
  for (let i = 0; i < clients.length; i++)
    if (before[i] !== "b") assert.equal(removed[i], before[i], "only b's clients move");
  const weighted = counts(
    "source-hash",
    [cand(ep("a", 3)), cand(ep("b", 1))],
    4000,
    1,
    (i) => `198.19.${i >> 8}.${i & 255}`,
  );
  assert.ok(Math.abs(weighted.get("a")! / 4000 - 0.75) < 0.04, JSON.stringify([...weighted]));
});
