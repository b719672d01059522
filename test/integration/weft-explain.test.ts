/**
 * `weft explain` against live sidecars (their admin ports), compared with golden outputs in
 * test/fixtures/explain/ after the run's random ports and times are replaced by names:
 *   allow    - a mesh service, both endpoints healthy, and the server side allowing this identity (rule named);
 *   deny     - after the server's policy was reloaded to refuse us: the client's recent failed connection and
 *              the server's own refusal (policy_denied, the rule), i.e. the reason from both sides;
 *   ejected  - one endpoint ejected by outlier detection after a refused connect;
 *   no-route - registry-only and a destination no service owns;
 *   inbound-deny - the server side alone, for an identity no rule allows.
 * `--json` carries the same facts. WEFT_UPDATE_GOLDEN=1 rewrites the golden files.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { discoveryFor } from "../../src/cli/weft-proxy.ts";
import { parseConfig } from "../../src/config/load.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { freePort } from "../../src/core/ports.ts";
import { Sidecar } from "../../src/proxy/sidecar.ts";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { weftCli } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  accessLines,
  adminGet,
  identityDir,
  startSidecar,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

const GOLDEN = fileURLToPath(new URL("../fixtures/explain/", import.meta.url));
const TD = "weft.local";
const FRONTEND = `spiffe://${TD}/ns/default/sa/frontend`;

const weft = (args: string[]) => weftCli(...args);

test("weft explain: golden outputs for allow, deny (both sides), ejected and no-route; --json", async (t) => {
  const ca = await createTestCa({ trustDomain: TD });
  const app = await startEchoServer();
  t.after(() => app.close());
  const deadTunnel = await freePort();

  // The server sidecar: only frontend may reach the app port (rule "web-clients").
  const serverFiles = await identityDir(t, "explain-server");
  await writeIdentity(serverFiles, await ca.issue("default/backend"));
  const serverConfig = testConfig(TD, serverFiles, {
    policy: { default: "deny", rules: [{ name: "web-clients", ports: [app.port], allow: [FRONTEND] }] },
  });
  // It serves backend (discovery lists backend with its identity), so peers' connections are labelled so.
  const served = new StaticRouteTable([
    { name: "backend", identity: `spiffe://${TD}/ns/default/sa/backend`, ports: [80], endpoints: [] },
  ]);
  const server = await startSidecar(t, serverConfig, served, new MemoryLogger());
  const tunnel = server.addresses.tunnel!.port;

  // The client sidecar, with discovery (endpoint state), one good endpoint and one whose sidecar is gone.
  const clientFiles = await identityDir(t, "explain-client");
  await writeIdentity(clientFiles, await ca.issue("default/frontend"));
  const clientLog = new MemoryLogger();
  const clientConfig = testConfig(TD, clientFiles, {
    outboundPolicy: "registry-only",
    outlierDetection: { consecutiveFailures: 1, baseEjectionTime: "10m", maxEjectionPercent: 50 },
    services: [
      {
        name: "backend",
        ports: [{ port: 80, targetPort: app.port }],
        vips: ["198.18.100.1"],
        endpoints: [
          { address: "127.0.0.1", tunnelPort: tunnel },
          { address: "127.0.0.2", tunnelPort: deadTunnel },
        ],
        retries: { attempts: 1, deadline: "5s" },
      },
    ],
    listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
  });
  const client = new Sidecar(clientConfig, { logger: clientLog, createRoutes: discoveryFor });
  t.after(() => client.stop());
  await client.start();
  const explicitPort = client.addresses.explicit[0]!.port;
  const cAdmin = `127.0.0.1:${client.addresses.admin.port}`;
  const sAdmin = `127.0.0.1:${server.addresses.admin.port}`;

  const names: Array<[string, string]> = [
    [String(app.port), "<app>"],
    [String(tunnel), "<tunnel>"],
    [String(deadTunnel), "<dead-tunnel>"],
  ];
  const normalize = (text: string): string => {
    let out = text
      .replaceAll(cAdmin, "<client-admin>")
      .replaceAll(sAdmin, "<server-admin>")
      .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g, "<time>");
    for (const [value, name] of names) out = out.replace(new RegExp(`(?<=[: ])${value}\\b`, "g"), name);
    return out.replace(/(from 127\.0\.0\.1:)\d+/g, "$1<ephemeral>");
  };
  const golden = async (name: string, args: string[]): Promise<void> => {
    const r = await weft(["explain", ...args]);
    assert.equal(r.code, 0, r.stderr);
    const got = normalize(r.stdout);
    const file = join(GOLDEN, `${name}.txt`);
    if (process.env.WEFT_UPDATE_GOLDEN === "1") {
      await mkdir(GOLDEN, { recursive: true });
      await writeFile(file, got);
    }
    assert.equal(got, await readFile(file, "utf8"), `weft explain ${args.join(" ")} (golden ${name}.txt)`);
  };

  // allow: both endpoints healthy, the server allows frontend by rule web-clients.
  await golden("allow", ["--service", "backend", "--admin", cAdmin, "--peer-admin", sAdmin]);
  // inbound-deny: the server's view of an identity no rule allows.
  await golden("inbound-deny", [
    "--from",
    `spiffe://${TD}/ns/default/sa/intruder`,
    "--port",
    String(app.port),
    "--admin",
    sAdmin,
  ]);
  // no-route: registry-only, nobody owns the destination.
  await golden("no-route", ["198.18.9.9:443", "--admin", cAdmin]);

  // ejected: round-robin sends the second connection to 127.0.0.2, whose refused connect ejects it at the
  // first failure (one attempt per connection here, so the failure is the connection's own ending).
  const first = await connect(explicitPort);
  first.write("x");
  assert.equal((await readBytes(first, 1)).toString(), "x");
  first.end();
  await closeKind(first);
  assert.equal(await closeKind(await connect(explicitPort)), "reset");
  await waitForLog(clientLog, (r) => r.msg === "endpoint ejected");
  await waitForLog(clientLog, () => accessLines(clientLog).length === 2);
  await golden("ejected", ["198.18.100.1:80", "--admin", cAdmin]);

  // deny: the server's policy is reloaded to another identity; the next connection is refused, and both
  // sides remember why.
  server.reload(
    parseConfig(
      JSON.stringify({
        ...JSON.parse(JSON.stringify(server.config)),
        policy: {
          default: "deny",
          rules: [{ name: "ops-only", ports: [app.port], allow: [`spiffe://${TD}/ns/ops/sa/*`] }],
        },
      }),
    ),
  );
  const refused = await connect(explicitPort);
  assert.equal(await closeKind(refused), "reset");
  await waitForLog(clientLog, () => accessLines(clientLog).length === 3);
  await golden("deny", ["--service", "backend", "--admin", cAdmin, "--peer-admin", sAdmin]);

  // --json: the same facts, as data.
  const j = await weft(["explain", "198.18.100.1:80", "--admin", cAdmin, "--peer-admin", sAdmin, "--json"]);
  assert.equal(j.code, 0, j.stderr);
  const doc = JSON.parse(j.stdout);
  assert.equal(doc.kind, "outbound");
  assert.equal(doc.decision, "mesh");
  assert.equal(doc.localIdentity, FRONTEND);
  assert.equal(doc.service.identity, `spiffe://${TD}/ns/default/sa/backend`);
  assert.deepEqual(
    doc.endpoints.map((e: { key: string; state: string }) => `${e.key} ${e.state}`),
    [`127.0.0.1:${app.port} healthy`, `127.0.0.2:${app.port} ejected`],
  );
  assert.equal(doc.peerSide.decision, "deny");
  assert.equal(doc.peerSide.rule, "ops-only");
  assert.equal(doc.peerSide.recent[0].reason, "policy_denied");
  assert.ok(doc.recent.length >= 1, "the client remembers the refused connection");

  // Usage errors and an unreachable admin port are clear.
  assert.equal((await weft(["explain", "--admin", cAdmin])).code, 2);
  const bad = await weft(["explain", "not-an-address", "--admin", cAdmin]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /dst "not-an-address" is not address:port/);
  const down = await weft(["explain", "198.18.100.1:80", "--admin", `127.0.0.1:${deadTunnel}`]);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /cannot reach the sidecar's admin port at 127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
});

test("/explain: malformed queries get 400 with what to ask instead; the sidecar carries on", async (t) => {
  const ca = await createTestCa({ trustDomain: TD });
  const files = await identityDir(t, "explain-garbage");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const routes = new StaticRouteTable([
    { name: "backend", identity: `spiffe://${TD}/ns/default/sa/backend`, ports: [80], endpoints: [] },
  ]);
  const log = new MemoryLogger();
  const sidecar = await startSidecar(t, testConfig(TD, files), routes, log);
  const bad = [
    "",
    "?dst=",
    "?dst=backend",
    "?dst=198.18.0.1",
    "?dst=198.18.0.1:0",
    "?dst=198.18.0.1:65536",
    "?dst=198.18.0.1:99999999999",
    "?dst=[fd00::1:80",
    "?dst=999.1.1.1:80",
    "?dst=%zz",
    "?port=80",
    "?peer=spiffe://weft.local/ns/default/sa/x",
    "?peer=http://x&port=80",
    "?peer=spiffe://weft.local/ns/default/sa/x&port=-1",
    "?peer=spiffe://weft.local/ns/default/sa/x&port=1e3",
    "?service=backend&port=0x50",
    `?dst=${"9".repeat(4000)}`,
  ];
  for (const q of bad) {
    const r = await adminGet(sidecar, `/explain${q}`);
    assert.equal(r.status, 400, `${q.slice(0, 60)}: 400, got ${r.status} ${r.body.slice(0, 200)}`);
    const body = JSON.parse(r.body) as { error?: string };
    assert.match(body.error ?? "", /\S/, `${q.slice(0, 60)}: says what is wrong`);
  }
  // A service nobody knows is an answer, not an error; and the sidecar still serves.
  const unknown = await adminGet(sidecar, "/explain?service=nope");
  assert.equal(unknown.status, 200);
  assert.equal((await adminGet(sidecar, "/ready")).status, 200);
  assert.deepEqual(
    log.records.filter((r) => r.msg === "admin request failed"),
    [],
    "no query reached the internal-error path",
  );
});
