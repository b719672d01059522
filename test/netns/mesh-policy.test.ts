/**
 * Authorization and plaintext policy inside network namespaces, with the compose scripts
 * (examples/pod/*.sh through src/netns/pods.ts). Pods: a CA; `web` (nginx, strict, policy: only
 * `frontend` may reach 8080); `cache` (redis-server, strict, only `frontend` may reach 6379); `legacy`
 * (nginx, inbound permissive); clients `frontend` and `intruder` (sidecars with those identities) and
 * `outsider` (no sidecar). It shows:
 *   - the allowed identity gets through (curl to nginx, redis-cli and redis-benchmark to redis);
 *   - the other identity is refused by the backend sidecar and counted per peer identity;
 *   - plaintext from the pod without a sidecar is refused in strict mode and passed in permissive mode,
 *     each counted in `weft_inbound_plaintext_total{mode,decision}`;
 *   - no namespace is left behind.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { apps, createPodCluster, curlFrom, type Pod } from "../../src/netns/pods.ts";
import { eventually } from "../helpers/eventually.ts";
import { namespacesOf, requireRoot } from "../helpers/netns.ts";

const TD = "weft.local";
const FRONTEND = `spiffe://${TD}/ns/default/sa/frontend`;
const INTRUDER = `spiffe://${TD}/ns/default/sa/intruder`;

const onlyFrontend = (port: number) => [
  "policy:",
  "  default: deny",
  `  rules: [ { ports: [${port}], allow: ["${FRONTEND}"] } ]`,
];

const metricValue = (metrics: string, series: string): number => {
  const line = metrics.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
};

test("netns: only the allowed identity reaches nginx and redis; plaintext from a pod without a sidecar is refused in strict mode and passed in permissive mode, and counted", async (t) => {
  if (!requireRoot(t)) return;
  const cluster = await createPodCluster({
    workloads: ["frontend", "intruder", "web", "cache", "legacy"],
    tokenUses: 2,
  });
  t.after(async () => {
    await cluster.destroy();
    assert.deepEqual(await namespacesOf(cluster.net.id), [], "no namespace left behind");
  });

  const [web, cache, legacy] = (await Promise.all([
    cluster.addPod({
      name: "web",
      sa: "web",
      app: (dir) => apps.nginx(dir, 8080, "web"),
      extraYaml: onlyFrontend(8080),
    }),
    cluster.addPod({
      name: "cache",
      sa: "cache",
      app: (dir) => apps.redis(dir, 6379),
      extraYaml: onlyFrontend(6379),
    }),
    cluster.addPod({
      name: "legacy",
      sa: "legacy",
      app: (dir) => apps.nginx(dir, 8080, "legacy"),
      inboundMode: "permissive",
    }),
  ])) as [Pod, Pod, Pod];
  const vips = { web: cluster.vip(), cache: cluster.vip(), legacy: cluster.vip() };
  await cluster.writeServices([
    { name: "web", ports: [8080], vips: [vips.web], endpoints: [{ address: web.ip4 }] },
    { name: "cache", ports: [6379], vips: [vips.cache], endpoints: [{ address: cache.ip4 }] },
    { name: "legacy", ports: [8080], vips: [vips.legacy], endpoints: [{ address: legacy.ip4 }] },
  ]);
  const [frontend, intruder, outsider] = (await Promise.all([
    cluster.addPod({ name: "frontend", sa: "frontend" }),
    cluster.addPod({ name: "intruder", sa: "intruder" }),
    cluster.addPod({ name: "outsider" }),
  ])) as [Pod, Pod, Pod];
  for (const c of [frontend, intruder]) {
    await eventually(
      `${c.name}'s sidecar to load the services file`,
      async () => (await c.admin("/endpoints").catch(() => "")).includes(cache.ip4),
      { timeoutMs: 30_000, intervalMs: 100 },
    );
  }

  // The allowed identity: nginx through the mesh, then redis with its own clients.
  assert.equal(await curlFrom(frontend, `http://${vips.web}:8080/`), "web");
  assert.equal((await frontend.exec("redis-cli", ["-h", vips.cache, "-p", "6379", "PING"])).trim(), "PONG");
  assert.equal(
    (await frontend.exec("redis-cli", ["-h", vips.cache, "-p", "6379", "SET", "weft", "meshed"])).trim(),
    "OK",
  );
  assert.equal(
    (await frontend.exec("redis-cli", ["-h", vips.cache, "-p", "6379", "GET", "weft"])).trim(),
    "meshed",
  );
  const bench = await frontend.exec("redis-benchmark", [
    "-h",
    vips.cache,
    "-p",
    "6379",
    "-n",
    "2000",
    "-c",
    "4",
    "-t",
    "set,get",
    "-q",
  ]);
  const summary = bench
    .split(/[\r\n]/)
    .filter((l) => /requests per second/.test(l))
    .map((l) => l.trim());
  t.diagnostic(`redis-benchmark through the mesh: ${summary.join("; ")}`);
  assert.match(bench, /SET: [\d.]+ requests per second/);
  assert.match(bench, /GET: [\d.]+ requests per second/);

  // The other identity: the backend sidecars refuse it after the handshake, by policy.
  const denied = await curlFrom(intruder, `http://${vips.web}:8080/`);
  assert.match(denied, /^failed/, `intruder got an answer from web: ${denied}`);
  const redisDenied = await intruder
    .exec("redis-cli", ["-h", vips.cache, "-p", "6379", "PING"])
    .catch((e: Error) => `failed: ${e.message}`);
  assert.notEqual(redisDenied.trim(), "PONG", "intruder reached redis");
  await eventually("web and cache to count the denials", async () => {
    const [w, c] = await Promise.all([web.admin("/metrics"), cache.admin("/metrics")]).catch(() => ["", ""]);
    return (
      metricValue(w, `weft_policy_denied_total{peer_identity="${INTRUDER}",port="8080",rule="rules[0]"}`) >=
        1 &&
      metricValue(c, `weft_policy_denied_total{peer_identity="${INTRUDER}",port="6379",rule="rules[0]"}`) >= 1
    );
  });
  const webMetrics = await web.admin("/metrics");
  assert.equal(
    metricValue(
      webMetrics,
      `weft_policy_denied_total{peer_identity="${FRONTEND}",port="8080",rule="rules[0]"}`,
    ),
    0,
    "the allowed identity is never denied",
  );

  // No sidecar: strict refuses the plaintext, permissive passes it to the app; both are counted.
  const strict = await curlFrom(outsider, `http://${web.ip4}:8080/`);
  assert.match(strict, /^failed/, `outsider got through to strict web: ${strict}`);
  const permissive = await curlFrom(outsider, `http://${legacy.ip4}:8080/`);
  assert.equal(permissive, "legacy", "permissive mode passes plaintext to the app");
  await eventually("both plaintext decisions to be counted", async () => {
    const [w, l] = await Promise.all([web.admin("/metrics"), legacy.admin("/metrics")]).catch(() => ["", ""]);
    return (
      metricValue(w, 'weft_inbound_plaintext_total{mode="strict",decision="refused"}') === 1 &&
      metricValue(l, 'weft_inbound_plaintext_total{mode="permissive",decision="passed"}') === 1
    );
  });
  // The mesh path to the permissive pod still works, and that is not plaintext.
  assert.equal(await curlFrom(frontend, `http://${vips.legacy}:8080/`), "legacy");
  assert.equal(
    metricValue(
      await legacy.admin("/metrics"),
      'weft_inbound_plaintext_total{mode="permissive",decision="passed"}',
    ),
    1,
  );
});
