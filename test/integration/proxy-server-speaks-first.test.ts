import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, readBytes, startBannerServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { startSidecarPair, TRANSPORTS, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

for (const transport of TRANSPORTS) {
  test(`${transport}: server speaks first: the client reads the banner without sending a byte`, async (t) => {
    const banner = "220 weft-test ESMTP ready\r\n";
    const app = await startBannerServer(banner);
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    const got = await readBytes(client, banner.length);
    assert.equal(got.toString(), banner);
    // Then a normal exchange on the same connection.
    client.write("EHLO x\r\n");
    assert.equal((await readBytes(client, 8)).toString(), "EHLO x\r\n");
    client.end();
    const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
    assert.equal(line.reason, "closed");
    assert.equal(line.bytes_received, 8);
    assert.equal(line.bytes_sent, banner.length + 8);
  });
}
