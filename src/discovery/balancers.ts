/**
 * Connection-level load balancers: given the candidate endpoints of one service (already filtered for
 * ejection and for endpoints this connection tried), their live state, and a random source, choose one.
 * Each is a pure function of its inputs plus the small per-service state it is handed (round-robin's
 * current weights), so tests drive them with a seeded random source and fixed numbers.
 *
 * - round-robin: smooth weighted round-robin (nginx's): every pick adds each weight to its current
 *   value, takes the largest, and subtracts the total from the winner; spreads weights evenly in time.
 * - least-connections: power of two choices over active connections ÷ weight.
 * - peak-ewma: power of two choices over peak-EWMA connect latency × (active + 1) ÷ weight (Linkerd).
 * - random: weighted random.
 * - source-hash: weighted rendezvous (highest random weight) hashing of the client address: the same
 *   client keeps its endpoint, and adding or removing one endpoint moves only the clients it gains or
 *   loses.
 */
import { createHash } from "node:crypto";
import type { BalancerKind, Endpoint } from "./types.ts";

/** What a balancer may know about one candidate. */
export interface Candidate {
  readonly endpoint: Endpoint;
  /** Connections open now through this endpoint. */
  readonly active: number;
  /** Peak-EWMA connect latency in ms (0 when nothing is known yet). */
  readonly latencyMs: number;
}

export interface BalancerState {
  /** Smooth round-robin current weights, by endpoint key. */
  readonly currentWeights: Map<string, number>;
}

export function newBalancerState(): BalancerState {
  return { currentWeights: new Map() };
}

export interface PickInput {
  readonly kind: BalancerKind;
  readonly candidates: readonly Candidate[];
  readonly state: BalancerState;
  /** Uniform in [0, 1). */
  readonly random: () => number;
  readonly clientAddress: string;
}

export function pickCandidate(input: PickInput): Candidate | undefined {
  const { candidates } = input;
  if (candidates.length === 0) return undefined;
  if (candidates.length === 1) return candidates[0];
  switch (input.kind) {
    case "round-robin":
      return smoothRoundRobin(candidates, input.state);
    case "least-connections":
      return powerOfTwo(candidates, input.random, (c) => c.active / c.endpoint.weight);
    case "peak-ewma":
      // Unknown latency counts as the best seen, so new endpoints get tried (Linkerd starts them at a
      // default; the smallest known value keeps them competitive without favouring them forever).
      return powerOfTwo(candidates, input.random, (c) => {
        const known = candidates.filter((x) => x.latencyMs > 0).map((x) => x.latencyMs);
        const latency = c.latencyMs > 0 ? c.latencyMs : known.length > 0 ? Math.min(...known) : 1;
        return (latency * (c.active + 1)) / c.endpoint.weight;
      });
    case "random":
      return weightedRandom(candidates, input.random);
    case "source-hash":
      return rendezvous(candidates, input.clientAddress);
  }
}

function smoothRoundRobin(candidates: readonly Candidate[], state: BalancerState): Candidate {
  let total = 0;
  let best: Candidate | undefined;
  let bestWeight = Number.NEGATIVE_INFINITY;
  for (const c of candidates) {
    const w = c.endpoint.weight;
    const current = (state.currentWeights.get(c.endpoint.key) ?? 0) + w;
    state.currentWeights.set(c.endpoint.key, current);
    total += w;
    if (current > bestWeight) {
      bestWeight = current;
      best = c;
    }
  }
  state.currentWeights.set(best!.endpoint.key, bestWeight - total);
  return best!;
}

function weightedRandom(candidates: readonly Candidate[], random: () => number): Candidate {
  const total = candidates.reduce((n, c) => n + c.endpoint.weight, 0);
  let r = random() * total;
  for (const c of candidates) {
    r -= c.endpoint.weight;
    if (r < 0) return c;
  }
  return candidates[candidates.length - 1]!;
}

/** Two distinct weighted-random candidates; the one with the lower cost wins (the first on a tie). */
function powerOfTwo(
  candidates: readonly Candidate[],
  random: () => number,
  cost: (c: Candidate) => number,
): Candidate {
  const a = weightedRandom(candidates, random);
  const rest = candidates.filter((c) => c !== a);
  const b = weightedRandom(rest, random);
  return cost(b) < cost(a) ? b : a;
}

function hash64(text: string): number {
  // 52 bits of SHA-1: plenty for ranking, and exact in a double.
  const h = createHash("sha1").update(text).digest();
  return (h.readUInt32BE(0) & 0xfffff) * 2 ** 32 + h.readUInt32BE(4);
}

function rendezvous(candidates: readonly Candidate[], clientAddress: string): Candidate {
  let best = candidates[0]!;
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const c of candidates) {
    // Weighted HRW: score = -w / ln(u), u uniform in (0,1) from the hash of (endpoint, client).
    const u = (hash64(`${c.endpoint.key}|${clientAddress}`) + 1) / (2 ** 52 + 2);
    const score = -c.endpoint.weight / Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = c;
    }
  }
  return best;
}

/**
 * Peak-EWMA of connect latency: a new sample above the current value replaces it at once (peak), one
 * below decays towards it with time constant `decayMs` (Linkerd uses 10 s).
 */
export class PeakEwma {
  private value = 0;
  private stamp = 0;

  constructor(private readonly decayMs = 10_000) {}

  observe(sampleMs: number, nowMs: number): void {
    if (this.value === 0 || sampleMs > this.value) {
      this.value = sampleMs;
    } else {
      const elapsed = Math.max(0, nowMs - this.stamp);
      const w = Math.exp(-elapsed / this.decayMs);
      this.value = this.value * w + sampleMs * (1 - w);
    }
    this.stamp = nowMs;
  }

  /** The estimate now (0 when there is no sample yet). */
  get(): number {
    return this.value;
  }
}
