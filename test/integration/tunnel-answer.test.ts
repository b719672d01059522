/**
 * The answer step (transport/answer.ts), on both transports: the server sidecar accepts a tunnel only
 * after its app accepted, and refuses with a reason otherwise; the client sidecar sends the PROXY header
 * and the app's first bytes at once, keeps them until the answer, retries a refused or unanswered
 * attempt on another endpoint with the same bytes, and records the peer's reason. Fake peers (a TLS or
 * HTTP/2 server with a valid SVID) only inject what a real sidecar does not do on demand: never answer,
 * answer garbage.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { MemoryLogger } from "../../src/core/log.ts";
import type { Sidecar } from "../../src/proxy/sidecar.ts";
import { encodeProxyV2 } from "../../src/proxy/transport/proxy-protocol.ts";
import { closeKind, connect, readBytes, startApp, startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  accessLines,
  adminGet,
  identityDir,
  startSidecar,
  type TestCa,
  TRANSPORTS,
  type Transport,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { type StaticEndpointInput, StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

interface Server {
  readonly sidecar: Sidecar;
  readonly log: MemoryLogger;
  readonly tunnelPort: number;
}

async function startServer(t: TestContext, ca: TestCa, extra: Record<string, unknown> = {}): Promise<Server> {
  const files = await identityDir(t, "server");
  await writeIdentity(files, await ca.issue("default/backend"));
  const log = new MemoryLogger();
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, extra),
    new StaticRouteTable([]),
    log,
  );
  return { sidecar, log, tunnelPort: sidecar.addresses.tunnel!.port };
}

async function startClient(
  t: TestContext,
  ca: TestCa,
  transport: Transport,
  endpoints: StaticEndpointInput[],
): Promise<{ sidecar: Sidecar; log: MemoryLogger; routes: StaticRouteTable; port: number }> {
  const files = await identityDir(t, "client");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const routes = new StaticRouteTable([
    {
      name: "backend",
      identity: `spiffe://${ca.trustDomain}/ns/default/sa/backend`,
      ports: [8080],
      endpoints,
    },
  ]);
  const log = new MemoryLogger();
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, {
      upstream: { transport },
      listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
    }),
    routes,
    log,
  );
  return { sidecar, log, routes, port: sidecar.addresses.explicit[0]!.port };
}

/** A port where nothing listens (bound, then closed). */
async function deadPort(): Promise<number> {
  const app = await startApp(() => {});
  await app.close();
  return app.port;
}

async function metrics(sidecar: Sidecar): Promise<string> {
  return (await adminGet(sidecar, "/metrics")).body;
}

