/**
 * A peer reaches the app, and nothing else (issue 13, case 3 and 4). A peer holding a valid certificate
 * chooses the destination in its PROXY header; the server sidecar must never dial, on its behalf:
 * - one of its own listeners (an explicit listener would carry the peer onward under the sidecar's own
 *   identity; the admin port would hand it /config and /logging),
 * - a port outside `inbound.ports` when that list is given,
 * - in transparent mode, a loopback address (a service bound to 127.0.0.1 is not exposed; Istio's
 *   behaviour since 1.10) or an address that is not this pod's: the app is reached at the original
 *   destination address instead of 127.0.0.1,
 * - a UDP "connection" (PROXY v2 transport byte 0x12/0x22) dialled as TCP.
 * Permissive plaintext (inbound capture) obeys the same rules. Each refusal is a reset, with its own
 * close reason and `weft_inbound_refused_total{reason}`; the app never sees the connection.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type TestContext, test } from "node:test";
import { MemoryLogger } from "../../src/core/log.ts";
import type { SocketAddr } from "../../src/discovery/types.ts";
import { origDstAddr } from "../../src/proxy/addresses.ts";
import type { OriginalDstResolver } from "../../src/proxy/capture/original-dst.ts";
import { encodeProxyV2 } from "../../src/proxy/transport/proxy-protocol.ts";
import { closeKind, startApp, startEchoServer } from "../helpers/apps.ts";
import { createTestCa, type TestCa } from "../helpers/ca.ts";
import { dialTunnel, tunnelHeader } from "../helpers/h2-raw.ts";
import {
  adminGet,
  identityDir,
  metricValue,
  startSidecar,
  testConfig,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

async function serverSidecar(
  t: TestContext,
  ca: TestCa,
  extra: Record<string, unknown>,
  originalDst?: OriginalDstResolver,
) {
  const files = await identityDir(t, "server");
  await writeIdentity(files, await ca.issue("default/backend"));
  const log = new MemoryLogger();
  const routes = new StaticRouteTable([
    {
      name: "elsewhere",
      identity: "spiffe://weft.local/ns/default/sa/elsewhere",
      ports: [80],
      endpoints: [{ address: "127.0.0.1", port: 1, tunnelPort: 1 }],
    },
  ]);
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, extra),
    routes,
    log,
    originalDst ? { originalDst } : {},
  );
  return { sidecar, log };
}

/** Send one per-connection tunnel with `header` as a verified peer; resolves with how the tunnel closed. */
async function peerAsks(ca: TestCa, tunnelPort: number, header: Buffer): Promise<string> {
  const peer = await ca.issue("default/attacker");
  const sock = await dialTunnel(tunnelPort, peer, "weft/1");
  const kind = closeKind(sock);
  sock.write(header);
  sock.write("GET /config HTTP/1.0\r\n\r\n");
  return kind;
}

function refusedMetric(text: string, direction: string, reason: string): number {
  return metricValue(text, `weft_inbound_refused_total\\{direction="${direction}",reason="${reason}"\\}`);
}

test("a peer cannot reach the sidecar's own explicit listener or admin port (forbidden_port)", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const { sidecar } = await serverSidecar(t, ca, {
    listeners: { explicit: [{ listen: "127.0.0.1:0", service: "elsewhere" }] },
  });
  const explicit = sidecar.addresses.explicit[0]!.port;
  const admin = sidecar.addresses.admin.port;
  assert.equal(await peerAsks(ca, sidecar.addresses.tunnel!.port, tunnelHeader(explicit)), "reset");
  assert.equal(await peerAsks(ca, sidecar.addresses.tunnel!.port, tunnelHeader(admin)), "reset");
  const m = (await adminGet(sidecar, "/metrics")).body;
  assert.equal(refusedMetric(m, "inbound", "forbidden_port"), 2);
  assert.match(
    m,
    /weft_tcp_connections_closed_total\{direction="inbound",service="unknown",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/attacker",reason="forbidden_port"\} 2/,
  );
  // Nothing reached the explicit listener (it would have dialled "elsewhere").
  assert.doesNotMatch(m, /direction="explicit"/);
});

