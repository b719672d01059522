/**
 * Drain (what SIGTERM does): the sidecar reports not-ready at once, refuses new connections, lets live
 * ones finish, and closes whatever is still open when the drain deadline passes (reason `drained`).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { accessLines, adminGet, startSidecarPair, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve("connected");
    });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
  });
}

test("drain: not ready, new connections refused, a live connection finishes, nothing forced", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { appPort: app.port });
  assert.equal((await adminGet(pair.client, "/ready")).status, 200);

  const live = await connect(pair.explicitPort);
  live.write("before");
  assert.equal((await readBytes(live, 6)).toString(), "before");

  const drained = pair.client.drain(30_000);
  const ready = await adminGet(pair.client, "/ready");
  assert.equal(ready.status, 503);
  assert.match(ready.body, /draining/);
  assert.equal(await refused(pair.explicitPort), "ECONNREFUSED", "the explicit listener no longer accepts");

  // The live connection still carries bytes both ways during the drain.
  live.write("during");
  assert.equal((await readBytes(live, 6)).toString(), "during");
  const kind = closeKind(live);
  live.end();
  assert.equal(await kind, "end");
  assert.deepEqual(await drained, { forced: 0 });
  const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "closed");
  assert.equal(pair.client.tracker.size, 0);
});

test("drain: connections still open at the deadline are closed with reason drained", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { appPort: app.port });

  const idle = await connect(pair.explicitPort);
  idle.write("ping");
  assert.equal((await readBytes(idle, 4)).toString(), "ping");
  const kind = closeKind(idle);

  // The deadline is the drain argument (timeouts.drain in config), not a sleep in the test.
  assert.deepEqual(await pair.client.drain(300), { forced: 1 });
  assert.equal(await kind, "reset", "the client sees its connection reset at the deadline");
  const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "drained");
  assert.equal(accessLines(pair.clientLog).length, 1, "one access-log line for the one connection");
  assert.equal(pair.client.tracker.size, 0);
  assert.match(
    (await adminGet(pair.client, "/metrics")).body,
    /weft_tcp_connections_closed_total\{direction="explicit",service="backend",peer_identity="[^"]+",reason="drained"\} 1/,
  );
});
