/**
 * TLS 1.3 session resumption between sidecars: after one full mutual-TLS handshake the client sidecar
 * resumes the session for the next connections to the same endpoint (the server proved the expected
 * identity in the full handshake), counted as `resumed="true"` on both sides and logged as
 * `tls_resumed`. With `tls.sessionResumption: false` every connection is a full handshake. After a
 * rotation of the client's certificate the kept sessions are dropped, so the next connection is full
 * again and the server sees the new certificate.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  accessLines,
  adminGet,
  type Pair,
  reloadIdentity,
  startSidecarPair,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";

checkLeaksAtEnd();

/** One echo round trip through the pair, then a clean close; resolves when both sidecars logged it. */
async function roundTrip(pair: Pair, n: number): Promise<void> {
  const s = await connect(pair.explicitPort);
  s.write(`ping-${n}`);
  assert.equal((await readBytes(s, `ping-${n}`.length)).toString(), `ping-${n}`);
  s.end();
  await waitForLog(pair.clientLog, () => accessLines(pair.clientLog).length >= n);
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog).length >= n);
}

function handshakes(metrics: string, direction: string, resumed: boolean): number {
  const m = new RegExp(
    `weft_tls_handshake_duration_seconds_count\\{direction="${direction}",resumed="${resumed}"\\} (\\d+)`,
  ).exec(metrics);
  return m ? Number(m[1]) : 0;
}

test("session resumption: one full handshake, then resumed ones; counted and logged on both sides", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { transport: "per-connection", appPort: app.port });
  for (let i = 1; i <= 4; i++) await roundTrip(pair, i);

  const client = (await adminGet(pair.client, "/metrics")).body;
  const server = (await adminGet(pair.server, "/metrics")).body;
  assert.equal(handshakes(client, "outbound", false), 1, "one full handshake");
  assert.equal(handshakes(client, "outbound", true), 3, "then three resumed");
  assert.equal(handshakes(server, "inbound", false), 1);
  assert.equal(handshakes(server, "inbound", true), 3);
  const resumedFlags = accessLines(pair.clientLog).map((r) => r.tls_resumed);
  assert.deepEqual(resumedFlags, [false, true, true, true]);
  // A resumed connection still carries the peer's identity in the record.
  for (const line of accessLines(pair.serverLog)) {
    assert.equal(line.peer_identity, pair.clientIssued.id.toString());
  }

  // Rotating the client's certificate drops the kept sessions: the next handshake is full and shows
  // the new certificate to the server.
  const next = await pair.ca.issue("default/frontend");
  await writeIdentity(pair.clientFiles, next);
  await reloadIdentity(pair.client);
  await roundTrip(pair, 5);
  const after = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(handshakes(after, "outbound", false), 2, "a full handshake after the rotation");
  const last = accessLines(pair.serverLog).at(-1)!;
  assert.equal(last.tls_resumed, false);
  assert.equal(
    String(last.peer_serial).toUpperCase(),
    new X509Certificate(next.certPem).serialNumber.toUpperCase(),
  );
});

test("tls.sessionResumption: false makes every connection a full mutual-TLS handshake", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    transport: "per-connection",
    appPort: app.port,
    clientConfig: { tls: { sessionResumption: false } },
  });
  for (let i = 1; i <= 3; i++) await roundTrip(pair, i);
  const client = (await adminGet(pair.client, "/metrics")).body;
  assert.equal(handshakes(client, "outbound", false), 3);
  assert.equal(handshakes(client, "outbound", true), 0);
  assert.deepEqual(
    accessLines(pair.serverLog).map((r) => r.tls_resumed),
    [false, false, false],
  );
});
