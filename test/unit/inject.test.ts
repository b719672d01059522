/**
 * `weft inject` / `weft uninject` as a pure function: golden files (UPDATE_GOLDEN=1 rewrites them after a
 * deliberate change), inject∘inject = inject, uninject∘inject = identity (the same text and the same
 * objects), skip reasons, probe-port warnings, and the webhook's JSON path giving what the CLI gives.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { parseAllDocuments } from "yaml";
import { parseConfig } from "../../src/config/load.ts";
import { injectManifests, injectPodObject, uninjectManifests } from "../../src/k8s/inject.ts";
import { INJECT_OPTIONS } from "../fixtures/inject/options.ts";

const DIR = join(import.meta.dirname, "../fixtures/inject");
const CASES = ["workloads", "pod-list"];
const objects = (text: string) => parseAllDocuments(text).map((d) => (d as { toJS(): unknown }).toJS());
const normalized = (text: string) =>
  parseAllDocuments(text)
    .map((d) => d.toString({ lineWidth: 0 }))
    .join("");

for (const name of CASES) {
  const input = readFileSync(join(DIR, `${name}.in.yaml`), "utf8");

  test(`inject golden: ${name}`, () => {
    const out = injectManifests(input, INJECT_OPTIONS);
    const golden = join(DIR, `${name}.injected.yaml`);
    if (process.env.UPDATE_GOLDEN === "1") writeFileSync(golden, out.text);
    assert.equal(out.text, readFileSync(golden, "utf8"));
  });

  test(`inject is idempotent and uninject reverses it: ${name}`, () => {
    const once = injectManifests(input, INJECT_OPTIONS);
    const twice = injectManifests(once.text, INJECT_OPTIONS);
    assert.equal(twice.text, once.text, "inject∘inject = inject");
    const back = uninjectManifests(once.text);
    assert.equal(back.text, normalized(input), "uninject∘inject = identity (text)");
    assert.deepEqual(objects(back.text), objects(input), "uninject∘inject = identity (objects)");
    assert.equal(back.changed, once.changed);
    assert.equal(
      uninjectManifests(input).text,
      normalized(input),
      "uninject of plain manifests changes nothing",
    );
  });
}

test("inject: skips hostNetwork and opted-out templates with a reason; warns for each probe port", () => {
  const out = injectManifests(readFileSync(join(DIR, "workloads.in.yaml"), "utf8"), INJECT_OPTIONS);
  assert.equal(out.changed, 3, "Deployment, StatefulSet and CronJob injected");
  assert.deepEqual(out.skipped, [
    "document 3: DaemonSet/node-agent: hostNetwork: the pod shares the node's network namespace, capture would take the node's traffic",
    'document 5: Job/once: opted out (weft.io/inject: "false")',
  ]);
  assert.equal(out.warnings.length, 2);
  assert.match(out.warnings[0]!, /port 9901 \(app livenessProbe\) is excluded from inbound capture/);
  assert.match(out.warnings[1]!, /port 8080 \(app readinessProbe\)/);
  assert.match(out.text, /--exclude-inbound-ports\n\s+- 8080,9901/);
  assert.match(out.text, /# The demo's backend/, "comments survive");
});

test("inject: refuses a template without containers and text that is not YAML, naming where", () => {
  assert.throws(
    () => injectManifests("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n", INJECT_OPTIONS),
    /E_USAGE: Pod\/p: the pod template has no containers/,
  );
  assert.throws(() => injectManifests("a: [\n", INJECT_OPTIONS), /E_USAGE: document 1 is not valid YAML/);
});

test("inject: the webhook's JSON path gives the CLI's result", () => {
  const pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "client", namespace: "weft-demo", labels: { app: "client" } },
    spec: { serviceAccountName: "client", containers: [{ name: "c", image: "registry.invalid/c:1" }] },
  };
  const viaJson = injectPodObject(structuredClone(pod), INJECT_OPTIONS).pod;
  const viaCli = objects(injectManifests(JSON.stringify(pod), INJECT_OPTIONS).text)[0];
  assert.deepEqual(viaJson, viaCli);
});

test("inject: the sidecar's weft.yaml (annotation) is a valid config once WEFT_CA_ID is set", () => {
  const out = objects(
    injectManifests(readFileSync(join(DIR, "workloads.in.yaml"), "utf8"), INJECT_OPTIONS).text,
  );
  const sts = out[1] as { spec: { template: { metadata: { annotations: Record<string, string> } } } };
  const text = sts.spec.template.metadata.annotations["weft.io/sidecar-config"]!;
  const config = parseConfig(text, { WEFT_CA_ID: "spiffe://weft.local/ns/shop/sa/db" });
  assert.equal(config.identity.ca?.id, "spiffe://weft.local/ns/shop/sa/db");
  assert.equal(config.identity.ca?.kubernetesTokenFile, "/var/run/weft/token/token");
  assert.deepEqual(config.discovery.kubernetes, { namespaces: [] });
  assert.deepEqual(
    config.inbound.ports.map((p) => p.port),
    [5432],
    "the StatefulSet's port is captured (it has no probes)",
  );
});
