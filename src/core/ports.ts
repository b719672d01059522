/**
 * A free TCP port on loopback, for the demo, the benchmark and the tests (bound, then released: the
 * caller binds it again a moment later).
 *
 * Port 0 would give a port from the kernel's ephemeral range, the same range every outgoing connection
 * draws its local port from: on a busy host (a test suite making thousands of loopback connections) one
 * of them can take the port between our release and the caller's bind (seen: E_ADDR_IN_USE for a
 * sidecar's listener, etcd failing to bind). So the port is drawn at random outside the ephemeral range
 * (below it, or above it when it starts low), where only explicit binds live, and checked by binding it.
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

const FLOOR = 10_000;
const CEILING = 65_535;
const TRIES = 50;
/** Weft's (and Istio's) well-known ports (15001, 15006, 15008, 15020, 15443, ...), which some tests bind as they are. */
const RESERVED = { from: 15_000, to: 15_999 };
/** Linux's default ephemeral range, when /proc does not say. */
const DEFAULT_EPHEMERAL = { low: 32_768, high: 60_999 };
/** The least span worth drawing from; a host whose ephemeral range leaves less gets port 0. */
const MIN_SPAN = 2_000;

/** The kernel's ephemeral range (Linux), or the usual default. */
function ephemeralRange(): { low: number; high: number } {
  try {
    const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
      .trim()
      .split(/\s+/)
      .map(Number);
    if (Number.isInteger(low) && Number.isInteger(high) && low! <= high!) return { low: low!, high: high! };
  } catch {
    // Not Linux, or no /proc: assume the default.
  }
  return DEFAULT_EPHEMERAL;
}

/**
 * Where to draw from: below the ephemeral range (from FLOOR) when that leaves room, else above it;
 * undefined when neither does (a host whose range is 1024-65535): then only port 0 is left.
 */
export function drawRange(eph: { low: number; high: number }): { from: number; to: number } | undefined {
  if (eph.low - 1 - FLOOR >= MIN_SPAN) return { from: FLOOR, to: eph.low - 1 };
  if (CEILING - (eph.high + 1) >= MIN_SPAN) return { from: eph.high + 1, to: CEILING };
  return undefined;
}

function tryBind(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(undefined));
    s.listen({ port, host: "127.0.0.1", exclusive: true }, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** A port that was free on 127.0.0.1 a moment ago, outside the ephemeral range when possible. */
export async function freePort(): Promise<number> {
  const range = drawRange(ephemeralRange());
  for (let i = 0; range && i < TRIES; i++) {
    const pick = range.from + Math.floor(Math.random() * (range.to - range.from + 1));
    if (pick >= RESERVED.from && pick <= RESERVED.to) continue;
    const port = await tryBind(pick);
    if (port !== undefined) return port;
  }
  // No room outside the ephemeral range, or everything tried was taken: let the kernel choose.
  const port = await tryBind(0);
  if (port === undefined) throw new Error("no free TCP port on 127.0.0.1");
  return port;
}
