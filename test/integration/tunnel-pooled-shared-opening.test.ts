/**
 * Pooled transport: many app connections that wait on one session opening (over real sockets and real
 * TLS, a relay holding the opening until every caller waits on it):
 *   - the opening fails: that is ONE failure of the endpoint for outlier detection and the failure
 *     metric, however many connections waited; the waiters retry on another endpoint and get through;
 *   - the opening succeeds: waiters beyond `maxStreamsPerSession` do not pile onto the new session, they
 *     share the next opening, so no session carries more than the limit.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { serviceSchema } from "../../src/config/services-schema.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { ServiceRegistry } from "../../src/discovery/registry.ts";
import { connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { type Relay, startRelay } from "../helpers/relay.ts";
import {
  accessLines,
  adminGet,
  identityDir,
  metricValue,
  startSidecar,
  startSidecarPair,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const CONNECTIONS = 20;

test("pooled: an opening that fails counts once against the endpoint, however many connections waited on it", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  // The server sidecar is the good endpoint; the pair's own client is not used.
  const pair = await startSidecarPair(t, { appPort: app.port });
  // The bad endpoint: a relay that accepts and holds, then drops the connection mid-handshake.
  const bad = await startRelay(pair.tunnelPort);
  t.after(() => bad.close());
  bad.hold();

  const metrics = new WeftMetrics();
  const log = new MemoryLogger();
  const routes = new ServiceRegistry({
    trustDomain: "weft.local",
    retries: { attempts: 3, deadline: 10_000 },
    outlierDetection: {
      enabled: true,
      consecutiveFailures: 5,
      baseEjectionTime: 30_000,
      maxEjectionTime: 300_000,
      maxEjectionPercent: 100,
    },
    metrics,
    logger: log,
    clock: pair.client.clock,
    random: Math.random,
  });
  t.after(() => routes.stop());
  routes.setDeclared("config", [
    serviceSchema.parse({
      name: "backend",
      identity: pair.serverIssued.id.toString(),
      ports: [{ port: 8080, targetPort: app.port }],
      endpoints: [
        { address: "127.0.0.1", port: 1, tunnelPort: bad.port },
        { address: "127.0.0.1", port: app.port, tunnelPort: pair.tunnelPort },
      ],
    }),
  ]);
  const files = await identityDir(t, "frontend");
  await writeIdentity(files, pair.clientIssued);
  const client = await startSidecar(
    t,
    testConfig("weft.local", files, {
      upstream: { transport: "pooled" },
      listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
    }),
    routes,
    log,
    { metrics },
  );
  const port = client.addresses.explicit[0]!.port;
  const badKey = "127.0.0.1:1";
  const badState = () => routes.describe()[0]!.endpoints.find((e) => e.key === badKey)!;

  const socks = await Promise.all(Array.from({ length: CONNECTIONS }, () => connect(port)));
  const msgs = socks.map((s, i) => {
    const msg = `conn-${i}`;
    s.write(msg);
    return msg;
  });
  // Every connection has picked an endpoint; those on the bad one all wait on its single opening.
  await eventually(
    "every connection leased an endpoint",
    () => routes.describe()[0]!.endpoints.reduce((n, e) => n + e.activeConnections, 0) === CONNECTIONS,
  );
  const waiting = badState().activeConnections;
  assert.ok(waiting >= 5, `at least consecutiveFailures connections wait on the bad opening (${waiting})`);
  assert.equal(bad.accepted, 1, "they share one opening");
  t.diagnostic(`${waiting} of ${CONNECTIONS} connections wait on the one opening that fails`);
  bad.destroyAll();

  const echoed = await Promise.all(
    socks.map(async (s, i) => (await readBytes(s, msgs[i]!.length)).toString()),
  );
  assert.deepEqual(echoed, msgs, "the waiters retried on the good endpoint and got through");
  for (const s of socks) s.end();

  const state = badState();
  assert.equal(state.state, "healthy", "one failed opening does not eject the endpoint");
  assert.equal(state.consecutiveFailures, 1, "it is one failure, not one per waiting connection");
  assert.equal(await metrics.value("weft_outlier_ejections_total"), undefined);
  assert.equal(
    await metrics.value("weft_upstream_connect_failures_total", { endpoint: badKey }),
    1,
    "counted once in the failure metric",
  );
  assert.equal(await metrics.value("weft_upstream_connect_retries_total"), waiting, "every waiter retried");
  const failed = log.records.filter((r) => r.msg === "upstream attempt failed");
  assert.equal(failed.length, waiting, "each waiter logs its failed attempt");
  assert.equal(failed.filter((r) => r.already_counted === true).length, waiting - 1);
  assert.ok(
    failed.every((r) => r.reason === "handshake_failed"),
    "with the opening's own reason",
  );
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === CONNECTIONS);
});

test("pooled: waiters of one opening beyond maxStreamsPerSession share the next opening instead of overfilling", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  let relay!: Relay;
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    clientConfig: { upstream: { transport: "pooled", maxStreamsPerSession: 3 } },
    clientTunnelPort: async (tunnelPort) => {
      relay = await startRelay(tunnelPort);
      t.after(() => relay.close());
      return relay.port;
    },
  });
  relay.hold();

  const n = 10;
  const socks = await Promise.all(Array.from({ length: n }, () => connect(pair.explicitPort)));
  const msgs = socks.map((s, i) => {
    const msg = `conn-${i}`;
    s.write(msg);
    return msg;
  });
  await eventually("every connection waits on the first opening", () => pair.client.tracker.size === n);
  assert.equal(relay.accepted, 1);
  relay.release();
  const echoed = await Promise.all(
    socks.map(async (s, i) => (await readBytes(s, msgs[i]!.length)).toString()),
  );
  assert.deepEqual(echoed, msgs);

  const opens = async (): Promise<number> =>
    metricValue((await adminGet(pair.client, "/metrics")).body, "weft_upstream_pooled_sessions_opened_total");
  assert.equal(await opens(), Math.ceil(n / 3), "10 connections at 3 streams per session: 4 sessions");
  assert.equal(relay.accepted, Math.ceil(n / 3), "4 TCP connections reached the peer");
  const server = (await adminGet(pair.server, "/metrics")).body;
  assert.match(server, /^weft_tunnel_pooled_sessions 4$/m);
  // Two more fit the fourth session's free slots; the 13th finds all four at 3 and opens a fifth: 12
  // streams over 4 sessions, each at exactly the limit.
  for (let i = 0; i < 3; i++) {
    const s = await connect(pair.explicitPort);
    s.write(`more-${i}`);
    assert.equal((await readBytes(s, 6)).toString(), `more-${i}`);
    socks.push(s);
    assert.equal(await opens(), i < 2 ? 4 : 5, `after connection ${n + i + 1}`);
  }
  for (const s of socks) s.end();
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === n + 3);
});
