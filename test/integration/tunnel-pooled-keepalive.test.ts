/**
 * Pooled transport liveness: a peer that vanishes without a FIN is found by HTTP/2 PING on both ends.
 * Real sockets and TLS; between the sidecars a relay that can stop forwarding without closing anything
 * (what a host that vanished looks like); both sidecars on one manual clock, so the keepalive runs
 * with its defaults (10 s interval, 5 s timeout) without the test sleeping:
 *   - a healthy idle session is PINGed, answers, and stays;
 *   - a silent one is PINGed; while the PING is outstanding a new connection gets a fresh session;
 *     without an ACK both ends destroy it, its stream ends as a reset on both sides, and the client
 *     counts one failure of the endpoint.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { type Relay, startRelay } from "../helpers/relay.ts";
import { accessLines, adminGet, metricValue, startSidecarPair, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

/** Sessions closed for an unanswered PING, by the side that closed them. */
function keepaliveTimeouts(text: string, direction: "outbound" | "inbound"): number {
  return metricValue(text, `weft_pooled_session_keepalive_timeouts_total\\{direction="${direction}"\\}`);
}

test("pooled: a peer that stops answering is found by PING on both ends; new connections get a fresh session", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const clock = new ManualClock(Date.now());
  let relay!: Relay;
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    clock,
    clientConfig: { upstream: { transport: "pooled" } },
    clientTunnelPort: async (tunnelPort) => {
      relay = await startRelay(tunnelPort);
      t.after(() => relay.close());
      return relay.port;
    },
  });
  const echo = async (s: import("node:net").Socket, msg: string): Promise<void> => {
    s.write(msg);
    // Bounded in real time: a stream put on a dead session would wait forever.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no echo of "${msg}" within 5 s`)), 5_000);
    });
    try {
      assert.equal((await Promise.race([readBytes(s, msg.length), late])).toString(), msg);
    } finally {
      clearTimeout(timer);
    }
  };
  const metrics = async () => ({
    client: (await adminGet(pair.client, "/metrics")).body,
    server: (await adminGet(pair.server, "/metrics")).body,
  });

  // t=0: session 1 opens on both ends (keepalive checks at t=10, 20, ...).
  const a = await connect(pair.explicitPort);
  const aEnd = closeKind(a);
  await echo(a, "hello");
  // t=10: bytes arrived since the session opened, no PING. t=20: silent for 10 s: both ends PING.
  clock.advance(10_000);
  clock.advance(10_000);
  // The peer is alive: the echo comes back after the PING's ACK (same TCP stream, answered first).
  await echo(a, "still here");
  clock.advance(5_000);
  let m = await metrics();
  assert.equal(keepaliveTimeouts(m.client, "outbound"), 0, "a live peer stays");
  assert.equal(keepaliveTimeouts(m.server, "inbound"), 0);
  assert.equal(metricValue(m.client, "weft_upstream_pooled_sessions_opened_total"), 1);

  // The peer's host vanishes: nothing is forwarded any more, nothing is closed.
  relay.blackhole();
  // t=30: bytes (the echo) since the ACK, no PING. t=40: silent: PING, deadline t=45.
  clock.advance(5_000);
  clock.advance(10_000);
  // Session 1 is suspect: a new connection does not go to it, it gets a fresh session at once.
  const b = await connect(pair.explicitPort);
  b.on("error", () => {});
  await echo(b, "fresh");
  m = await metrics();
  assert.equal(metricValue(m.client, "weft_upstream_pooled_sessions_opened_total"), 2);
  assert.equal(relay.accepted, 2);
  assert.equal(keepaliveTimeouts(m.client, "outbound"), 0, "not yet dead");

  // t=45: no ACK: both ends destroy session 1.
  clock.advance(5_000);
  assert.equal(await aEnd, "reset", "the connection on the dead session ends as a reset");
  await waitForLog(pair.serverLog, (r) => r.msg === "connection closed" && r.reason === "downstream_reset");
  m = await metrics();
  assert.equal(keepaliveTimeouts(m.client, "outbound"), 1);
  assert.equal(keepaliveTimeouts(m.server, "inbound"), 1);
  assert.match(
    m.client,
    /^weft_upstream_connect_failures_total\{service="backend",endpoint="[^"]+",reason="keepalive_timeout"\} 1$/m,
  );
  assert.deepEqual(
    pair.routes.reports.filter((r) => r.outcome === "failure").map((r) => r.detail),
    ["keepalive_timeout"],
    "one failure of the endpoint for outlier detection",
  );
  const clientLine = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(clientLine.reason, "upstream_reset");
  assert.equal(metricValue(m.client, "weft_upstream_pooled_sessions"), 1, "only the fresh session is left");
  assert.equal(metricValue(m.server, "weft_tunnel_pooled_sessions"), 1);

  // The fresh session carries on, and takes the next connection too.
  await echo(b, "after");
  const c = await connect(pair.explicitPort);
  c.on("error", () => {});
  await echo(c, "third");
  assert.equal(metricValue((await metrics()).client, "weft_upstream_pooled_sessions_opened_total"), 2);
  b.end();
  c.end();
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === 3);
});
