/**
 * Crash storm on the client side (issue 13, case 2): an app connection that is reset before the sidecar
 * accepts it has no remote address any more. That used to throw in the PROXY v2 encoder inside an
 * un-awaited promise, and the unhandled rejection ended the sidecar. Here a `weft proxy` child process
 * gets 10,000 app connections that reset right after connecting, and in the middle it is stopped for
 * one second (SIGSTOP) while 500 more connect and reset, so they are accepted already reset. The
 * sidecar must be alive afterwards, have counted no `internal_error` (the cause is fixed, not just
 * caught), and serve a legitimate connection byte-exact. Run for both transports.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { MemoryLogger } from "../../src/core/log.ts";
import { assertServesByteExact, startClientProcess, storm } from "../helpers/adversarial.ts";
import { startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { identityDir, startSidecar, TRANSPORTS, testConfig, writeIdentity } from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

const RESET_AFTER_CONNECT = Number(process.env.WEFT_STORM_N ?? 4_750);
const RESET_WHILE_STOPPED = 500;

/** Connect and reset at once (SO_LINGER 0); resolves when the socket is gone. */
function connectAndReset(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    s.on("error", () => {});
    s.once("connect", () => s.resetAndDestroy());
    s.once("close", () => resolve());
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: 10,000 app connections reset before and right after accept (1 s SIGSTOP) do not end the client sidecar`, async (t) => {
    const app = await startEchoServer();
    t.after(() => app.close());
    const ca = await createTestCa({ trustDomain: "weft.local" });
    const serverFiles = await identityDir(t, "server");
    const serverIssued = await ca.issue("default/backend");
    await writeIdentity(serverFiles, serverIssued);
    const server = await startSidecar(
      t,
      testConfig(ca.trustDomain, serverFiles, { log: { accessLog: false } }),
      new StaticRouteTable([]),
      new MemoryLogger(),
    );
    const { weft, port } = await startClientProcess(
      t,
      ca,
      { issued: serverIssued, tunnelPort: server.addresses.tunnel!.port },
      app.port,
      transport,
    );

    await storm(RESET_AFTER_CONNECT, 100, () => connectAndReset(port));
    assert.ok(weft.alive(), `alive after the first ${RESET_AFTER_CONNECT}: ${weft.text.join("\n")}`);

    // Stopped, the sidecar accepts nothing: these connections complete in the kernel's accept queue and
    // are reset there, so the sidecar later accepts sockets that have no peer any more.
    weft.child.kill("SIGSTOP");
    const whileStopped = storm(RESET_WHILE_STOPPED, RESET_WHILE_STOPPED, () => connectAndReset(port));
    await new Promise((r) => setTimeout(r, 1_000));
    weft.child.kill("SIGCONT");
    await whileStopped;

    await storm(RESET_AFTER_CONNECT, 100, () => connectAndReset(port));
    await assertServesByteExact(port);
    assert.ok(weft.alive(), `the client sidecar is alive: ${weft.text.join("\n")}`);
    const metrics = (await weft.admin_get("/metrics")).body;
    assert.doesNotMatch(
      metrics,
      /reason="internal_error"/,
      "no connection needed the internal-error handler",
    );
    assert.match(metrics, /weft_tcp_connections_closed_total\{[^}]*reason="downstream_reset"\} \d+/);
  });
}
