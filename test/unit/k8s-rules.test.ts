/**
 * The Kubernetes discovery rules, applied as a pure function to the fixture table (the same table
 * test/k8s/discovery-rules.test.ts creates in a real API server).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Pod } from "kubernetes-types/core/v1.js";
import { kubeServices } from "../../src/discovery/k8s-rules.ts";
import { DISCOVERY_CASES, expected, inNamespace, summarize, TD } from "../fixtures/k8s-discovery.ts";

for (const c of DISCOVERY_CASES) {
  test(`k8s rules: ${c.name}: ${c.rule}`, () => {
    const ns = c.name;
    const pods = new Map<string, Pod>();
    for (const p of inNamespace(c.pods, ns) as Pod[]) pods.set(`${ns}/${p.metadata!.name}`, p);
    const result = kubeServices(
      { services: inNamespace(c.services, ns) as never, slices: inNamespace(c.slices, ns) as never, pods },
      TD,
    );
    const want = expected(c, ns);
    assert.deepEqual(summarize(result.services), want.expect);
    assert.deepEqual(result.heldBack, want.heldBack);
  });
}

test("k8s rules: a held-back endpoint appears once its pod is known", () => {
  const c = DISCOVERY_CASES.find((x) => x.name === "plaintext-and-held")!;
  const ns = "late";
  const pods = new Map<string, Pod>();
  for (const p of inNamespace(c.pods, ns) as Pod[]) pods.set(`${ns}/${p.metadata!.name}`, p);
  pods.set(`${ns}/legacy-missing`, {
    metadata: { name: "legacy-missing", namespace: ns, labels: { "weft.io/injected": "true" } },
    spec: { serviceAccountName: "late-sa", containers: [] },
  });
  const result = kubeServices(
    { services: inNamespace(c.services, ns) as never, slices: inNamespace(c.slices, ns) as never, pods },
    TD,
  );
  assert.deepEqual(result.heldBack, []);
  assert.ok(
    summarize(result.services)["legacy.late"]!.endpoints.includes(
      `198.18.0.53:8080 mtls spiffe://${TD}/ns/late/sa/late-sa`,
    ),
  );
});