/** Client connects, writes `msg` at once (before any upstream exists), reads the echo, closes. */
async function echoOnce(port: number, msg: string): Promise<string> {
  const c = await connect(port);
  c.write(msg);
  const got = await readBytes(c, msg.length);
  c.end();
  await closeKind(c);
  return got.toString();
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a dead app behind a live sidecar is refused, and the early bytes are retried on the next endpoint`, async (t) => {
    const ca = await createTestCa();
    const echo = await startEchoServer();
    t.after(() => echo.close());
    const dead = await deadPort();
    const a = await startServer(t, ca);
    const b = await startServer(t, ca);
    const client = await startClient(t, ca, transport, [
      { address: "127.0.0.1", port: dead, tunnelPort: a.tunnelPort },
      { address: "127.0.0.1", port: echo.port, tunnelPort: b.tunnelPort },
    ]);
    // The first pick is the endpoint whose app is down; its sidecar refuses after trying the app.
    assert.equal(
      await echoOnce(client.port, "early bytes, sent before any answer"),
      "early bytes, sent before any answer",
    );
    const refused = await waitForLog(a.log, (r) => r.msg === "connection closed");
    assert.equal(refused.reason, "app_connect_failed");
    const m = await metrics(client.sidecar);
    assert.match(
      m,
      new RegExp(
        `weft_upstream_connect_failures_total\\{service="backend",endpoint="127\\.0\\.0\\.1:${dead}",reason="peer_app_refused"\\} 1`,
      ),
    );
    assert.match(m, /weft_upstream_connect_retries_total\{service="backend"\} 1/);
    const line = await waitForLog(client.log, (r) => r.msg === "connection closed");
    assert.equal(line.reason, "closed");
    assert.equal(line.endpoint, `127.0.0.1:${echo.port}`);
    assert.deepEqual(
      client.routes.reports.filter((r) => r.outcome === "failure").map((r) => [r.endpoint, r.detail]),
      [[`127.0.0.1:${dead}`, "peer_app_refused"]],
      "the refusal is a failure of that endpoint for outlier detection",
    );
  });

  test(`${transport}: every endpoint refusing ends the client connection with the peer's reason`, async (t) => {
    const ca = await createTestCa();
    const dead = await deadPort();
    const a = await startServer(t, ca);
    const client = await startClient(t, ca, transport, [
      { address: "127.0.0.1", port: dead, tunnelPort: a.tunnelPort },
    ]);
    const c = await connect(client.port);
    c.write("hello");
    assert.equal(await closeKind(c), "reset", "the client app sees a reset, as from a closed port");
    const line = await waitForLog(client.log, (r) => r.msg === "connection closed");
    assert.equal(line.reason, "peer_app_refused");
    assert.match(String(line.err), /refused the connection \(app_refused\)/);
    assert.match(
      await metrics(client.sidecar),
      // peer_identity: the identity the service must prove (as on opened), whichever transport.
      /weft_tcp_connections_closed_total\{direction="explicit",service="backend",peer_identity="[^"]+",reason="peer_app_refused"\} 1/,
    );
  });

  test(`${transport}: a policy refusal reaches the client as peer_policy_denied and is not an outlier failure`, async (t) => {
    const ca = await createTestCa();
    const echo = await startEchoServer();
    t.after(() => echo.close());
    const a = await startServer(t, ca, {
      policy: {
        default: "deny",
        rules: [{ ports: [echo.port], allow: ["spiffe://weft.local/ns/default/sa/admin"] }],
      },
    });
    const client = await startClient(t, ca, transport, [
      { address: "127.0.0.1", port: echo.port, tunnelPort: a.tunnelPort },
    ]);
    const c = await connect(client.port);
    c.write("hello");
    assert.equal(await closeKind(c), "reset");
    const line = await waitForLog(client.log, (r) => r.msg === "connection closed");
    assert.equal(line.reason, "peer_policy_denied");
    assert.equal(echo.accepted.length, 0);
    assert.match(await metrics(client.sidecar), /reason="peer_policy_denied"\} 1/);
    assert.equal(
      client.routes.reports.filter((r) => r.outcome === "failure").length,
      0,
      "a policy decision does not eject the endpoint",
    );
  });
}

test("pooled: a peer whose session dies before it answers costs no connection: the bytes go to the next endpoint", async (t) => {
  const ca = await createTestCa();
  const echo = await startEchoServer();
  t.after(() => echo.close());
  const fake = await startSilentPeer(t, ca, "pooled");
  const b = await startServer(t, ca);
  const client = await startClient(t, ca, "pooled", [
    { address: "127.0.0.1", port: echo.port + 1, tunnelPort: fake.port },
    { address: "127.0.0.1", port: echo.port, tunnelPort: b.tunnelPort },
  ]);
  assert.equal(await echoOnce(client.port, "ping"), "ping");
  // The dead peer got the PROXY header and the early bytes in its first read: no round trip was added.
  const first = await fake.firstBytes;
  assert.ok(first.includes(Buffer.from("ping")), "early bytes travelled with the PROXY header");
  assert.match(await metrics(client.sidecar), /reason="peer_no_answer"\} 1/);
  assert.equal(accessLines(client.log)[0]?.reason, "closed");
});

test("per-connection: a tunnel that ends before its answer is not retried (the answer may have been lost under a reset)", async (t) => {
  const ca = await createTestCa();
  const echo = await startEchoServer();
  t.after(() => echo.close());
  const fake = await startSilentPeer(t, ca, "per-connection");
  const b = await startServer(t, ca);
  const client = await startClient(t, ca, "per-connection", [
    { address: "127.0.0.1", port: echo.port + 1, tunnelPort: fake.port },
    { address: "127.0.0.1", port: echo.port, tunnelPort: b.tunnelPort },
  ]);
  const c = await connect(client.port);
  c.write("ping");
  assert.equal(await closeKind(c), "reset");
  const first = await fake.firstBytes;
  assert.ok(first.includes(Buffer.from("ping")), "early bytes travelled with the PROXY header");
  const line = await waitForLog(client.log, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "peer_closed");
  assert.equal(echo.accepted.length, 0, "no second attempt");
});

test("per-connection: a status message that is not one fails the attempt as peer_protocol_error", async (t) => {
  const ca = await createTestCa();
  const fake = await startSilentPeer(t, ca, "per-connection", Buffer.from("HTTP/1.1 200 OK\r\n\r\n"));
  const client = await startClient(t, ca, "per-connection", [
    { address: "127.0.0.1", port: 9, tunnelPort: fake.port },
  ]);
  const c = await connect(client.port);
  c.write("x");
  assert.equal(await closeKind(c), "reset");
  const line = await waitForLog(client.log, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "peer_protocol_error");
});

