/**
 * The pooled tunnel transport (`upstream.transport: pooled`): app connections become CONNECT streams of
 * one mutual-TLS HTTP/2 session per peer sidecar. Shown over real sockets and real TLS:
 *   - twenty concurrent connections share one session (one handshake), each is its own connection
 *     record on the server with the client's identity, and each carries its own bytes;
 *   - policy is decided per stream: a denied stream is reset and counted, the session stays up;
 *   - the server must still prove the service's identity when the session is opened;
 *   - after a certificate rotation new connections get a new session (the peer sees the new serial)
 *     while a stream on the old session keeps flowing;
 *   - a session idle for `sessionIdleTimeout` is closed on both sides, and the next connection opens a
 *     new one;
 *   - a verified peer that sends HTTP/2 garbage, or a garbage PROXY header on a stream, is dropped (the
 *     stream reset and counted) and the sidecar keeps serving.
 * TCP semantics (half-close, resets, server-first, byte-exact) are asserted for this transport in
 * peer-tcp-semantics.test.ts.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import http2 from "node:http2";
import { test } from "node:test";
import tls from "node:tls";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  accessLines,
  adminGet,
  metricValue,
  reloadIdentity,
  startSidecarPair,
  waitForLog,
  waitForMetric,
  writeIdentity,
} from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const POOLED = { upstream: { transport: "pooled" } };

test("pooled: twenty concurrent connections share one mTLS session and stay separate connections", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { appPort: app.port, clientConfig: POOLED });

  const socks = await Promise.all(Array.from({ length: 20 }, () => connect(pair.explicitPort)));
  const echoed = await Promise.all(
    socks.map(async (s, i) => {
      const msg = `stream-${i}-${"x".repeat(i * 100)}`;
      s.write(msg);
      return (await readBytes(s, msg.length)).toString() === msg;
    }),
  );
  assert.deepEqual(echoed, Array(20).fill(true), "every connection got exactly its own bytes back");
  const server = (await adminGet(pair.server, "/metrics")).body;
  assert.equal(metricValue(server, "weft_tunnel_pooled_sessions"), 1, "one session on the server");
  for (const s of socks) s.end();
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === 20);

  const client = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(metricValue(client, "weft_upstream_pooled_sessions_opened_total"), 1, "one handshake for 20");
  assert.match(
    client,
    /weft_tls_handshake_duration_seconds_count\{direction="outbound",resumed="false"\} 1\n/,
  );
  const lines = accessLines(pair.serverLog);
  assert.equal(new Set(lines.map((l) => l.conn_id)).size, 20, "one record per stream");
  for (const l of lines) {
    assert.equal(l.peer_identity, "spiffe://weft.local/ns/default/sa/frontend");
    assert.equal(l.reason, "closed");
  }
});

test("pooled: policy per stream — a denied stream is reset and counted, the session stays up", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    clientConfig: POOLED,
    serverConfig: {
      policy: {
        default: "deny",
        rules: [{ ports: [app.port], allow: ["spiffe://weft.local/ns/default/sa/someone-else"] }],
      },
    },
  });
  for (let i = 0; i < 3; i++) {
    const s = await connect(pair.explicitPort);
    const kind = closeKind(s);
    s.write("let me in");
    assert.equal(await kind, "reset", "a denied connection looks like a closed port");
  }
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === 3);
  assert.deepEqual(
    accessLines(pair.serverLog).map((l) => l.reason),
    ["policy_denied", "policy_denied", "policy_denied"],
  );
  const server = (await adminGet(pair.server, "/metrics")).body;
  assert.match(
    server,
    new RegExp(
      `weft_policy_denied_total\\{peer_identity="spiffe://weft.local/ns/default/sa/frontend",port="${app.port}",rule="rules\\[0\\]"\\} 3`,
    ),
  );
  assert.equal(metricValue(server, "weft_tunnel_pooled_sessions"), 1, "the session survived three refusals");
  const client = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(metricValue(client, "weft_upstream_pooled_sessions_opened_total"), 1);
});

test("pooled: the session's server must prove the service's identity", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    clientConfig: POOLED,
    expectIdentity: "spiffe://weft.local/ns/default/sa/payments",
  });
  const s = await connect(pair.explicitPort);
  const kind = closeKind(s);
  s.write("hello");
  assert.equal(await kind, "reset");
  const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "upstream_identity_mismatch");
  assert.equal(accessLines(pair.serverLog).length, 0, "nothing reached the app side");
});

test("pooled: after a rotation new connections use a new session; a stream on the old one keeps flowing", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { appPort: app.port, clientConfig: POOLED });
  const live = await connect(pair.explicitPort);
  live.write("before");
  assert.equal((await readBytes(live, 6)).toString(), "before");

  const next = await pair.ca.issue("default/frontend");
  await writeIdentity(pair.clientFiles, next);
  await reloadIdentity(pair.client);

  const fresh = await connect(pair.explicitPort);
  fresh.write("fresh");
  assert.equal((await readBytes(fresh, 5)).toString(), "fresh");
  live.write("after");
  assert.equal((await readBytes(live, 5)).toString(), "after", "the old session's stream still flows");
  fresh.end();
  live.end();
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === 2);

  const client = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(metricValue(client, "weft_upstream_pooled_sessions_opened_total"), 2);
  const serials = accessLines(pair.serverLog).map((l) => String(l.peer_serial).toUpperCase());
  const newSerial = new X509Certificate(next.certPem).serialNumber.toUpperCase();
  const oldSerial = new X509Certificate(pair.clientIssued.certPem).serialNumber.toUpperCase();
  assert.deepEqual(
    serials.sort(),
    [newSerial, oldSerial].sort(),
    "each stream carries its session's certificate",
  );
});

test("pooled: a session idle for sessionIdleTimeout is closed; the next connection opens a new one", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    clientConfig: { upstream: { transport: "pooled", sessionIdleTimeout: "200ms" } },
  });
  const roundTrip = async (msg: string): Promise<void> => {
    const s = await connect(pair.explicitPort);
    s.write(msg);
    assert.equal((await readBytes(s, msg.length)).toString(), msg);
    s.end();
  };
  await roundTrip("one");
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length === 1);
  // Bounded wait for the idle close (the gauge drops to 0 on both sides).
  await waitForMetric(pair.server, "weft_tunnel_pooled_sessions", (v) => v === 0, { timeoutMs: 5000 });
  assert.equal(
    metricValue((await adminGet(pair.client, "/metrics")).body, "weft_upstream_pooled_sessions"),
    0,
  );
  await roundTrip("two");
  const client = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(metricValue(client, "weft_upstream_pooled_sessions_opened_total"), 2);
});

test("pooled: a verified peer that sends HTTP/2 garbage, or a garbage PROXY header on a stream, is dropped; the tunnel keeps serving", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { appPort: app.port, clientConfig: POOLED });
  const creds = { key: pair.clientIssued.keyPem, cert: pair.clientIssued.chainPem };
  const dial = (): Promise<tls.TLSSocket> =>
    new Promise((resolve, reject) => {
      const s = tls.connect({
        host: "127.0.0.1",
        port: pair.tunnelPort,
        ALPNProtocols: ["h2"],
        rejectUnauthorized: false,
        ...creds,
      });
      s.once("secureConnect", () => resolve(s));
      s.once("error", reject);
    });

  // 1. Not HTTP/2 at all after ALPN h2: the session fails and the connection is closed.
  const raw = await dial();
  raw.on("error", () => {});
  const gone = new Promise<void>((r) => raw.once("close", () => r()));
  raw.resume(); // read what the server answers (SETTINGS, GOAWAY) and its FIN
  raw.write(Buffer.alloc(4096, 0xab));
  await gone;

  // 2. A real session whose stream carries a garbage PROXY header: that stream is reset and counted.
  const sock = await dial();
  const session = http2.connect(`https://127.0.0.1:${pair.tunnelPort}`, { createConnection: () => sock });
  session.on("error", () => {});
  t.after(() => session.destroy());
  const stream = session.request({ ":method": "CONNECT", ":authority": "127.0.0.1:1" }, { endStream: false });
  const ended = new Promise<string>((resolve) => {
    stream.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
    stream.on("close", () => resolve(`close ${stream.rstCode}`));
  });
  stream.on("data", () => {});
  stream.write(Buffer.from("GET / HTTP/1.1\r\n\r\n".repeat(10)));
  assert.match(await ended, /ERR_HTTP2_STREAM_ERROR|close [1-9]/, "the stream was reset, not ended");
  const line = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "proxy_header_malformed");
  assert.equal(line.peer_identity, "spiffe://weft.local/ns/default/sa/frontend");

  // 3. The sidecar still serves real traffic.
  const s = await connect(pair.explicitPort);
  s.write("still here");
  assert.equal((await readBytes(s, 10)).toString(), "still here");
  s.end();
});
