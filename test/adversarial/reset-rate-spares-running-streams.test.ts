/**
 * The per-peer reset rate (limits.perPeer.resetsPerSecond) closes a peer's pooled sessions. The streams
 * already running on them are other connections of that pod, not the resets: they must finish. A pooled
 * client sidecar carries an app connection that is half done; a raw session with the same identity then
 * writes HEADERS + RST_STREAM bursts past the rate. The app connection must still finish byte-exact with
 * a FIN, and a new connection must work (on a new session). Before, every session of the peer was
 * destroyed at once (GOAWAY ENHANCE_YOUR_CALM), and the half-done connection was reset; a peer that trips
 * the limit again while its sessions are closing is still hung up at once.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { assertServesByteExact } from "../helpers/adversarial.ts";
import { connect, startEchoServer } from "../helpers/apps.ts";
import { eventually } from "../helpers/eventually.ts";
import { dialTunnel, resetBurst } from "../helpers/h2-raw.ts";
import { startSidecarPair, waitForLog, waitForMetric } from "../helpers/sidecar.ts";

const HALF = 256 * 1024;

test("pooled: a peer over its reset rate loses its sessions, not the streams already running on them", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    transport: "pooled",
    appPort: app.port,
    serverConfig: { limits: { perPeer: { resetsPerSecond: 50 } } },
  });

  const client = await connect(pair.explicitPort);
  const hash = createHash("sha256");
  let got = 0;
  let ended = false;
  let failed: string | undefined;
  client.on("data", (d: Buffer) => {
    hash.update(d);
    got += d.length;
  });
  client.on("end", () => (ended = true));
  client.on("error", (err: NodeJS.ErrnoException) => (failed = err.code ?? err.message));
  const first = randomBytes(HALF);
  const second = randomBytes(HALF);
  client.write(first);
  await eventually("the first half echoed", () => got === HALF || failed !== undefined);

  // The same identity, another session: resets past the rate.
  const raw = await dialTunnel(pair.tunnelPort, pair.clientIssued);
  t.after(() => raw.destroy());
  raw.write(resetBurst(200, app.port));
  await waitForMetric(pair.server, 'weft_peer_limit_hits_total\\{limit="reset_rate"\\}', (v) => v >= 1);

  client.end(second);
  await eventually("the connection ends", () => ended || failed !== undefined);
  assert.equal(failed, undefined, "the running connection was not reset");
  assert.equal(got, 2 * HALF, "every byte came back");
  assert.equal(
    hash.digest("hex"),
    createHash("sha256").update(first).update(second).digest("hex"),
    "byte-exact",
  );
  const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "closed");
  // New connections go to a new session.
  await assertServesByteExact(pair.explicitPort);
});
