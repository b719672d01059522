/**
 * Header-less streams (issue 13, case 7): a peer holding a valid certificate opens 5,000 pooled CONNECT
 * streams and never sends their PROXY header. Each used to hold its buffers until the 5 s header
 * deadline, and the memory was not given back. Now a peer has at most `limits.perPeer.pendingHeaders`
 * (256) streams waiting for a header; past that streams are refused, and a peer that goes on gets its
 * sessions closed (GOAWAY ENHANCE_YOUR_CALM); once the burst is over the garbage is collected and freed
 * memory returned to the kernel. The
 * server sidecar's RSS is back within 10 MiB of its baseline within 10 s, it is alive, and it serves a
 * legitimate connection byte-exact.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { assertServesByteExact, startClientFor, startServerProcess } from "../helpers/adversarial.ts";
import { startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { connectHeaders, dialTunnel, sessionStart } from "../helpers/h2-raw.ts";
import { metricValue } from "../helpers/sidecar.ts";

const STREAMS = 5_000;
const SESSIONS = 5;
const MiB = 1024 * 1024;

function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0) * 1024;
}

test(`${STREAMS} header-less streams: refused beyond a few per peer, RSS back within 10 MiB in 10 s`, async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const server = await startServerProcess(t, ca);
  const pid = server.weft.child.pid!;
  const client = await startClientFor(t, ca, server, app.port, "pooled");
  await assertServesByteExact(client.port);
  const peer = await ca.issue("default/attacker");
  // Baseline: after one legitimate connection and one small flood (600 header-less streams on one
  // session), so the code paths are warm and the sidecar has given memory back once.
  const warm = await dialTunnel(server.tunnelPort, peer);
  warm.resume();
  warm.write(
    Buffer.concat([sessionStart(), ...Array.from({ length: 600 }, (_, i) => connectHeaders(2 * i + 1))]),
  );
  await new Promise((r) => setTimeout(r, 3_000));
  warm.destroy();
  const baseline = rss(pid);

  const socks = await Promise.all(
    Array.from({ length: SESSIONS }, () => dialTunnel(server.tunnelPort, peer)),
  );
  t.after(() => {
    for (const s of socks) s.destroy();
  });
  const per = STREAMS / SESSIONS;
  for (const s of socks) {
    s.resume();
    const parts = [sessionStart()];
    for (let i = 0; i < per; i++) parts.push(connectHeaders(2 * i + 1));
    s.write(Buffer.concat(parts));
  }
  // The sessions stay open and silent; within 10 s the sidecar's RSS must be back near its baseline.
  const flooded = Date.now();
  let now = rss(pid);
  let peak = now;
  const figures = () =>
    `RSS baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)}, end ${(now / MiB).toFixed(1)}`;
  await eventually(
    () => `RSS back within 10 MiB of its baseline: ${figures()}`,
    () => {
      now = rss(pid);
      peak = Math.max(peak, now);
      // Not before a second has passed: the flood must have been read for "back" to mean anything.
      return now <= baseline + 10 * MiB && Date.now() - flooded > 1_000;
    },
    { timeoutMs: 10_000, intervalMs: 250 },
  );
  t.diagnostic(figures());
  const metrics = (await server.weft.admin_get("/metrics")).body;
  assert.ok(
    metricValue(metrics, 'weft_peer_limit_hits_total\\{limit="pending_headers"\\}') >= 1,
    "refused beyond the limit",
  );
  assert.equal(metricValue(metrics, "weft_tunnel_pooled_sessions"), 1, "the flooding sessions were closed");
  assert.ok(server.weft.alive());
  await assertServesByteExact(client.port);
});
