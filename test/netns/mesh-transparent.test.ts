/**
 * The mesh, transparent and end to end, in network namespaces the test creates: a client pod running
 * plain `curl`, a backend pod running a plain Node HTTP server, each with a Weft sidecar as UID 1337
 * and the rules of `weft iptables install`, and an "outsider" pod with no sidecar. It shows:
 *   - the app's connection is captured (SO_ORIGINAL_DST) and carried over mutual TLS: tcpdump on the
 *     bridge sees TLS records and never the request or the response body;
 *   - the backend sidecar's metrics name the client's SPIFFE identity;
 *   - plaintext from a pod without a sidecar is refused (strict mode);
 *   - nothing is left behind: namespaces and processes are gone afterwards.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { createTestCa } from "../helpers/ca.ts";
import { createNetwork, type Host, listNamespaces, requireRoot } from "../helpers/netns.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));
const weft = join(root, "bin/weft.js");
const MARKER = "weft-secret-marker-7f3a";

async function until(what: string, fn: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("transparent capture: curl → client sidecar → mTLS on the wire → backend sidecar → HTTP server; outsiders refused", async (t) => {
  if (!requireRoot(t)) return;
  const before = await listNamespaces();
  const dir = mkdtempSync(join(tmpdir(), "weft-mesh-"));
  chmodSync(dir, 0o755);
  const net = await createNetwork();
  t.after(async () => {
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(await listNamespaces(), before, "no namespace left behind");
  });
  const client = await net.addHost("client");
  const backend = await net.addHost("backend");
  const outsider = await net.addHost("outsider");

  const ca = await createTestCa({ trustDomain: "weft.local" });
  const files = async (name: string, id: string) => {
    const issued = await ca.issue(id);
    for (const [f, text] of [
      ["cert", issued.chainPem],
      ["key", issued.keyPem],
      ["bundle", issued.bundlePem],
    ] as const) {
      writeFileSync(join(dir, `${name}-${f}.pem`), text, { mode: 0o644 });
    }
  };
  await files("client", "default/frontend");
  await files("backend", "default/backend");
  const config = (name: string, extra: string[]) => {
    const path = join(dir, `${name}.yaml`);
    writeFileSync(
      path,
      [
        "trustDomain: weft.local",
        `identity: { files: { cert: ${join(dir, `${name}-cert.pem`)}, key: ${join(dir, `${name}-key.pem`)}, bundle: ${join(dir, `${name}-bundle.pem`)} } }`,
        "log: { level: info }",
        ...extra,
        "",
      ].join("\n"),
      { mode: 0o644 },
    );
    return path;
  };
  const backendConfig = config("backend", ["inbound: { mode: strict }"]);
  const clientConfig = config("client", [
    "outboundPolicy: registry-only",
    "services:",
    "  - name: backend",
    "    ports: [8080]",
    `    endpoints: [ { address: ${backend.ip4} } ]`,
  ]);

  // The app knows nothing of Weft.
  const app = backend.spawn(process.execPath, [
    "-e",
    `require("http").createServer((q, r) => r.end("${MARKER} from backend " + q.url)).listen(8080, "0.0.0.0", () => console.log("app up"))`,
  ]);
  await app.waitFor(/app up/);

  const sidecar = (host: Host, cfg: string) => {
    const p = host.spawn(process.execPath, [weft, "proxy", "--config", cfg], { uid: 1337 });
    return p;
  };
  for (const host of [client, backend]) {
    await host.exec(process.execPath, [weft, "iptables", "install"]);
  }
  const backendSidecar = sidecar(backend, backendConfig);
  const clientSidecar = sidecar(client, clientConfig);
  for (const [host, proc] of [
    [backend, backendSidecar],
    [client, clientSidecar],
  ] as const) {
    await until(
      `${host.name} sidecar ready (output: ${proc.output().slice(-1500)})`,
      async () =>
        (await host.exec("curl", [
          "-s",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          "http://127.0.0.1:15000/ready",
        ])) === "200",
    );
  }

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
  assert.equal(answer, `${MARKER} from backend /hello-${MARKER}`);
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
  const metrics = await backend.exec("curl", ["-s", "http://127.0.0.1:15000/metrics"]);
  assert.match(metrics, /weft_tcp_connections_opened_total\{direction="inbound",service="backend"\} [1-9]/);
  assert.match(metrics, /peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend"/);

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
  await until("the refusal to be counted", async () =>
    /weft_inbound_plaintext_total\{mode="strict",decision="refused"\} 1/.test(
      await backend.exec("curl", ["-s", "http://127.0.0.1:15000/metrics"]),
    ),
  );
});
