import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { getHeapSpaceStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { ManualClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { IdleReclaimer, idleReclaimerFor, reclaimProcessMemory } from "../../src/runtime/idle-reclaim.ts";

/** A reclaimer on a manual clock whose CPU use per 5 s interval the test sets. */
function harness() {
  const clock = new ManualClock(0);
  let cpu = 0;
  let perInterval = 0;
  const reclaimed: number[] = [];
  const r = new IdleReclaimer({
    clock,
    logger: new MemoryLogger(),
    cpuMicros: () => cpu,
    quietIntervals: 2,
    reclaim: () => {
      reclaimed.push(clock.now());
      return {};
    },
  });
  r.start();
  const run = (intervals: number, cpuMsPerInterval: number) => {
    perInterval = cpuMsPerInterval;
    for (let i = 0; i < intervals; i++) {
      cpu += perInterval * 1000;
      clock.advance(5_000);
    }
  };
  return { r, run, reclaimed };
}

test("idle reclaim: once after start when quiet, once per burst after it, never under load", () => {
  const h = harness();
  h.run(1, 0);
  assert.deepEqual(h.reclaimed, [], "one quiet interval is not enough");
  h.run(1, 0);
  assert.deepEqual(h.reclaimed, [10_000], "startup's garbage, after two quiet intervals");
  h.run(5, 0);
  assert.equal(h.reclaimed.length, 1, "nothing happened since: no second reclaim");
  h.run(10, 2_000); // 40 % of a core: traffic
  assert.equal(h.reclaimed.length, 1, "never while busy");
  h.run(1, 50); // 1 %: quiet
  assert.equal(h.reclaimed.length, 1);
  h.run(1, 50);
  assert.equal(h.reclaimed.length, 2, "once after the burst");
  h.run(4, 0);
  assert.equal(h.reclaimed.length, 2);
  h.r.stop();
  h.run(10, 2_000);
  h.run(10, 0);
  assert.equal(h.reclaimed.length, 2, "stopped: no more");
});

test("reclaimProcessMemory collects and trims: garbage held by nothing is given back", () => {
  let junk: Buffer[] | undefined = Array.from({ length: 64 }, () => Buffer.alloc(512 * 1024, 1));
  const held = process.memoryUsage.rss();
  junk = undefined;
  const r = reclaimProcessMemory();
  assert.equal(junk, undefined);
  assert.ok(typeof r.ms === "number" && typeof r.rss_after_mib === "number");
  assert.ok(
    (r.rss_after_mib as number) * 1048576 < held - 16 * 1048576,
    `32 MiB of garbage: RSS ${held / 1048576} MiB before, ${r.rss_after_mib} after`,
  );
});

test("memory.idleReclaim: light collects plainly, deep asks for the last-resort collection, off runs nothing", () => {
  for (const [mode, expected] of [
    ["light", [false]],
    ["deep", [true]],
    ["off", []],
  ] as const) {
    const clock = new ManualClock(0);
    const asked: boolean[] = [];
    const r = idleReclaimerFor(
      mode,
      { clock, logger: new MemoryLogger(), cpuMicros: () => 0, quietIntervals: 2 },
      (o) => {
        asked.push(o.lastResort === true);
        return {};
      },
    );
    assert.equal(r === undefined, mode === "off");
    r?.start();
    clock.advance(5_000);
    clock.advance(5_000);
    r?.stop();
    assert.deepEqual(asked, expected, mode);
  }
});

test("the light reclaim has V8 give back its young generation's pages, which a plain collection keeps", async (t) => {
  if (process.platform !== "linux") {
    t.skip("the signal is called through the node binary's exported V8 symbols, checked on Linux");
    return;
  }
  const youngMiB = () =>
    getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.physical_space_size / 1048576;
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  // A burst's worth of short-lived objects with a window of survivors grows the young generation.
  let window: unknown[] = [];
  for (let i = 0; i < 3_000_000 && (i % 10_000 !== 0 || youngMiB() < 32); i++) {
    window.push({ i, b: Buffer.allocUnsafe(64), pair: [i, i] });
    if (window.length > 20_000) window = [];
  }
  window = [];
  assert.ok(youngMiB() >= 16, `the young generation grew (${youngMiB()} MiB)`);
  gc();
  assert.ok(youngMiB() >= 16, `a plain full collection keeps it (${youngMiB()} MiB)`);
  const done = reclaimProcessMemory();
  assert.equal(done.v8_pressure, "requested", "the pressure signal is available on this platform");
  // An idle process: no allocation, so nothing but the reclaim's signal shrinks the young generation
  // (polling here would allocate, and V8 shrinks a young generation that sees little allocation by
  // itself, as its memory reducer does about 8 s after a collection). One look after 5 s of quiet.
  await sleep(5_000);
  assert.ok(youngMiB() <= 4, `V8 gave the young generation back (${youngMiB()} MiB)`);
  // The deep reclaim's last-resort collection empties the pool itself; it sends no signal.
  assert.equal(reclaimProcessMemory({ lastResort: true }).v8_pressure, "skipped");
});
