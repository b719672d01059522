/**
 * Revocation reaches the data path. The server sidecar gets its identity from a real CA server and
 * fetches the revoked serials with the bundle every `identity.ca.revocationRefresh` (200 ms here). Once
 * the client sidecar's certificate is revoked at the CA (`meshca revoke` writes the same serials.json),
 * the server refuses it on new handshakes (svid_revoked) and, for the pooled transport, ends the pooled
 * session it had accepted from it (issue 13's session watch, run by the trust-change hook).
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { SerialStore } from "../../src/ca/serials.ts";
import { systemClock } from "../../src/core/clock.ts";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { adminGet, identityDir, startSidecarPair, waitForLog, waitForMetric } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const BACKEND = "spiffe://weft.local/ns/default/sa/backend";

for (const transport of ["per-connection", "pooled"] as const) {
  test(`${transport}: a revoked client certificate is refused by a server sidecar that fetched the list`, async (t) => {
    const files = await identityDir(t, "ca-run");
    const serials = new SerialStore(join(files.dir, "serials.json"), systemClock);
    const s = await startTestCaServer(t, { server: { serials } });
    await writeFile(join(files.dir, "ca-bundle.pem"), s.testCa.ca.bundlePem());
    const { token } = await s.tokens.create({ idPattern: BACKEND });
    const app = await startEchoServer();
    t.after(() => app.close());
    const pair = await startSidecarPair(t, {
      ca: s.testCa,
      appPort: app.port,
      transport,
      serverConfig: {
        identity: {
          ca: {
            url: s.server.url,
            bundle: join(files.dir, "ca-bundle.pem"),
            id: BACKEND,
            token,
            revocationRefresh: "200ms",
          },
        },
      },
    });
    await eventually(
      "the server sidecar's certificate",
      async () => (await adminGet(pair.server, "/ready")).status === 200,
    );
    // The client's certificate is one the CA recorded (as `meshca issue` does).
    await serials.record({
      serial: pair.clientIssued.serial,
      id: pair.clientIssued.id.toString(),
      notAfter: pair.clientIssued.notAfter,
      root: s.testCa.ca.rootFingerprint(),
    });

    const running = await connect(pair.explicitPort);
    running.write("before");
    assert.equal((await readBytes(running, 6)).toString(), "before");

    await serials.revoke({ serial: pair.clientIssued.serial }, "key_compromise");
    await waitForLog(pair.serverLog, (r) => r.msg === "revocation list applied" && r.revoked === 1, 5_000);

    if (transport === "pooled") {
      await waitForMetric(
        pair.server,
        'weft_pooled_sessions_ended_total\\{direction="inbound",reason="peer_revoked"\\}',
        (v) => v === 1,
      );
    }
    // A new connection needs a new handshake, which the server refuses.
    const refused = await connect(pair.explicitPort);
    let echoed = 0;
    refused.on("data", (d: Buffer) => {
      echoed += d.length;
    });
    refused.write("after");
    const how = await closeKind(refused);
    assert.equal(echoed, 0, `nothing reaches the app (closed: ${how})`);
    await waitForMetric(
      pair.server,
      'weft_tls_handshake_failures_total\\{direction="inbound",reason="svid_revoked"\\}',
      (v) => v >= 1,
    );
    running.destroy();
    const certs = JSON.parse((await adminGet(pair.server, "/certs")).body) as {
      source?: { revokedSerials?: number };
    };
    assert.equal(JSON.stringify(certs).includes('"revokedSerials":1'), true, JSON.stringify(certs));
  });
}
