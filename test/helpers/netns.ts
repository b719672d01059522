/**
 * The network-namespace harness for tests: the shipped one (src/netns/namespaces.ts) plus
 * `requireRoot`, which skips a test without root and fails it under CI.
 */
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { createNetwork, namespacesOf, type TestNetwork } from "../../src/netns/namespaces.ts";

export * from "../../src/netns/namespaces.ts";

/** A test network, destroyed after the test with a check that none of its namespaces is left. */
export async function testNetwork(t: TestContext): Promise<TestNetwork> {
  const net = await createNetwork();
  t.after(async () => {
    await net.destroy();
    assert.deepEqual(await namespacesOf(net.id), [], "no namespace left behind");
  });
  return net;
}

/** Skip (with the reason) unless root; under CI=true a missing root is a failure, not a skip. */
export function requireRoot(
  t: TestContext,
  why = "needs root (network namespaces and iptables); run the suite as root",
): boolean {
  if (process.getuid?.() === 0) return true;
  if (process.env.CI === "true") throw new Error(`${why}: CI must run these tests`);
  t.skip(why);
  return false;
}
