/**
 * The network-namespace harness for tests: the shipped one (src/netns/namespaces.ts) plus
 * `requireRoot`, which skips a test without root and fails it under CI.
 */
import type { TestContext } from "node:test";

export * from "../../src/netns/namespaces.ts";

/** Skip (with the reason) unless root; under CI=true a missing root is a failure, not a skip. */
export function requireRoot(t: TestContext): boolean {
  if (process.getuid?.() === 0) return true;
  const why = "needs root (network namespaces and iptables); run the suite as root";
  if (process.env.CI === "true") throw new Error(`${why}: CI must run these tests`);
  t.skip(why);
  return false;
}
