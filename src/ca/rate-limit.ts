/**
 * What keeps one client from stopping the CA server: source addresses as the limits see them, and a
 * per-address budget of failed credential attempts (a token bucket: `burst` failures at once, then one
 * more every `refillMs`). Successful requests cost nothing; an address whose budget is spent gets 429 with
 * Retry-After before anything of its request is read or checked. The table is bounded (`maxAddresses`,
 * oldest dropped first), so a flood of source addresses cannot grow it without limit.
 */
import { isIP } from "node:net";
import type { Clock } from "../core/clock.ts";

/**
 * The key a source address is limited under: IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by its /64
 * (one host usually holds a whole /64, so per-address limits on single IPv6 addresses would not bite).
 */
export function addressKey(address: string | undefined): string {
  if (!address) return "unknown";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIP(address) !== 6) return address;
  const [head, tail = ""] = address.toLowerCase().split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = address.includes("::")
    ? [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ""))
    .join(":")}::/64`;
}

interface Bucket {
  tokens: number;
  at: number;
}

export interface FailureLimiterOptions {
  readonly clock: Clock;
  /** Failures allowed at once (default 10). */
  readonly burst?: number;
  /** One more failure is allowed this often (default 6 s: 10 a minute). */
  readonly refillMs?: number;
  /** Most addresses tracked (default 10,000). */
  readonly maxAddresses?: number;
}

export class FailureLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly burst: number;
  private readonly refillMs: number;
  private readonly maxAddresses: number;

  constructor(private readonly options: FailureLimiterOptions) {
    this.burst = options.burst ?? 10;
    this.refillMs = options.refillMs ?? 6_000;
    this.maxAddresses = options.maxAddresses ?? 10_000;
  }

  private current(key: string): Bucket | undefined {
    const b = this.buckets.get(key);
    if (!b) return undefined;
    const now = this.options.clock.now();
    b.tokens = Math.min(this.burst, b.tokens + (now - b.at) / this.refillMs);
    b.at = now;
    if (b.tokens >= this.burst) {
      this.buckets.delete(key);
      return undefined;
    }
    return b;
  }

  /** 0 when `key` may try now; otherwise the milliseconds until it may. */
  retryAfterMs(key: string): number {
    const b = this.current(key);
    if (!b || b.tokens >= 1) return 0;
    return Math.ceil((1 - b.tokens) * this.refillMs);
  }

  /** Spend one failure of `key`'s budget. */
  fail(key: string): void {
    let b = this.current(key);
    if (!b) {
      if (this.buckets.size >= this.maxAddresses) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
      b = { tokens: this.burst, at: this.options.clock.now() };
      this.buckets.set(key, b);
    }
    b.tokens = Math.max(0, b.tokens - 1);
  }

  /** Addresses tracked now (for tests and metrics). */
  get size(): number {
    return this.buckets.size;
  }
}