test("inbound.ports is an allow-list: another port is refused (port_not_allowed)", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const listed = await startEchoServer();
  const other = await startEchoServer();
  t.after(() => Promise.all([listed.close(), other.close()]));
  const { sidecar } = await serverSidecar(t, ca, { inbound: { ports: [{ port: listed.port }] } });
  assert.equal(await peerAsks(ca, sidecar.addresses.tunnel!.port, tunnelHeader(other.port)), "reset");
  assert.equal(other.accepted.length, 0, "the unlisted app never saw the connection");
  const m = (await adminGet(sidecar, "/metrics")).body;
  assert.equal(refusedMetric(m, "inbound", "port_not_allowed"), 1);
});

test("UDP PROXY v2 headers (0x12, 0x22) are refused, not dialled as TCP (proxy_header_unsupported)", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const app = await startEchoServer();
  t.after(() => app.close());
  const { sidecar } = await serverSidecar(t, ca, {});
  for (const [fam, src, dst] of [
    [0x12, "127.0.0.1", "127.0.0.1"],
    [0x22, "::1", "::1"],
  ] as const) {
    const header = encodeProxyV2({
      command: "PROXY",
      source: { address: src, port: 1 },
      destination: { address: dst, port: app.port },
      tlvs: [],
    });
    header[13] = fam;
    assert.equal(
      await peerAsks(ca, sidecar.addresses.tunnel!.port, header),
      "reset",
      `0x${fam.toString(16)}`,
    );
  }
  assert.equal(app.accepted.length, 0, "the app never saw a connection");
  const m = (await adminGet(sidecar, "/metrics")).body;
  assert.match(m, /reason="proxy_header_unsupported"\} 2/);
});

/** An original-destination resolver that says every captured connection was sent to `dst`. */
function fixedOriginalDst(dst: () => SocketAddr): OriginalDstResolver {
  return { resolve: () => origDstAddr(dst()) };
}

test("transparent mode: neither a loopback-only service nor another host is reachable through the tunnel", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const loopbackOnly = await startApp((s) => s.end("secret\n"), "127.0.0.1");
  const app = await startEchoServer();
  t.after(() => Promise.all([loopbackOnly.close(), app.close()]));
  const { sidecar } = await serverSidecar(
    t,
    ca,
    { listeners: { inbound: { enabled: true, address: "127.0.0.1", port: 0 } } },
    fixedOriginalDst(() => ({ address: "127.0.0.1", port: 1 })),
  );
  const tunnel = sidecar.addresses.tunnel!.port;
  assert.equal(await peerAsks(ca, tunnel, tunnelHeader(loopbackOnly.port)), "reset");
  assert.equal(loopbackOnly.accepted.length, 0, "the loopback-only service never saw the peer");
  const elsewhere = encodeProxyV2({
    command: "PROXY",
    source: { address: "127.0.0.1", port: 1 },
    destination: { address: "192.0.2.200", port: app.port },
    tlvs: [],
  });
  assert.equal(await peerAsks(ca, tunnel, elsewhere), "reset", "an address that is not the pod's");
  const m = (await adminGet(sidecar, "/metrics")).body;
  assert.equal(refusedMetric(m, "inbound", "loopback_destination"), 1);
  assert.equal(refusedMetric(m, "inbound", "destination_not_local"), 1);

  // The positive half (the app is dialled at the pod address it was sent to) needs a pod address, so
  // it is shown in network namespaces: test/netns/mesh-transparent.test.ts.
});

test("permissive plaintext obeys the same rules: never to a loopback-only service", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const loopbackOnly = await startApp((s) => s.end("secret\n"), "127.0.0.1");
  t.after(() => loopbackOnly.close());
  const dst: SocketAddr = { address: "127.0.0.1", port: loopbackOnly.port };
  const { sidecar } = await serverSidecar(
    t,
    ca,
    {
      inbound: { mode: "permissive" },
      listeners: { inbound: { enabled: true, address: "127.0.0.1", port: 0 } },
    },
    fixedOriginalDst(() => dst),
  );
  const capture = sidecar.addresses.inbound!.port;
  const c = net.connect({ port: capture, host: "127.0.0.1" });
  assert.equal(await closeKind(c), "reset");
  assert.equal(loopbackOnly.accepted.length, 0, "plaintext never reached the loopback-only service");
  const m = (await adminGet(sidecar, "/metrics")).body;
  assert.equal(refusedMetric(m, "inbound_plaintext", "loopback_destination"), 1);
});
