/**
 * A slow reader must never make a proxy buffer without bound: a fast writer pushes 1 GiB through the
 * sidecar pair to an app that reads in short bursts with long pauses. Both sidecars' buffered bytes
 * (socket read and write queues of every live connection) are sampled throughout; the transfer ends
 * byte-exact.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, slowRead, startApp, writePattern } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { startSidecarPair, TRANSPORTS } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const TOTAL = 1024 * 1024 * 1024;
/** What both sidecars together may hold for one connection: a few socket high-water marks and TLS records. */
const BOUND = 8 * 1024 * 1024;

for (const transport of TRANSPORTS) {
  test(`${transport}: a slow reader: proxy buffers stay bounded while a fast writer pushes 1 GiB, and the bytes arrive intact`, async (t) => {
    let received: Promise<{ sha256: string; bytes: number }> | undefined;
    const app = await startApp((s) => {
      // Reads 4 MiB, pauses 20 ms, ...: much slower than the writer, so backpressure must hold it.
      received = slowRead(s, { burst: 4 * 1024 * 1024, pauseMs: 20 });
    });
    t.after(() => app.close());
    const pair = await startSidecarPair(t, { transport, appPort: app.port });
    const client = await connect(pair.explicitPort);

    let peak = 0;
    let samples = 0;
    const buffered = () =>
      [...pair.client.tracker.list(), ...pair.server.tracker.list()].reduce(
        (n, r) => n + (r.buffered?.() ?? 0),
        0,
      );
    const sampler = setInterval(() => {
      samples++;
      peak = Math.max(peak, buffered());
    }, 5);
    t.after(() => clearInterval(sampler));

    const sent = await writePattern(client, TOTAL, {
      onProgress: (w) => {
        if (w % (16 * 1024 * 1024) === 0) peak = Math.max(peak, buffered());
      },
    });
    const got = await received!;
    clearInterval(sampler);
    client.destroy();
    assert.equal(got.bytes, TOTAL);
    assert.equal(got.sha256, sent, "byte-exact");
    assert.ok(samples > 10, `sampled ${samples} times`);
    assert.ok(peak > 0, "the sampler saw bytes in flight (it measures something)");
    assert.ok(peak <= BOUND, `peak buffered ${peak} bytes exceeds ${BOUND}`);
  });
}
