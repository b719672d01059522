/**
 * Active health checks test the app through the endpoint's sidecar (proxy/outbound/health-probe.ts): with
 * the sidecar up and its app down the endpoint turns unhealthy, with no client traffic at all; when the
 * app listens again it passes. The server sidecar's access log shows the checks went through it. Both
 * transports.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { discoveryFor } from "../../src/cli/weft-proxy.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { freePort } from "../../src/core/ports.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  adminGet,
  identityDir,
  startSidecar,
  TRANSPORTS,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

async function stateOf(sidecar: Parameters<typeof adminGet>[0], key: string): Promise<string> {
  const body = JSON.parse((await adminGet(sidecar, "/endpoints")).body) as Array<{
    endpoints: Array<{ key: string; state: string }>;
  }>;
  return body.flatMap((s) => s.endpoints).find((e) => e.key === key)?.state ?? "missing";
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a live sidecar in front of a dead app fails its health checks; the app's return passes them`, async (t) => {
    const ca = await createTestCa();
    const serverFiles = await identityDir(t, "server");
    await writeIdentity(serverFiles, await ca.issue("default/backend"));
    const serverLog = new MemoryLogger();
    const server = await startSidecar(
      t,
      testConfig(ca.trustDomain, serverFiles),
      new StaticRouteTable([]),
      serverLog,
    );
    const appPort = await freePort();
    const clientFiles = await identityDir(t, "client");
    await writeIdentity(clientFiles, await ca.issue("default/frontend"));
    const config = testConfig(ca.trustDomain, clientFiles, {
      upstream: { transport },
      healthCheck: { interval: "200ms", timeout: "1s", unhealthyThreshold: 1, healthyThreshold: 1 },
      services: [
        {
          name: "backend",
          ports: [8080],
          endpoints: [{ address: "127.0.0.1", port: appPort, tunnelPort: server.addresses.tunnel!.port }],
        },
      ],
    });
    const client = await startSidecar(t, config, undefined, new MemoryLogger(), {
      createRoutes: (c, d) => discoveryFor(c, d),
    });
    const key = `127.0.0.1:${appPort}`;
    await eventually(
      "unhealthy while the app is down",
      async () => (await stateOf(client, key)) === "unhealthy",
    );
    const refused = await waitForLog(serverLog, (r) => r.msg === "connection closed");
    assert.equal(refused.reason, "app_connect_failed", "the check reached the app through the sidecar");

    const app = net.createServer((s) => s.end());
    await new Promise<void>((r) => app.listen(appPort, "127.0.0.1", r));
    t.after(() => new Promise<void>((r) => app.close(() => r())));
    await eventually("healthy once the app listens", async () => (await stateOf(client, key)) === "healthy");
    await waitForLog(serverLog, (r) => r.msg === "connection closed" && r.reason === "closed");
  });
}
