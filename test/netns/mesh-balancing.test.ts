/**
 * Load balancing, failover and return inside network namespaces, with the compose scripts
 * (examples/pod/*.sh through src/netns/pods.ts): a CA pod, a client pod (plain curl) and three backend
 * pods, each running an unmodified nginx that answers with its pod name. The client asks a service VIP
 * that exists only in the services file; its sidecar picks a backend pod by IP.
 *   - each backend pod gets a share of 30 connections;
 *   - with one backend pod's nginx and sidecar killed, every later request succeeds and none reaches it;
 *     the client sidecar marks it ejected or unhealthy;
 *   - restarted, it returns after its ejection ends and gets traffic again;
 *   - no namespace is left behind.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { apps, backendService, createPodCluster, curlFrom, type Pod } from "../../src/netns/pods.ts";
import { eventually } from "../helpers/eventually.ts";
import { namespacesOf, requireRoot } from "../helpers/netns.ts";

interface EndpointView {
  key: string;
  state: string;
  timesEjected: number;
}

async function endpoints(pod: Pod): Promise<EndpointView[]> {
  const body = JSON.parse(await pod.admin("/endpoints")) as Array<{
    name?: string;
    service?: string;
    endpoints: EndpointView[];
  }>;
  return body.flatMap((s) => s.endpoints);
}

async function burst(client: Pod, url: string, n: number): Promise<Map<string, number>> {
  const tally = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const answer = await curlFrom(client, url);
    const who = answer.startsWith("failed") ? "failed" : answer;
    tally.set(who, (tally.get(who) ?? 0) + 1);
  }
  return tally;
}

const show = (m: Map<string, number>) =>
  [...m]
    .sort()
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ");

test("netns: connections spread over three backend pods; a killed pod is failed over and ejected, and gets traffic again when it returns", async (t) => {
  if (!requireRoot(t)) return;
  const cluster = await createPodCluster({ workloads: ["frontend", "backend"], tokenUses: 3 });
  t.after(async () => {
    await cluster.destroy();
    assert.deepEqual(await namespacesOf(cluster.net.id), [], "no namespace left behind");
  });

  const backends: Pod[] = [];
  for (const name of ["backend-1", "backend-2", "backend-3"]) {
    backends.push(await cluster.addPod({ name, sa: "backend", app: (dir) => apps.nginx(dir, 8080, name) }));
  }
  const vip = cluster.vip();
  await cluster.writeServices([backendService(vip, backends, "3s")]);
  const client = await cluster.addPod({ name: "client", sa: "frontend" });
  const url = `http://${vip}:8080/`;
  await eventually(
    "the client sidecar to know three backend endpoints",
    async () => (await endpoints(client).catch(() => [])).length === 3,
    { timeoutMs: 30_000, intervalMs: 100 },
  );

  const spread = await burst(client, url, 30);
  t.diagnostic(`30 connections → ${show(spread)}`);
  assert.equal(spread.get("failed"), undefined, show(spread));
  for (const b of backends) {
    assert.ok((spread.get(b.name) ?? 0) >= 5, `${b.name} gets a share: ${show(spread)}`);
  }

  const [, , dead] = backends as [Pod, Pod, Pod];
  await dead.stop();
  const failover = await burst(client, url, 30);
  t.diagnostic(`backend-3 killed: 30 connections → ${show(failover)}`);
  assert.equal(failover.get("failed"), undefined, `no request fails: ${show(failover)}`);
  assert.equal(failover.get("backend-3"), undefined, "the dead pod gets nothing");
  assert.equal((failover.get("backend-1") ?? 0) + (failover.get("backend-2") ?? 0), 30);
  const deadKey = `${dead.ip4}:8080`;
  const deadView = (await endpoints(client)).find((e) => e.key === deadKey);
  assert.ok(
    deadView && (deadView.state === "ejected" || deadView.state === "unhealthy"),
    `the dead endpoint is out of rotation: ${JSON.stringify(deadView)}`,
  );
  const metrics = await client.admin("/metrics");
  assert.match(
    metrics,
    new RegExp(
      `weft_(outlier_ejections|health_check_failures)_total\\{service="backend",endpoint="${deadKey.replace(/\./g, "\\.")}"\\} [1-9]`,
    ),
    "the client sidecar counted the failures",
  );

  await dead.start();
  // Back in rotation: healthy, or on probation (the ejection ended; the next connection decides).
  let lastSeen = "";
  await eventually(
    () => `backend-3 to return to rotation (last seen ${lastSeen})`,
    async () => {
      const view = (await endpoints(client).catch(() => [])).find((e) => e.key === deadKey);
      lastSeen = JSON.stringify(view);
      return view?.state === "healthy" || view?.state === "probation";
    },
    { timeoutMs: 30_000, intervalMs: 100 },
  );
  const back = await burst(client, url, 30);
  t.diagnostic(`backend-3 back: 30 connections → ${show(back)}`);
  assert.equal(back.get("failed"), undefined, show(back));
  assert.ok((back.get("backend-3") ?? 0) >= 1, `backend-3 gets traffic again: ${show(back)}`);
});
