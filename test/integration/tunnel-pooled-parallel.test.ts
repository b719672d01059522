/**
 * Many transfers at once over one pooled tunnel session, one of them stalled by its app: the other
 * streams must run to completion byte-exact while it stalls (its flow-control window holds its own
 * sender back, not the session), and the stalled one must complete byte-exact once its app reads again.
 * Larger HTTP/2 windows once stalled parallel transfers for good (shared/performance-notes.md); this is
 * the test that catches such a stall, with a progress watchdog instead of a timed assertion.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { connect, hashUntilEnd, startApp, writePattern } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { adminGet, startSidecarPair } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const PARALLEL = 8;
const EACH = 32 * 1024 * 1024;
/** More than every buffer on the way can hold (socket buffers, splice limits, the stream's window). */
const STALLED_BYTES = 64 * 1024 * 1024;
/** No byte moved anywhere for this long means a stall (the whole run normally takes seconds). */
const WATCHDOG_MS = 30_000;

test("pooled: eight parallel 32 MiB echoes over one session finish byte-exact while a ninth stream's app stalls; then it finishes too", async (t) => {
  let progress = 0;
  let stalledApp: Socket | undefined;
  let stalledReceived: Promise<{ sha256: string; bytes: number }> | undefined;
  const app = await startApp((s) => {
    if (!stalledApp) {
      // The first connection is the stalled one: its app reads nothing until told to.
      stalledApp = s;
      s.pause();
      stalledReceived = hashUntilEnd(s); // a paused socket stays paused when a 'data' listener is added
      return;
    }
    s.on("data", (d: Buffer) => {
      progress += d.length;
    });
    s.pipe(s);
  });
  t.after(() => app.close());
  const pair = await startSidecarPair(t, { transport: "pooled", appPort: app.port });

  // Fails the test if no byte moves for WATCHDOG_MS; cleared when the phase is done.
  const watchdog = <T>(what: string, p: Promise<T>): Promise<T> => {
    let last = -1;
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setInterval(() => {
        if (progress === last) reject(new Error(`${what}: no progress for ${WATCHDOG_MS} ms (stalled)`));
        last = progress;
      }, WATCHDOG_MS);
    });
    return Promise.race([p, stalled]).finally(() => clearInterval(timer));
  };

  // On failure (a stall) every socket is destroyed, so the sidecars' stop does not wait on them.
  const clients: Socket[] = [];
  t.after(() => {
    for (const c of clients) c.destroy();
  });
  const stalledClient = await connect(pair.explicitPort);
  clients.push(stalledClient);
  let stalledWritten = false;
  const stalledSent = writePattern(stalledClient, STALLED_BYTES).finally(() => {
    stalledWritten = true;
  });
  await app.nextConnection();

  const transfers = Array.from({ length: PARALLEL }, async () => {
    const c = await connect(pair.explicitPort);
    clients.push(c);
    const back = hashUntilEnd(c);
    c.on("data", (d: Buffer) => {
      progress += d.length;
    });
    const sent = await writePattern(c, EACH);
    return { sent, back: await back };
  });
  const results = await watchdog("parallel echoes", Promise.all(transfers));
  for (const [i, r] of results.entries()) {
    assert.equal(r.back.bytes, EACH, `transfer ${i}: every byte came back`);
    assert.equal(r.back.sha256, r.sent, `transfer ${i}: byte-exact`);
  }
  assert.equal(stalledWritten, false, "the stalled stream's writer is still held back by backpressure");

  stalledApp!.on("data", (d: Buffer) => {
    progress += d.length;
  });
  stalledApp!.resume();
  const [sentHash, got] = await watchdog("stalled stream", Promise.all([stalledSent, stalledReceived!]));
  assert.equal(got.bytes, STALLED_BYTES, "the stalled stream delivered every byte once its app read");
  assert.equal(got.sha256, sentHash, "and byte-exact");

  const metrics = (await adminGet(pair.client, "/metrics")).body;
  assert.match(
    metrics,
    /weft_upstream_pooled_sessions_opened_total 1\b/,
    "all nine streams shared one session",
  );
});
