/**
 * The tunnel listener's `maxConnections` bounds pooled streams too, across every session: each TLS
 * connection carrying a session is one connection and each live stream one more, so a peer cannot open
 * many sessions × 10,000 streams. A stream over the limit is refused with RST_STREAM REFUSED_STREAM and
 * counted (`reason="connection_limit"`); a slot freed by a stream that ends takes the next one. Real
 * sockets and TLS: a peer holding two HTTP/2 sessions with the client sidecar's identity.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { test } from "node:test";
import tls from "node:tls";
import { encodeProxyV2 } from "../../src/proxy/transport/proxy-protocol.ts";
import { readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { adminGet, startSidecarPair, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const LIMIT = 6;

test("pooled: tunnel streams count against listeners.tunnel.maxConnections across sessions; over it, REFUSED_STREAM", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    serverConfig: { listeners: { tunnel: { address: "127.0.0.1", port: 0, maxConnections: LIMIT } } },
  });
  const session = (): Promise<http2.ClientHttp2Session> =>
    new Promise((resolve, reject) => {
      const sock = tls.connect({
        host: "127.0.0.1",
        port: pair.tunnelPort,
        ALPNProtocols: ["h2"],
        rejectUnauthorized: false,
        key: pair.clientIssued.keyPem,
        cert: pair.clientIssued.chainPem,
      });
      sock.once("error", reject);
      sock.once("secureConnect", () => {
        const s = http2.connect(`https://127.0.0.1:${pair.tunnelPort}`, { createConnection: () => sock });
        s.on("error", () => {});
        t.after(() => s.destroy());
        s.once("remoteSettings", () => resolve(s));
      });
    });
  const header = encodeProxyV2({
    command: "PROXY",
    source: { address: "127.0.0.1", port: 40_000 },
    destination: { address: "127.0.0.1", port: app.port },
    tlvs: [],
  });
  /** A CONNECT stream to the app; resolves once its bytes came back, or with the code it was reset with. */
  const stream = async (s: http2.ClientHttp2Session, msg: string) => {
    const st = s.request({ ":method": "CONNECT", ":authority": "127.0.0.1:1" }, { endStream: false });
    st.on("error", () => {});
    const closed = new Promise<number>((resolve) => st.once("close", () => resolve(st.rstCode ?? 0)));
    st.write(Buffer.concat([header, Buffer.from(msg)]));
    const outcome = await readBytes(st, msg.length).then(
      (b) => b.toString(),
      async () => ({ rstCode: await closed }),
    );
    return { st, outcome };
  };

  // Two sessions (2 connections) with two streams each (4 more): the listener is at its limit of 6.
  const a = await session();
  const b = await session();
  const live: http2.ClientHttp2Stream[] = [];
  for (const [s, name] of [
    [a, "a1"],
    [a, "a2"],
    [b, "b1"],
    [b, "b2"],
  ] as const) {
    const r = await stream(s, name);
    assert.equal(r.outcome, name, `stream ${name} is carried`);
    live.push(r.st);
  }

  // The seventh on either session is refused, before it reaches the app.
  const accepted = app.accepted.length;
  const over = await stream(a, "a3");
  assert.deepEqual(over.outcome, { rstCode: http2.constants.NGHTTP2_REFUSED_STREAM });
  assert.equal(app.accepted.length, accepted, "the refused stream never reached the app");
  const metrics = (await adminGet(pair.server, "/metrics")).body;
  assert.match(
    metrics,
    /^weft_tcp_connections_closed_total\{direction="inbound",service="unknown",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend",reason="connection_limit"\} 1$/m,
  );

  // A stream of session b ends: its slot goes to the next stream, on session a.
  live[3]!.close();
  await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
  const again = await stream(a, "a4");
  assert.equal(again.outcome, "a4", "a freed slot takes the next stream");
  for (const st of [...live, again.st]) st.close();
});
