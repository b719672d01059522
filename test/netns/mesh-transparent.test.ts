/**
 * The mesh, transparent and end to end, in network namespaces the test creates, run by the same
 * scripts as docker-compose (examples/pod/ca.sh, init.sh, sidecar.sh, through src/netns/pods.ts): a CA
 * pod, a client pod running plain `curl`, a backend pod running a plain Node HTTP server, each with a
 * Weft sidecar as UID 1337 that got its identity from the CA pod with a join token, and an "outsider"
 * pod with no sidecar. It shows:
 *   - the app's connection is captured (SO_ORIGINAL_DST) and carried over mutual TLS: tcpdump on the
 *     bridge sees TLS records and never the request or the response body;
 *   - the backend sidecar's metrics name the client's SPIFFE identity;
 *   - plaintext from a pod without a sidecar is refused (strict mode);
 *   - nothing is left behind: namespaces and processes are gone afterwards.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { apps, createPodCluster } from "../../src/netns/pods.ts";
import { eventually } from "../helpers/eventually.ts";
import { namespacesOf, requireRoot } from "../helpers/netns.ts";

const MARKER = "weft-secret-marker-7f3a";

test("transparent capture: curl → client sidecar → mTLS on the wire → backend sidecar → HTTP server; outsiders refused", async (t) => {
  if (!requireRoot(t)) return;
  const cluster = await createPodCluster({ workloads: ["frontend", "backend"] });
  const dir = cluster.dir;
  t.after(async () => {
    await cluster.destroy();
    assert.deepEqual(await namespacesOf(cluster.net.id), [], "no namespace left behind");
    const ps = execFileSync("ps", ["-eo", "args"]).toString();
    assert.ok(!ps.includes(dir), `processes left behind:\n${ps}`);
  });
  const net = cluster.net;
  // The app knows nothing of Weft.
  const backend = await cluster.addPod({
    name: "backend",
    sa: "backend",
    app: () => apps.node(8080, `${MARKER} from backend`),
  });
  await cluster.writeServices([{ name: "backend", ports: [8080], endpoints: [{ address: backend.ip4 }] }]);
  const [client, outsider] = await Promise.all([
    cluster.addPod({ name: "client", sa: "frontend", extraYaml: ["outboundPolicy: registry-only"] }),
    cluster.addPod({ name: "outsider" }),
  ]);
  await eventually(
    "the client sidecar to load the services file",
    async () => (await client.admin("/endpoints").catch(() => "")).includes(backend.ip4),
    { timeoutMs: 30_000, intervalMs: 100 },
  );

  // Capture the bridge while the client talks to the backend.
  const pcap = join(dir, "bridge.pcap");
  const dump = net.spawnInRouter("tcpdump", [
    "-i",
    "any",
    "--immediate-mode",
    "-Z",
    "root",
    "-U",
    "-w",
    pcap,
    "tcp",
  ]);
  await dump.waitFor(/listening on/);
  const answer = await client.exec("curl", [
    "-s",
    "--max-time",
    "10",
    `http://${backend.ip4}:8080/hello-${MARKER}`,
  ]);
  assert.equal(answer, `${MARKER} from backend /hello-${MARKER}\n`);
  // Let tcpdump write out the last packets before it stops (a fixed wait: nothing to poll for).
  await new Promise((r) => setTimeout(r, 500));
  await dump.kill("SIGINT");

  const text = await net.exec("tcpdump", ["-r", pcap, "-nn", "-X"]);
  const hex = await net.exec("tcpdump", ["-r", pcap, "-nn", "-x"]);
  assert.match(
    text,
    /\.15008[: ]/,
    `the traffic crossed the bridge to the tunnel port; capture:\n${text.slice(0, 2000)}\n${dump.output().slice(-500)}`,
  );
  assert.ok(!text.includes("weft-secret") && !text.includes("GET /"), "no application plaintext on the wire");
  assert.ok(
    !new RegExp(`${backend.ip4.replace(/\./g, "\\.")}\\.8080`).test(text),
    "nothing went to the app port directly",
  );
  assert.match(hex.replace(/\s+/g, ""), /1703030/, "TLS application-data records (0x17 0x0303) seen");

  // The backend sidecar names the client's identity.
  // Scraped on the metrics port (15020), as Prometheus does from outside the pod.
  const metrics = await backend.exec("curl", ["-s", `http://${backend.ip4}:15020/metrics`]);
  assert.match(
    metrics,
    /weft_tcp_connections_opened_total\{direction="inbound",service="backend",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend"\} [1-9]/,
  );

  // A pod without a sidecar: its plaintext reaches the backend's PREROUTING capture and is refused.
  const refused = await outsider
    .exec("curl", [
      "-s",
      "--max-time",
      "5",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://${backend.ip4}:8080/`,
    ])
    .catch((e: Error) => `failed: ${e.message}`);
  assert.ok(!refused.startsWith("200"), `outsider got through: ${refused}`);
  await eventually(
    "the refusal to be counted",
    async () =>
      /weft_inbound_plaintext_total\{mode="strict",decision="refused"\} 1/.test(
        await backend.exec("curl", ["-s", "http://127.0.0.1:15000/metrics"]).catch(() => ""),
      ),
    { timeoutMs: 30_000, intervalMs: 100 },
  );
});
