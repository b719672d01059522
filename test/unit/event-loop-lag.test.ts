/**
 * Event-loop lag is how late a timer ran beyond its due time: an idle loop reads 0 (not the sampling
 * interval, the artifact of prom-client's coarse monitorEventLoopDelay), a stall reads the stall, and a
 * scrape summarises the samples since the previous one. WeftMetrics exports it under the standard names.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Clock, TimerHandle } from "../../src/core/clock.ts";
import { EventLoopLag } from "../../src/core/event-loop-lag.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";

/** A clock whose single pending timer runs when told, `lateMs` after it was due. */
class StepClock implements Clock {
  t = 0;
  private pending: { due: number; fn: () => void } | undefined;
  now(): number {
    return this.t;
  }
  monotonic(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const entry = { due: this.t + ms, fn };
    this.pending = entry;
    return {
      cancel: () => {
        if (this.pending === entry) this.pending = undefined;
      },
      refresh: () => {},
    };
  }
  fire(lateMs: number): void {
    const p = this.pending!;
    this.pending = undefined;
    this.t = p.due + lateMs;
    p.fn();
  }
}

test("an idle loop reads 0 lag, a 120 ms stall reads 120 ms; a scrape takes the samples since the last", () => {
  const clock = new StepClock();
  const lag = new EventLoopLag(clock, 500);
  lag.start();
  for (let i = 0; i < 9; i++) clock.fire(0);
  clock.fire(120);
  const s = lag.take();
  assert.equal(s.count, 10);
  assert.equal(s.min, 0);
  assert.equal(s.p50, 0);
  assert.equal(s.max, 120);
  assert.equal(s.p99, 120);
  assert.equal(s.mean, 12);
  assert.equal(lag.latest, 120);
  assert.equal(lag.take().count, 0, "taken samples are gone");
  lag.stop();
});

test("process and Node.js metrics under the standard names; the lag gauges read the sampler", async () => {
  const clock = new StepClock();
  const m = new WeftMetrics({ processMetrics: true, clock });
  clock.fire(0);
  clock.fire(40);
  const text = await m.render();
  for (const name of [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "nodejs_heap_size_used_bytes",
  ]) {
    assert.match(text, new RegExp(`^${name} `, "m"), name);
  }
  assert.doesNotMatch(text, /weft_process_/, "no doubled prefix");
  assert.match(text, /^nodejs_eventloop_lag_seconds 0\.04$/m);
  assert.match(text, /^nodejs_eventloop_lag_max_seconds 0\.04$/m);
  assert.match(text, /^nodejs_eventloop_lag_min_seconds 0$/m);
  assert.match(text, /^nodejs_eventloop_lag_p99_seconds 0\.04$/m);
  assert.doesNotMatch(text, /nodejs_eventloop_lag_stddev/, "prom-client's own lag series are replaced");
  const again = await m.render();
  assert.match(
    again,
    /^nodejs_eventloop_lag_max_seconds 0$/m,
    "a scrape summarises only what came since the last",
  );
  m.close();
});
