import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, hashUntilEnd, readBytes, startApp } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { startSidecarPair, TRANSPORTS, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

function readAll(s: import("node:stream").Duplex): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => {
      text += d;
    });
    s.once("end", () => resolve(text));
    s.once("error", reject);
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: client half-closes first: the app sees the FIN and the client still gets the reply after it`, async (t) => {
    const app = await startApp((s) => {
      readAll(s).then((req) => {
        s.end(`reply to ${req.length} bytes: ${req}`);
      });
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    const reply = readAll(client);
    client.end("the whole request");
    assert.equal(await reply, "reply to 17 bytes: the whole request");
    const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
    assert.equal(line.reason, "closed");
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: server half-closes first: the client sees the FIN and can still send, the app gets it all`, async (t) => {
    let appGot: Promise<string> | undefined;
    const app = await startApp((s) => {
      s.end("bye\n"); // the app's write side is done at once; it keeps reading
      appGot = readAll(s);
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    const banner = await readBytes(client, 4);
    assert.equal(banner.toString(), "bye\n");
    const rest = hashUntilEnd(client);
    assert.equal((await rest).bytes, 0, "the client read the server's FIN");
    // After the FIN, the client's direction is still open through both sidecars.
    client.write("late ");
    client.end("data");
    await new Promise<void>((resolve) => client.once("close", () => resolve()));
    assert.equal(await appGot!, "late data");
    const server = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
    assert.equal(server.reason, "closed");
    assert.equal(server.bytes_received, 9);
    assert.equal(server.bytes_sent, 4);
  });
}
