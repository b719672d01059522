/**
 * A dial that takes a kept TLS session and resumes it shows no certificate at its end, so what changed
 * while it was in flight is checked at that end: the server's serial revoked, a new identity or bundle
 * installed (the running sessions were checked again before this one existed), or the kept entry dropped
 * (another dial to the endpoint failed): the dial then still knows the leaf's expiry.
 * Real TLS 1.3 handshakes on loopback between two TunnelTls states, through dialMtls.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { systemClock } from "../../src/core/clock.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { loadIdentity } from "../../src/proxy/identity/source.ts";
import { dialMtls, type VerifiedTls } from "../../src/proxy/transport/connector.ts";
import { ALPN_WEFT, TunnelTls } from "../../src/proxy/transport/tls-context.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const BACKEND = "spiffe://weft.local/ns/default/sa/backend";

async function setup(t: TestContext) {
  const ca = await createTestCa();
  const side = async (who: string) => {
    const issued = await ca.issue(who);
    const state = new TunnelTls({ trustDomain: "weft.local", clock: systemClock });
    state.update(loadIdentity(issued, "weft.local", systemClock));
    return {
      state,
      issued,
      reissue: async () => loadIdentity(await ca.issue(who), "weft.local", systemClock),
    };
  };
  const server = await side("default/backend");
  const client = await side("default/frontend");
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((raw) => {
    sockets.add(raw);
    raw.on("close", () => sockets.delete(raw));
    raw.on("error", () => {});
    const s = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: server.state.context(),
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: [ALPN_WEFT],
    } as tls.TLSSocketOptions);
    s.on("error", () => {});
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => srv.close(r));
  });
  const port = (srv.address() as net.AddressInfo).port;
  const endpoint = {
    key: `127.0.0.1:${port}`,
    address: "127.0.0.1",
    port: 8080,
    tunnelPort: port,
    weight: 1,
    identity: BACKEND,
    sidecar: true,
  };
  const opts = { tls: client.state, clock: systemClock, metrics: new WeftMetrics() };
  const dial = (expected = BACKEND) =>
    dialMtls(opts, { endpoint, expectedIdentity: expected }, new AbortController().signal, [ALPN_WEFT]);
  /** Let the session ticket arrive (it follows the handshake), then close. */
  const finish = async (v: VerifiedTls) => {
    v.sock.on("error", () => {});
    v.sock.resume();
    await new Promise((r) => setTimeout(r, 100));
    v.sock.destroy();
    v.raw.destroy();
  };
  const outcome = (p: Promise<VerifiedTls>) =>
    p.then(
      async (v) => {
        await finish(v);
        return `accepted resumed=${v.resumed} notAfter=${Number.isFinite(v.peerNotAfter) ? "finite" : v.peerNotAfter}`;
      },
      (err: { reason?: string }) => `refused ${err.reason}`,
    );
  await finish(await dial()); // the full handshake whose ticket is kept
  return { server, client, dial, outcome };
}

test("a server revoked while a resumed dial is in flight is refused (svid_revoked)", async (t) => {
  const { server, client, dial, outcome } = await setup(t);
  const inFlight = outcome(dial()); // takes the kept session now
  client.state.setRevoked([server.issued.serial]);
  assert.equal(await outcome(dial()), "refused svid_revoked", "a new dial after the revocation");
  assert.equal(await inFlight, "refused svid_revoked", "the dial that had taken the kept session");
});

test("a new identity installed while a resumed dial is in flight refuses it; the next dial is full", async (t) => {
  const { client, dial, outcome } = await setup(t);
  const next = await client.reissue();
  const inFlight = outcome(dial());
  client.state.update(next);
  assert.equal(await inFlight, "refused handshake_failed");
  assert.equal(await outcome(dial()), "accepted resumed=false notAfter=finite");
});

test("a resumed dial whose kept entry was dropped meanwhile still knows the server's expiry", async (t) => {
  const { dial, outcome } = await setup(t);
  const inFlight = outcome(dial());
  // Another dial to the endpoint, expecting another identity, drops the kept entry.
  assert.equal(await outcome(dial("spiffe://weft.local/ns/default/sa/other")), "refused identity_mismatch");
  assert.equal(await inFlight, "accepted resumed=true notAfter=finite");
});
