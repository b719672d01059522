/**
 * Sessions follow certificates (issue 13, case 5): a pooled session verified its peer once, in its
 * handshake. Now the server sidecar ends it (GOAWAY; the running stream finishes) when
 * - the peer's certificate expires (the sidecar's injected clock is moved past the peer's notAfter), and
 * - a change of the trust bundle means the peer's chain no longer verifies (the bundle is swapped for one
 *   without the peer's CA).
 * The peer holds a valid certificate and speaks HTTP/2 itself (Node's client over our own mTLS socket).
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { readBytes, startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { dialTunnel, tunnelHeader } from "../helpers/h2-raw.ts";
import {
  adminGet,
  identityDir,
  metricValue,
  reloadIdentity,
  startSidecar,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

/** One CONNECT stream to `appPort` over `session`, its PROXY header sent; resolves once it echoes. */
async function openStream(
  session: http2.ClientHttp2Session,
  appPort: number,
): Promise<http2.ClientHttp2Stream> {
  const stream = session.request(
    { ":method": "CONNECT", ":authority": "127.0.0.1:15008" },
    { endStream: false },
  );
  stream.on("error", () => {});
  stream.write(tunnelHeader(appPort));
  stream.write("ping");
  assert.equal((await readBytes(stream, 4)).toString(), "ping");
  return stream;
}

function goaway(session: http2.ClientHttp2Session): Promise<void> {
  return new Promise((resolve) => session.once("goaway", () => resolve()));
}

test("a pooled session ends (GOAWAY) when the peer's certificate expires; its running stream finishes", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const clock = new ManualClock(Date.now());
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const files = await identityDir(t, "server");
  await writeIdentity(files, await ca.issue("default/backend", { ttlMs: 24 * 3600_000 }));
  const log = new MemoryLogger();
  // Keepalive off: moving the manual clock 11 minutes at once would also fire its PING deadline.
  const config = testConfig(ca.trustDomain, files, { upstream: { sessionKeepalive: { interval: 0 } } });
  const server = await startSidecar(t, config, new StaticRouteTable([]), log, { clock });
  const peer = await ca.issue("default/frontend", { ttlMs: 10 * 60_000 });
  const sock = await dialTunnel(server.addresses.tunnel!.port, peer);
  const session = http2.connect("https://127.0.0.1", { createConnection: () => sock });
  session.on("error", () => {});
  t.after(() => session.destroy());
  const running = await openStream(session, app.port);
  const ended = goaway(session);

  clock.advance(11 * 60_000);
  await ended;
  // A peer that keeps opening streams on that session gets none served.
  const late = session.request({ ":method": "CONNECT", ":authority": "x" }, { endStream: false });
  late.on("error", () => {});
  late.write(tunnelHeader(app.port));
  await new Promise((r) => late.once("close", r));
  assert.equal(app.accepted.length, 1, "no stream opened after the GOAWAY reached the app");
  running.write("still");
  assert.equal((await readBytes(running, 5)).toString(), "still", "the running stream finishes its work");
  running.end();
  const metrics = (await adminGet(server, "/metrics")).body;
  assert.equal(
    metricValue(
      metrics,
      'weft_pooled_sessions_ended_total\\{direction="inbound",reason="peer_cert_expired"\\}',
    ),
    1,
  );
  await waitForLog(log, (r) => r.reason === "peer_cert_expired" && r.peer_identity === peer.id.toString());
});

test("a pooled session ends (GOAWAY) when a trust-bundle change means the peer's chain no longer verifies", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const ours = await createTestCa({ trustDomain: "weft.local" });
  const theirs = await createTestCa({ trustDomain: "weft.local" });
  const files = await identityDir(t, "server");
  const issued = await ours.issue("default/backend");
  await writeIdentity(files, issued, ours.material.bundlePem + theirs.material.bundlePem);
  const log = new MemoryLogger();
  const server = await startSidecar(t, testConfig(ours.trustDomain, files), new StaticRouteTable([]), log);
  const stays = await ours.issue("default/frontend");
  const goes = await theirs.issue("default/frontend");
  const sessions = await Promise.all(
    [stays, goes].map(async (id) => {
      const sock = await dialTunnel(server.addresses.tunnel!.port, {
        ...id,
        bundlePem: ours.material.bundlePem,
      });
      const s = http2.connect("https://127.0.0.1", { createConnection: () => sock });
      s.on("error", () => {});
      t.after(() => s.destroy());
      return s;
    }),
  );
  const [kept, dropped] = sessions as [http2.ClientHttp2Session, http2.ClientHttp2Session];
  const running = await openStream(dropped, app.port);
  await openStream(kept, app.port);
  const ended = goaway(dropped);

  // The bundle loses the other CA: the peer it issued no longer verifies.
  await writeIdentity(files, issued, ours.material.bundlePem);
  await reloadIdentity(server);
  await ended;
  running.write("still");
  assert.equal((await readBytes(running, 5)).toString(), "still", "the running stream finishes its work");
  await openStream(kept, app.port);
  const metrics = (await adminGet(server, "/metrics")).body;
  assert.equal(
    metricValue(metrics, 'weft_pooled_sessions_ended_total\\{direction="inbound",reason="peer_untrusted"\\}'),
    1,
    "only the untrusted peer's session",
  );
});
