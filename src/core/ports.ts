/**
 * A free TCP port on loopback, for the demo, the benchmark and the tests (bound, then released: the
 * caller binds it again a moment later).
 *
 * Port 0 would give a port from the kernel's ephemeral range, the same range every outgoing connection
 * draws its local port from: on a busy host (a test suite making thousands of loopback connections) one
 * of them can take the port between our release and the caller's bind (seen: E_ADDR_IN_USE for a
 * sidecar's listener, etcd failing to bind). So the port is drawn at random below the ephemeral range,
 * where only explicit binds live, and checked by binding it.
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

/** Where ports are drawn from when the ephemeral range cannot be read (Linux's default starts at 32768). */
const FALLBACK_LOW = 32_768;
const FLOOR = 10_000;
const TRIES = 50;
/** Weft's (and Istio's) well-known ports (15001, 15006, 15008, 15020, 15443, ...), which some tests bind as they are. */
const RESERVED = { from: 15_000, to: 15_999 };

/** The first port of the kernel's ephemeral range (Linux), or the usual default. */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > FLOOR + 1_000 ? low : FALLBACK_LOW;
  } catch {
    return FALLBACK_LOW;
  }
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
  const high = ephemeralLow() - 1;
  for (let i = 0; i < TRIES; i++) {
    const pick = FLOOR + Math.floor(Math.random() * (high - FLOOR + 1));
    if (pick >= RESERVED.from && pick <= RESERVED.to) continue;
    const port = await tryBind(pick);
    if (port !== undefined) return port;
  }
  // Everything tried was taken: let the kernel choose.
  const port = await tryBind(0);
  if (port === undefined) throw new Error("no free TCP port on 127.0.0.1");
  return port;
}
