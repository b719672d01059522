import assert from "node:assert/strict";
import { test } from "node:test";
import { closeKind, connect, readBytes, startApp } from "../helpers/apps.ts";
import { startSidecarPair, TRANSPORTS, waitForLog } from "../helpers/sidecar.ts";

for (const transport of TRANSPORTS) {
  test(`${transport}: the app resets: the client sees ECONNRESET, not a clean FIN`, async (t) => {
    const app = await startApp((s) => {
      s.once("data", () => s.resetAndDestroy());
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    const kind = closeKind(client);
    client.write("trigger");
    assert.equal(await kind, "reset");
    const server = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
    assert.equal(server.reason, "upstream_reset");
    const clientLine = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
    assert.equal(clientLine.reason, "upstream_reset");
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: the client resets: the app sees ECONNRESET, not a clean FIN`, async (t) => {
    const app = await startApp((s) => {
      s.pause();
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    client.write("hello");
    const appSide = await app.nextConnection();
    assert.equal((await readBytes(appSide, 5)).toString(), "hello");
    const kind = closeKind(appSide);
    client.resetAndDestroy();
    assert.equal(await kind, "reset");
    const clientLine = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
    assert.equal(clientLine.reason, "downstream_reset");
    const server = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
    assert.equal(server.reason, "downstream_reset");
  });
}
