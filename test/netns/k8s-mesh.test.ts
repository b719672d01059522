/**
 * Acceptance 2, end to end: discovery from a real API server driving the transparent mesh in network
 * namespaces. A client pod calls a Service's ClusterIP; its sidecar resolves it from the Service and its
 * EndpointSlice (created in the API server, as a controller manager would) and carries the connection
 * over mutual TLS to one of two backend pods, each with its sidecar. Marking one backend terminating
 * (ready false, serving true) in the slice moves every new connection to the other, while a keep-alive
 * connection already open to the terminating one keeps flowing.
 * The sidecars reach the API server (on the machine's loopback) through a relay in the test network's
 * router namespace (198.18.<n>.1:6443) and a Unix socket: no traffic leaves the test's namespaces.
 */
import assert from "node:assert/strict";
import { chmod, chown, copyFile, mkdir, writeFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { stringify } from "yaml";
import { apps, createPodCluster, curlFrom, PROXY_UID } from "../../src/netns/pods.ts";
import { pod as podObject, service, slice } from "../fixtures/k8s-discovery.ts";
import { eventually } from "../helpers/eventually.ts";
import { requireEnvtest, startKubeEnv } from "../helpers/kube-envtest.ts";
import { createIn } from "../helpers/kube-objects.ts";
import { requireRoot } from "../helpers/netns.ts";

const CLUSTER_IP = "198.18.143.250";

test("k8s mesh: client → ClusterIP → mTLS → backends from EndpointSlices; terminating drains", async (t) => {
  if (!requireRoot(t) || !requireEnvtest(t)) return;
  const cluster = await createPodCluster({ workloads: ["client", "backend"], tokenUses: 4 });
  t.after(() => cluster.destroy());
  const base = cluster.caPod.host.ip4.split(".").slice(0, 3).join(".");
  const routerIp = `${base}.1`;
  const env = await startKubeEnv(t, { extraSans: [routerIp] });

  // The API server as the pods see it: router namespace relay → Unix socket → loopback.
  const k8sDir = join(cluster.dir, "k8s");
  await mkdir(k8sDir, { recursive: true });
  await chmod(k8sDir, 0o755);
  const sock = join(k8sDir, "api.sock");
  const apiPort = Number(new URL(env.url).port);
  const bridge = net.createServer((c) => {
    const up = net.connect(apiPort, "127.0.0.1");
    c.pipe(up).pipe(c);
    c.on("error", () => up.destroy());
    up.on("error", () => c.destroy());
  });
  await new Promise<void>((r) => bridge.listen(sock, r));
  t.after(() => new Promise<void>((r) => bridge.close(() => r())));
  const relay = cluster.net.spawnInRouter(process.execPath, [
    "-e",
    `const net=require("net");net.createServer(c=>{const u=net.connect(${JSON.stringify(sock)});c.pipe(u).pipe(c);c.on("error",()=>u.destroy());u.on("error",()=>c.destroy())}).listen(6443,${JSON.stringify(routerIp)},()=>console.log("relay up"))`,
  ]);
  await relay.waitFor(/relay up/, 10_000);

  // The sidecars' credentials: a client-certificate user bound to the weft-discovery rules.
  const userKc = await env.userKubeconfig("weft-sidecar");
  const user = "user-weft-sidecar";
  for (const f of ["ca.crt", `${user}.crt`, `${user}.key`]) {
    await copyFile(join(env.dir, f), join(k8sDir, f));
    await chown(join(k8sDir, f), PROXY_UID, PROXY_UID);
    await chmod(join(k8sDir, f), 0o600);
  }
  void userKc;
  const kubeconfig = join(k8sDir, "kubeconfig");
  await writeFile(
    kubeconfig,
    stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: "t",
          cluster: { server: `https://${routerIp}:6443`, "certificate-authority": join(k8sDir, "ca.crt") },
        },
      ],
      users: [
        {
          name: "u",
          user: {
            "client-certificate": join(k8sDir, `${user}.crt`),
            "client-key": join(k8sDir, `${user}.key`),
          },
        },
      ],
      contexts: [{ name: "t", context: { cluster: "t", user: "u" } }],
      "current-context": "t",
    }),
    { mode: 0o644 },
  );
  await env.admin.request({
    method: "POST",
    path: "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    body: {
      metadata: { name: "weft-discovery" },
      rules: [
        { apiGroups: [""], resources: ["services", "pods"], verbs: ["list", "watch"] },
        { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] },
      ],
    },
  });
  await env.admin.request({
    method: "POST",
    path: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    body: {
      metadata: { name: "weft-discovery" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "weft-discovery" },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "weft-sidecar" }],
    },
  });

  // What kubelet and the controller manager would have made: service accounts, pods, service, slice.
  for (const sa of ["default", "client", "backend"]) {
    await createIn(env, "default", { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa } });
  }
  const discoveryYaml = `{ file: ${cluster.servicesFile}, kubernetes: { kubeconfig: ${kubeconfig}, namespaces: [default] } }`;
  const a = await cluster.addPod({
    name: "backend-a",
    sa: "backend",
    app: (d) => apps.nginx(d, 8080, "backend-a"),
    discoveryYaml,
  });
  const b = await cluster.addPod({
    name: "backend-b",
    sa: "backend",
    app: (d) => apps.nginx(d, 8080, "backend-b"),
    discoveryYaml,
  });
  const client = await cluster.addPod({ name: "client", sa: "client", discoveryYaml });
  for (const p of [
    podObject("backend-a", "backend", true),
    podObject("backend-b", "backend", true),
    podObject("client", "client", true),
  ]) {
    await createIn(env, "default", p);
  }
  await createIn(
    env,
    "default",
    service("backend", CLUSTER_IP, [{ name: "http", port: 8080, targetPort: 8080 }]),
  );
  const sliceObj = (terminatingA: boolean) =>
    slice(
      "backend-1",
      "backend",
      [{ name: "http", port: 8080 }],
      [
        terminatingA
          ? { ip: a.ip4, pod: "backend-a", ready: false, serving: true, terminating: true }
          : { ip: a.ip4, pod: "backend-a", ready: true },
        { ip: b.ip4, pod: "backend-b", ready: true },
      ],
    );
  const created = (await createIn(env, "default", sliceObj(false))) as {
    metadata: { resourceVersion: string };
  };

  const endpointsSeen = async () => {
    const view = JSON.parse(await client.admin("/endpoints")) as {
      name: string;
      endpoints: { address: string }[];
    }[];
    return (view.find((s) => s.name === "backend.default")?.endpoints ?? []).map((e) => e.address).sort();
  };
  await eventually(
    "the client's sidecar to see both backends",
    async () => (await endpointsSeen().catch(() => [])).length === 2,
    { timeoutMs: 30_000, intervalMs: 100 },
  );

  // New connections spread over both backends, through mTLS (the backends' sidecars see the client's ID).
  const answers = new Set<string>();
  for (let i = 0; i < 8; i++) answers.add(await curlFrom(client, `http://${CLUSTER_IP}:8080/`));
  assert.deepEqual([...answers].sort(), ["backend-a", "backend-b"]);
  for (const backend of [a, b]) {
    const metrics = await backend.admin("/metrics");
    assert.match(metrics, /weft_tcp_connections_opened_total\{direction="inbound"/);
    assert.match(metrics, /peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/client"/);
  }

  // A keep-alive connection, one request every 200 ms for 12 s, printing which backend answered.
  const keepalive = client.host.spawn(process.execPath, [
    "-e",
    `const s=require("net").connect(8080,${JSON.stringify(CLUSTER_IP)});let n=0;const t0=Date.now();
     s.on("data",d=>{for(const m of String(d).matchAll(/backend-[ab]/g))console.log((Date.now()-t0)+" "+m[0])});
     const iv=setInterval(()=>{if(Date.now()-t0>12000){clearInterval(iv);s.end();return}s.write("GET / HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n");n++},200);
     s.on("error",e=>{console.log("error "+e.message);process.exit(1)});`,
  ]);
  await keepalive.waitFor(/\d+ backend-[ab]/, 10_000);
  const first = /\d+ (backend-[ab])/.exec(keepalive.output())![1]!;
  // Mark the backend of the open connection terminating; the other one stays ready.
  const terminatingPod = first === "backend-a" ? a : b;
  const other = first === "backend-a" ? "backend-b" : "backend-a";
  const updated = sliceObj(false) as {
    endpoints: Record<string, unknown>[];
    metadata: Record<string, unknown>;
  };
  for (const e of updated.endpoints) {
    if ((e.addresses as string[])[0] === terminatingPod.ip4)
      e.conditions = { ready: false, serving: true, terminating: true };
  }
  updated.metadata = {
    ...updated.metadata,
    namespace: "default",
    resourceVersion: created.metadata.resourceVersion,
  };
  await env.admin.request({
    method: "PUT",
    path: "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/backend-1",
    body: updated,
  });
  const markedAt = keepalive.output().trim().split("\n").length;
  await eventually(
    "the client's sidecar to drop the terminating backend",
    async () => {
      const seen = await endpointsSeen().catch(() => []);
      return seen.length === 1 && seen[0] !== terminatingPod.ip4;
    },
    { intervalMs: 100 },
  );
  const after = new Set<string>();
  for (let i = 0; i < 6; i++) after.add(await curlFrom(client, `http://${CLUSTER_IP}:8080/`));
  assert.deepEqual([...after], [other], "new connections go to the ready backend only");
  // A fixed window: the open connection must keep flowing, and not be cut, all through it.
  await sleep(1500);
  const lines = keepalive.output().trim().split("\n");
  const later = lines.slice(markedAt);
  assert.ok(later.length >= 5, `the open connection kept flowing after the mark (${later.length} answers)`);
  assert.ok(
    later.every((l) => l.endsWith(first)),
    "the open connection stayed on the terminating backend",
  );
  assert.ok(!lines.some((l) => l.startsWith("error")), "the open connection was not cut");
  await keepalive.exited;
});
