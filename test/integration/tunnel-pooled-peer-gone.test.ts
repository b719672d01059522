/**
 * A pooled session whose peer closes its end (its sidecar killed: the kernel sends FIN) is over at once
 * on both ends, so no new stream is put on it: the next connection gets a fresh session and succeeds.
 * The sockets under a session are half-open capable (they serve the per-connection transport too), so
 * HTTP/2 alone would not notice a FIN. Between the sidecars, a relay that drops its connections (FIN to
 * both sidecars).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { type Relay, startRelay } from "../helpers/relay.ts";
import { adminGet, metricValue, startSidecarPair, waitForMetric } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

test("pooled: a peer's FIN ends the session on both ends; the next connection gets a fresh one and succeeds", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  let relay!: Relay;
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    transport: "pooled",
    clientTunnelPort: async (tunnelPort) => {
      relay = await startRelay(tunnelPort);
      t.after(() => relay.close());
      return relay.port;
    },
  });
  const a = await connect(pair.explicitPort);
  a.on("error", () => {});
  a.write("one");
  assert.equal((await readBytes(a, 3)).toString(), "one");
  assert.equal(
    metricValue((await adminGet(pair.client, "/metrics")).body, "weft_upstream_pooled_sessions"),
    1,
  );

  relay.destroyAll(); // both sidecars read a FIN on the session's connection
  // The client sidecar closes the session whose peer sent FIN, and so does the server sidecar.
  await waitForMetric(pair.client, "weft_upstream_pooled_sessions", (v) => v === 0, { timeoutMs: 5000 });
  await waitForMetric(pair.server, "weft_tunnel_pooled_sessions", (v) => v === 0, { timeoutMs: 5000 });

  const b = await connect(pair.explicitPort);
  b.write("two");
  assert.equal((await readBytes(b, 3)).toString(), "two", "the next connection is carried");
  b.destroy();
  a.destroy();
  assert.equal(relay.accepted, 2, "over a fresh session");
});
