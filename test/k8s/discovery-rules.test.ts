/**
 * Acceptance 2, first half: the discovery rules as a table of fixtures applied to a real API server.
 * Each case's Pods, Services and EndpointSlices are created in their own namespace; a `k8s` discovery
 * source watching those namespaces must derive exactly the case's table entries (and hold back the
 * endpoints whose pod does not exist).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { createDiscovery } from "../../src/discovery/index.ts";
import { DISCOVERY_CASES, expected, summarize, TD } from "../fixtures/k8s-discovery.ts";
import { eventually } from "../helpers/eventually.ts";
import { requireEnvtest, startKubeEnv } from "../helpers/kube-envtest.ts";
import { applyCase } from "../helpers/kube-objects.ts";

test("k8s discovery: every fixture of the rule table, created in a real API server", async (t) => {
  if (!requireEnvtest(t)) return;
  const env = await startKubeEnv(t);
  for (const c of DISCOVERY_CASES) await applyCase(env, c, c.name);
  const metrics = new WeftMetrics();
  const discovery = createDiscovery({
    trustDomain: TD,
    services: [],
    dns: { minTtl: 5000, maxTtl: 300000, timeout: 2000 },
    retries: { attempts: 3, deadline: 10000 },
    outlierDetection: {
      enabled: false,
      consecutiveFailures: 5,
      baseEjectionTime: 30000,
      maxEjectionTime: 300000,
      maxEjectionPercent: 10,
    },
    metrics,
    logger: new MemoryLogger(),
    clock: systemClock,
    kubernetes: { api: env.admin, namespaces: DISCOVERY_CASES.map((c) => c.name) },
  });
  await discovery.start();
  t.after(() => discovery.stop());
  const table = () => {
    const all: Record<string, unknown> = {};
    for (const s of discovery.describe()) {
      all[s.name] = {
        vips: [...s.vips],
        port: s.ports[0]!.port,
        endpoints: s.endpoints.map((e) => `${e.address}:${e.port}`),
      };
    }
    return all;
  };
  // The registry shows addresses; identities and plaintext come from the source's declarations.
  const source = discovery.kubernetes!;
  await source.synced;
  for (const c of DISCOVERY_CASES) {
    const want = expected(c, c.name);
    const got = summarize(source.lastServices().filter((s) => s.namespace === c.name));
    assert.deepEqual(got, want.expect, `case ${c.name}: ${c.rule}`);
    assert.deepEqual(
      source.lastHeldBack().filter((k) => k.startsWith(`${c.name}/`)),
      want.heldBack,
      `case ${c.name}: held back`,
    );
    for (const [name, v] of Object.entries(want.expect)) {
      const entry = table()[name] as { vips: string[]; endpoints: string[] } | undefined;
      assert.ok(entry, `the route table has ${name}`);
      assert.deepEqual(entry.vips, v.vips);
      assert.deepEqual(
        entry.endpoints,
        v.endpoints.map((e) => e.split(" ")[0]),
      );
      for (const vip of v.vips) {
        assert.equal(
          discovery.resolve({ address: vip, port: v.port })?.service.name,
          name,
          `${vip}:${v.port} → ${name}`,
        );
      }
    }
  }
  // A held-back endpoint joins once its pod is created.
  const held = DISCOVERY_CASES.find((c) => c.name === "plaintext-and-held")!;
  await env.admin.request({
    method: "POST",
    path: `/api/v1/namespaces/${held.name}/pods`,
    body: {
      metadata: { name: "legacy-missing", labels: { "weft.io/injected": "true" } },
      spec: { serviceAccountName: "legacy", containers: [{ name: "app", image: "registry.invalid/app:1" }] },
    },
  });
  await eventually(
    "the held-back endpoint to join",
    async () =>
      (discovery.service(`legacy.${held.name}`)?.endpoints ?? []).some(
        (e) => e.address === "198.18.0.53" && e.sidecar,
      ),
    { timeoutMs: 10_000 },
  );
});
