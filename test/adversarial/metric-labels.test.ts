/**
 * Peers do not choose metric label values (issue 13, case 6): the service a peer names in its PROXY
 * header becomes the `service` label only if this sidecar serves it, and a port becomes the `port`
 * label only if the config declares it; anything else is `unknown`. 10,000 pooled streams with random
 * service names and random ports, all denied by policy, leave /metrics under 64 KB; the server sidecar
 * then still serves a legitimate connection byte-exact.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { encodeProxyV2, PP2_TYPE_WEFT_SERVICE } from "../../src/proxy/transport/proxy-protocol.ts";
import { assertServesByteExact, startClientFor, startServerProcess } from "../helpers/adversarial.ts";
import { startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { connectHeaders, data, dialTunnel, sessionStart } from "../helpers/h2-raw.ts";

const STREAMS = 10_000;
// 250 streams a session: under limits.perPeer.pendingHeaders (256), so every one is seen and denied.
const SESSIONS = 40;

test(`${STREAMS} streams with random service names and ports keep /metrics under 64 KB`, async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const ca = await createTestCa({ trustDomain: "weft.local" });
  // Only default/frontend may reach the app's port; the attacker is denied on every port it names.
  const server = await startServerProcess(t, ca, {
    policy: {
      default: "deny",
      rules: [{ ports: [app.port], allow: ["spiffe://weft.local/ns/default/sa/frontend"] }],
    },
  });
  const peer = await ca.issue("default/attacker");
  const before = (await server.weft.admin_get("/metrics")).body.length;
  const per = STREAMS / SESSIONS;
  for (let s = 0; s < SESSIONS; s++) {
    const sock = await dialTunnel(server.tunnelPort, peer);
    const parts = [sessionStart()];
    for (let i = 0; i < per; i++) {
      const id = 2 * i + 1;
      const header = encodeProxyV2({
        command: "PROXY",
        source: { address: "127.0.0.1", port: 40000 },
        destination: { address: "127.0.0.1", port: 1024 + ((s * per + i) % 60000) },
        tlvs: [{ type: PP2_TYPE_WEFT_SERVICE, value: Buffer.from(`svc-${randomBytes(6).toString("hex")}`) }],
      });
      parts.push(connectHeaders(id), data(id, header, true));
    }
    const closed = new Promise((r) => sock.once("close", r));
    sock.resume();
    sock.write(Buffer.concat(parts));
    // Let the server read the streams before hanging up (a fixed wait: nothing to poll for).
    await new Promise((r) => setTimeout(r, 300));
    sock.end();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    sock.destroy();
  }
  const metrics = (await server.weft.admin_get("/metrics")).body;
  const denied =
    /weft_policy_denied_total\{peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/attacker",port="unknown"[^}]*\} (\d+)/.exec(
      metrics,
    );
  assert.ok(denied && Number(denied[1]) > STREAMS / 2, `most streams were seen and denied: ${denied?.[1]}`);
  assert.doesNotMatch(metrics, /svc-/, "no peer-chosen service name is a label");
  assert.ok(metrics.length < 64 * 1024, `/metrics is ${metrics.length} bytes (was ${before})`);
  const client = await startClientFor(t, ca, server, app.port, "pooled");
  await assertServesByteExact(client.port);
});
