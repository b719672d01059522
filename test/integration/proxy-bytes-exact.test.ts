import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { connect, hashUntilEnd, startApp, writePattern } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { accessLines, adminGet, startSidecarPair, TRANSPORTS, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const TOTAL = 256 * 1024 * 1024;

for (const transport of TRANSPORTS) {
  test(`${transport}: 256 MiB cross explicit listener -> tunnel -> echo app byte-exact both ways, and metrics show it`, async (t) => {
    // The app hashes what it receives and echoes it back; the client hashes what it sent and got back.
    let appReceived: Promise<{ sha256: string; bytes: number }> | undefined;
    const app = await startApp((s) => {
      const hash = createHash("sha256");
      let bytes = 0;
      appReceived = new Promise((resolve) => {
        s.on("data", (d: Buffer) => {
          hash.update(d);
          bytes += d.length;
        });
        s.on("end", () => resolve({ sha256: hash.digest("hex"), bytes }));
      });
      s.pipe(s);
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });

    const client = await connect(pair.explicitPort);
    const back = hashUntilEnd(client);
    const sent = await writePattern(client, TOTAL);
    const got = await back;
    const atApp = await appReceived!;

    assert.equal(atApp.bytes, TOTAL, "the app received every byte");
    assert.equal(atApp.sha256, sent, "the app received exactly what the client sent");
    assert.equal(got.bytes, TOTAL, "the client received every echoed byte");
    assert.equal(got.sha256, sent, "the echo came back byte-exact");

    // One access-log line per side, with bytes each way, the peer identity and the normal reason.
    const clientLine = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
    const serverLine = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
    assert.equal(clientLine.reason, "closed");
    assert.equal(clientLine.direction, "explicit");
    assert.equal(clientLine.service, "backend");
    assert.equal(clientLine.peer_identity, pair.serverIssued.id.toString());
    assert.equal(clientLine.bytes_received, TOTAL);
    assert.equal(clientLine.bytes_sent, TOTAL);
    assert.equal(serverLine.reason, "closed");
    assert.equal(serverLine.direction, "inbound");
    assert.equal(serverLine.peer_identity, pair.clientIssued.id.toString());
    assert.equal(serverLine.service, "backend");
    assert.equal(accessLines(pair.clientLog).length, 1);
    assert.equal(accessLines(pair.serverLog).length, 1);

    // /metrics over HTTP from each admin server.
    const cm = (await adminGet(pair.client, "/metrics")).body;
    const peer = pair.serverIssued.id.toString();
    assert.match(
      cm,
      new RegExp(
        `weft_tcp_connections_closed_total\\{direction="explicit",service="backend",peer_identity="${peer}",reason="closed"\\} 1`,
      ),
    );
    assert.match(
      cm,
      new RegExp(
        `weft_tcp_received_bytes_total\\{direction="explicit",service="backend",peer_identity="${peer}"\\} ${TOTAL}`,
      ),
    );
    assert.match(
      cm,
      new RegExp(
        `weft_tcp_sent_bytes_total\\{direction="explicit",service="backend",peer_identity="${peer}"\\} ${TOTAL}`,
      ),
    );
    // Opened and closed carry the same peer_identity, so they join per peer.
    assert.match(
      cm,
      new RegExp(
        `weft_tcp_connections_opened_total\\{direction="explicit",service="backend",peer_identity="${peer}"\\} 1`,
      ),
    );
    const sm = (await adminGet(pair.server, "/metrics")).body;
    assert.match(
      sm,
      new RegExp(
        `weft_tcp_connections_closed_total\\{direction="inbound",service="backend",peer_identity="${pair.clientIssued.id.toString()}",reason="closed"\\} 1`,
      ),
    );
    assert.match(
      sm,
      new RegExp(
        `weft_tcp_received_bytes_total\\{direction="inbound",service="backend",peer_identity="${pair.clientIssued.id.toString()}"\\} ${TOTAL}`,
      ),
    );
    assert.equal(pair.client.tracker.size, 0, "no connection left open on the client sidecar");
    assert.equal(pair.server.tracker.size, 0, "no connection left open on the server sidecar");
  });
}