test("a weft/1 peer (no answer step) still interoperates with a new server: bytes flow at once", async (t) => {
  const ca = await createTestCa();
  const echo = await startEchoServer();
  t.after(() => echo.close());
  const a = await startServer(t, ca);
  const creds = await ca.issue("default/frontend");
  const s = tls.connect({
    host: "127.0.0.1",
    port: a.tunnelPort,
    ALPNProtocols: ["weft/1"],
    rejectUnauthorized: false,
    key: creds.keyPem,
    cert: creds.chainPem,
  });
  await new Promise((r) => s.once("secureConnect", r));
  assert.equal(s.alpnProtocol, "weft/1");
  s.write(proxyHeader(echo.port));
  s.write("old peer");
  assert.equal((await readBytes(s, 8)).toString(), "old peer", "no status message before the app's bytes");
  s.destroy();
});

test("a weft/2 client gets the 4-byte status message first, then the app's bytes", async (t) => {
  const ca = await createTestCa();
  const echo = await startEchoServer();
  t.after(() => echo.close());
  const a = await startServer(t, ca);
  const creds = await ca.issue("default/frontend");
  const s = tls.connect({
    host: "127.0.0.1",
    port: a.tunnelPort,
    ALPNProtocols: ["weft/2", "weft/1"],
    rejectUnauthorized: false,
    key: creds.keyPem,
    cert: creds.chainPem,
  });
  await new Promise((r) => s.once("secureConnect", r));
  assert.equal(s.alpnProtocol, "weft/2");
  s.write(Buffer.concat([proxyHeader(echo.port), Buffer.from("new peer")]));
  assert.deepEqual([...(await readBytes(s, 4))], [0x57, 0x46, 2, 0]);
  assert.equal((await readBytes(s, 8)).toString(), "new peer");
  s.destroy();
  // A refusal is a status message too, then the end of the stream (not a reset).
  const dead = await deadPort();
  const r = tls.connect({
    host: "127.0.0.1",
    port: a.tunnelPort,
    ALPNProtocols: ["weft/2"],
    rejectUnauthorized: false,
    key: creds.keyPem,
    cert: creds.chainPem,
  });
  await new Promise((res) => r.once("secureConnect", res));
  r.write(Buffer.concat([proxyHeader(dead), Buffer.from("lost?")]));
  assert.deepEqual([...(await readBytes(r, 4))], [0x57, 0x46, 2, 1], "code 1 = app_refused");
  assert.equal(await closeKind(r), "end");
});

function proxyHeader(port: number): Buffer {
  return encodeProxyV2({
    command: "PROXY",
    source: { address: "127.0.0.1", port: 40000 },
    destination: { address: "127.0.0.1", port },
    tlvs: [],
  });
}

/**
 * A peer with a valid backend SVID that reads the PROXY header and early bytes and then, instead of an
 * answer, writes `reply` (if given) or dies: the per-connection flavour closes the TLS connection, the
 * pooled flavour destroys the whole session under the unanswered stream.
 */
async function startSilentPeer(
  t: TestContext,
  ca: TestCa,
  transport: Transport,
  reply?: Buffer,
): Promise<{ port: number; firstBytes: Promise<Buffer> }> {
  const id = await ca.issue("default/backend");
  let gotFirst!: (b: Buffer) => void;
  const firstBytes = new Promise<Buffer>((r) => {
    gotFirst = r;
  });
  const opts = {
    key: id.keyPem,
    cert: id.chainPem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.3" as const,
  };
  const onBytes = (stream: NodeJS.ReadableStream & { destroy(): void }, done: () => void): void => {
    stream.once("data", (d: Buffer) => {
      gotFirst(d);
      done();
    });
  };
  let server: tls.Server | http2.Http2SecureServer;
  if (transport === "pooled") {
    const h2 = http2.createSecureServer({ ...opts, ALPNProtocols: ["h2"] });
    h2.on("stream", (stream) => {
      stream.on("error", () => {});
      onBytes(stream, () => stream.session?.destroy());
    });
    server = h2;
  } else {
    server = tls.createServer({ ...opts, ALPNProtocols: ["weft/2"] }, (sock: Socket) => {
      sock.on("error", () => {});
      onBytes(sock, () => (reply ? sock.end(reply) : sock.destroy()));
    });
  }
  server.on("tlsClientError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  return { port: (server.address() as { port: number }).port, firstBytes };
}
