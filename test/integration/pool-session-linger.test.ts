/**
 * An ended pooled session must not keep its socket open behind a peer that reads nothing. Node ends a
 * closed or destroyed HTTP/2 session's socket with `end()` and waits for its queued writes to flush:
 * behind a stalled or hostile peer that is forever. Real TLS over loopback: the server side completes the
 * handshake, grants huge HTTP/2 windows and then reads nothing, so the client session has MiBs queued.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import http2 from "node:http2";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { ManualClock } from "../../src/core/clock.ts";
import { SessionKeepalive } from "../../src/proxy/transport/h2/keepalive.ts";
import { destroySession, SESSION_LINGER_MS, tieSessionToSocket } from "../../src/proxy/transport/h2/pool.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

/**
 * An HTTP/2 client session over real TLS to a peer that grants huge flow-control windows (a SETTINGS
 * frame and a WINDOW_UPDATE written by hand) and then reads nothing; a CONNECT stream on it has written
 * `queued` bytes, far more than the kernel's socket buffers take.
 */
async function stalledSession(
  t: TestContext,
  queued = 64 * 1024 * 1024,
): Promise<{ sock: tls.TLSSocket; session: http2.ClientHttp2Session; stream: http2.ClientHttp2Stream }> {
  const ca = await createTestCa();
  const server = await ca.issue("default/server");
  const peers: Socket[] = [];
  const srv = tls.createServer({ key: server.keyPem, cert: server.chainPem, ALPNProtocols: ["h2"] }, (s) => {
    s.pause(); // reads nothing, ever
    peers.push(s);
    const settings = Buffer.from([0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0x7f, 0xff, 0xff, 0xff]);
    const windowUpdate = Buffer.from([0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0x7f, 0xff, 0, 0]);
    s.write(Buffer.concat([settings, windowUpdate]));
  });
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  t.after(() => {
    for (const p of peers) p.destroy();
    srv.close();
  });
  const port = (srv.address() as { port: number }).port;
  const sock = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, ALPNProtocols: ["h2"] });
  await once(sock, "secureConnect");
  t.after(() => sock.destroy());
  const session = http2.connect("https://localhost", { createConnection: () => sock });
  session.on("error", () => {});
  await once(session, "remoteSettings");
  const stream = session.request({ ":method": "CONNECT", ":authority": "app:80" }, { endStream: false });
  stream.on("error", () => {});
  stream.write(Buffer.alloc(queued, 1));
  // Let the session hand the kernel what it takes; the rest stays queued in Node.
  await new Promise((r) => setTimeout(r, 300));
  return { sock, session, stream };
}

const closedWithin = (sock: tls.TLSSocket, ms: number): Promise<boolean> =>
  sock.destroyed && sock.closed
    ? Promise.resolve(true)
    : Promise.race([
        once(sock, "close").then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref()),
      ]);

test("Node alone: a destroyed HTTP/2 session leaves its socket open behind a peer that reads nothing", async (t) => {
  // The condition the two fixes below exist for; if Node ever closes the socket itself, this fails.
  const { sock, session } = await stalledSession(t);
  session.destroy();
  assert.equal(await closedWithin(sock, 500), false, "the socket is still open");
});

test("destroySession closes the socket at once, whatever it still had to write", async (t) => {
  const { sock, session } = await stalledSession(t);
  destroySession(session, sock);
  assert.equal(await closedWithin(sock, 5_000), true);
  assert.equal(session.destroyed, true);
});

test("tieSessionToSocket: an ended session's socket gets SESSION_LINGER_MS to flush, then is destroyed", async (t) => {
  const clock = new ManualClock();
  const { sock, session } = await stalledSession(t);
  tieSessionToSocket(session, sock, clock);
  session.destroy(); // as Node does itself on a protocol error, or after a closed session's last stream
  // A fixed wait: nothing may happen in it (the manual clock has not moved).
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(sock.destroyed, false, "still flushing before the linger time");
  clock.advance(SESSION_LINGER_MS - 1);
  assert.equal(sock.destroyed, false);
  clock.advance(1);
  assert.equal(await closedWithin(sock, 5_000), true, "destroyed once the linger time passed");
});

test("a gracefully closed session stuck behind a peer that reads nothing is ended by its keepalive, socket and all", async (t) => {
  // GOAWAY and the stream's reset cannot leave (the write in progress never completes), so Node never
  // ends the session by itself; the PING behind them gets no ACK either, and the keepalive ends it.
  const clock = new ManualClock();
  const { sock, session, stream } = await stalledSession(t);
  tieSessionToSocket(session, sock, clock);
  let dead = 0;
  new SessionKeepalive(session, sock, clock, { intervalMs: 10_000, timeoutMs: 5_000 }, () => {
    dead++;
    destroySession(session, sock);
  }).start();
  session.close();
  stream.destroy();
  await once(stream, "close");
  // A fixed wait: the session must still be there after it.
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(session.destroyed, false, "Node keeps the stuck session (its stream's reset never left)");
  clock.advance(10_000); // silent for an interval: PING
  clock.advance(5_000); // no ACK
  assert.equal(dead, 1);
  assert.equal(await closedWithin(sock, 5_000), true, "the socket is closed");
});
