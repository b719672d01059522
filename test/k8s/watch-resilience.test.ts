/**
 * Acceptance 1: watch resilience against a real API server (etcd + kube-apiserver from their Go
 * modules). The `k8s` source reaches the API server through a loopback relay the test controls.
 *   1. events: a Service created through the API server reaches the source within 100 ms (median);
 *   2. API server restarted: while it is down each reflector backs off (at most 6 attempts in 3 s);
 *      after, the table converges with the changes made since;
 *   3. compaction forcing 410: the source is cut off, objects are deleted, changed and created, etcd is
 *      compacted and the API server restarted (its watch cache starts after the source's version):
 *      the source re-lists and its handler sees exactly the missed delete, update and add, with no
 *      duplicate add of anything it already had.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { ServiceConfig } from "../../src/config/services-schema.ts";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { K8sSource } from "../../src/discovery/k8s-source.ts";
import { HttpsKubeApi } from "../../src/k8s/client.ts";
import { kubeconfigConnection } from "../../src/k8s/config.ts";
import { service } from "../fixtures/k8s-discovery.ts";
import { eventually } from "../helpers/eventually.ts";
import { requireEnvtest, startKubeEnv } from "../helpers/kube-envtest.ts";
import { createIn, createNamespace } from "../helpers/kube-objects.ts";
import { startRelay } from "../helpers/relay.ts";

const NS = "watch";

test("k8s watch: events within 100 ms; API server restart and 410 re-list converge without duplicate adds", async (t) => {
  if (!requireEnvtest(t)) return;
  const env = await startKubeEnv(t);
  await createNamespace(env, NS);
  const apiPort = Number(new URL(env.url).port);
  const relay = await startRelay(apiPort);
  t.after(() => relay.close());
  const conn = kubeconfigConnection(env.kubeconfig, systemClock);
  const api = new HttpsKubeApi({ ...conn, server: `https://127.0.0.1:${relay.port}` });
  t.after(() => api.close());

  const changes: { resource: string; kind: string; key: string; at: number }[] = [];
  let table: ServiceConfig[] = [];
  const metrics = new WeftMetrics();
  const source = new K8sSource({
    api,
    trustDomain: "weft.local",
    namespaces: [NS],
    onServices: (s) => {
      table = s;
    },
    metrics,
    logger: new MemoryLogger(),
    clock: systemClock,
    onChange: (resource, kind, key) => changes.push({ resource, kind, key, at: performance.now() }),
  });
  source.start();
  t.after(() => source.stop());
  await source.synced;
  const names = () => table.map((s) => s.name).sort();

  // 1. Latency of watch events: created → seen by the handler.
  const latencies: number[] = [];
  for (let i = 0; i < 15; i++) {
    const name = `svc-${i}`;
    const t0 = performance.now();
    await createIn(env, NS, service(name, `198.18.129.${i + 1}`, [{ port: 80 }]));
    await eventually(`${name} seen`, async () => changes.some((c) => c.key === `${NS}/${name}`), {
      timeoutMs: 5000,
    });
    latencies.push(changes.find((c) => c.key === `${NS}/${name}`)!.at - t0);
  }
  latencies.sort((a, b) => a - b);
  const median = latencies[Math.floor(latencies.length / 2)]!;
  t.diagnostic(
    `watch event latency (create → handler), ms: median ${median.toFixed(1)}, max ${latencies.at(-1)!.toFixed(1)}`,
  );
  assert.ok(median < 100, `median event latency ${median.toFixed(1)} ms (want < 100)`);
  assert.equal(table.length, 15);

  // 2. Restart: down for a while (backoff measured), then changes made after it are seen.
  const reflectors = ["services", "endpointslices", "pods"].flatMap((r) =>
    source.reflectorsOf(r as "services"),
  );
  await env.stopApiServer();
  await sleep(200); // the watches notice the server is gone
  const before = reflectors.map((r) => r.requestAttempts);
  await sleep(3000);
  const during = reflectors.map((r, i) => r.requestAttempts - before[i]!);
  t.diagnostic(`attempts per reflector in 3 s while the API server was down: ${during.join(", ")}`);
  for (const n of during) {
    assert.ok(n <= 6, `at most 6 attempts in 3 s while down (saw ${n})`);
    assert.ok(n >= 2, `it kept retrying while down (saw ${n})`);
  }
  await env.startApiServer();
  await env.admin.request({ method: "DELETE", path: `/api/v1/namespaces/${NS}/services/svc-0` });
  await createIn(env, NS, service("after-restart", "198.18.129.100", [{ port: 80 }]));
  await eventually(
    "the table to converge after the restart",
    async () => !names().includes("svc-0.watch") && names().includes("after-restart.watch"),
    { timeoutMs: 60_000 },
  );

  // 3. Cut off, missed changes, compaction, API server restart: 410 → re-list with a diff.
  const relistsBefore =
    (await metrics.value("weft_k8s_relists_total", { resource: "services", reason: "expired" })) ?? 0;
  relay.hold();
  relay.destroyAll();
  await sleep(300); // the watches see the connections cut (a fixed wait: nothing to poll for)
  const mark = changes.length;
  await env.admin.request({ method: "DELETE", path: `/api/v1/namespaces/${NS}/services/svc-1` });
  await env.admin.request({
    method: "PATCH",
    path: `/api/v1/namespaces/${NS}/services/svc-2`,
    body: { metadata: { annotations: { "weft.io/balancer": "least-connections" } } },
  });
  await createIn(env, NS, service("while-cut", "198.18.129.101", [{ port: 80 }]));
  const revision = await env.compact();
  t.diagnostic(`etcd compacted at revision ${revision}`);
  await env.stopApiServer();
  await env.startApiServer();
  relay.release();
  await eventually(
    "the table to converge after the 410 re-list",
    async () =>
      !names().includes("svc-1.watch") &&
      names().includes("while-cut.watch") &&
      table.find((s) => s.name === "svc-2.watch")?.balancer === "least-connections",
    { timeoutMs: 60_000 },
  );
  const relistsAfter =
    (await metrics.value("weft_k8s_relists_total", { resource: "services", reason: "expired" })) ?? 0;
  assert.ok(relistsAfter > relistsBefore, "the services reflector re-listed after 410 Gone");
  const missed = changes.slice(mark).filter((c) => c.resource === "services");
  assert.deepEqual(
    missed.map((c) => `${c.kind} ${c.key}`).sort(),
    [`add ${NS}/while-cut`, `delete ${NS}/svc-1`, `update ${NS}/svc-2`],
    "the re-list's diff: exactly the missed delete, update and add",
  );
  // No duplicate adds over the whole run: every key was added once (none was deleted and re-created).
  const adds = new Map<string, number>();
  for (const c of changes.filter((x) => x.kind === "add")) adds.set(c.key, (adds.get(c.key) ?? 0) + 1);
  assert.deepEqual(
    [...adds.values()].filter((n) => n > 1),
    [],
    "no key added twice",
  );
  assert.equal(table.length, 15 - 2 + 2);
  const restarts = (await metrics.value("weft_k8s_watch_restarts_total", { resource: "services" })) ?? 0;
  assert.ok(restarts >= 2, "watch restarts are counted");
});
