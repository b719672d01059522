import assert from "node:assert/strict";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { OutlierDetector, type OutlierSettings } from "../../src/discovery/outlier.ts";

const settings: OutlierSettings = {
  enabled: true,
  consecutiveFailures: 5,
  baseEjectionTime: 30_000,
  maxEjectionTime: 300_000,
  maxEjectionPercent: 10,
};

function setup(keys = ["a", "b", "c"], s: Partial<OutlierSettings> = {}) {
  const clock = new ManualClock(0);
  const events: string[] = [];
  const d = new OutlierDetector({ ...settings, ...s }, clock, {
    onEject: (k, until, times) => events.push(`eject ${k} until ${until} x${times}`),
    onReturn: (k, via) => events.push(via === "ejection_time" ? `return ${k}` : `return ${k} via ${via}`),
  });
  d.sync(keys);
  return { clock, d, events };
}

const fail = (d: OutlierDetector, k: string, n: number) => {
  for (let i = 0; i < n; i++) d.failure(k);
};

test("ejects after N consecutive failures, not before", () => {
  const { d, events } = setup();
  fail(d, "a", 4);
  assert.ok(d.isAvailable("a"));
  assert.equal(d.state("a").consecutiveFailures, 4);
  d.failure("a");
  assert.ok(!d.isAvailable("a"));
  assert.deepEqual(events, ["eject a until 30000 x1"]);
});

test("a success resets the consecutive count", () => {
  const { d } = setup();
  fail(d, "a", 4);
  d.success("a");
  fail(d, "a", 4);
  assert.ok(d.isAvailable("a"));
});

test("ejection time grows with times ejected and is capped; probation re-ejects on one failure", () => {
  const { d, clock, events } = setup(["a", "b"], { maxEjectionTime: 70_000 });
  fail(d, "a", 5);
  clock.advance(30_000);
  assert.equal(d.state("a").state, "probation");
  d.failure("a");
  assert.equal(d.state("a").state, "ejected", "one failure on probation re-ejects");
  assert.equal(d.state("a").ejectedUntil, 30_000 + 60_000, "second ejection: 2 × base");
  clock.advance(60_000);
  d.failure("a");
  assert.equal(d.state("a").ejectedUntil, 90_000 + 70_000, "third: 3 × base capped at max");
  assert.deepEqual(
    events.filter((e) => e.startsWith("return")),
    ["return a", "return a"],
  );
});

test("probation: a success returns the endpoint to healthy; the multiplier decays while healthy", () => {
  const { d, clock } = setup(["a", "b"]);
  fail(d, "a", 5);
  clock.advance(30_000);
  d.success("a");
  assert.equal(d.state("a").state, "healthy");
  assert.equal(d.state("a").timesEjected, 1);
  clock.advance(30_000);
  d.success("a");
  assert.equal(d.state("a").timesEjected, 0, "one base period healthy takes one off");
  fail(d, "a", 5);
  assert.equal(d.state("a").ejectedUntil, 60_000 + 30_000, "back to one base period");
});

test("max-ejection-percent caps ejections but always allows one", () => {
  const { d } = setup(["a", "b", "c"]);
  fail(d, "a", 5);
  fail(d, "b", 5);
  assert.ok(!d.isAvailable("a"), "10 % of 3 rounds to 0, yet one may be ejected");
  assert.ok(d.isAvailable("b"), "a second is not ejected at 10 %");
  const half = setup(["a", "b", "c", "d"], { maxEjectionPercent: 50 });
  fail(half.d, "a", 5);
  fail(half.d, "b", 5);
  fail(half.d, "c", 5);
  assert.equal(half.d.ejectedCount(), 2);
});

test("disabled detection never ejects; health-check verdicts make endpoints unavailable", () => {
  const { d } = setup(["a"], { enabled: false });
  fail(d, "a", 50);
  assert.ok(d.isAvailable("a"));
  d.setUnhealthy("a", true);
  assert.ok(!d.isAvailable("a"));
  assert.equal(d.state("a").state, "unhealthy");
  d.setUnhealthy("a", false);
  assert.ok(d.isAvailable("a"));
});

test("sync keeps state for endpoints that stay and forgets removed ones", () => {
  const { d } = setup(["a", "b"]);
  fail(d, "a", 5);
  d.sync(["a", "c"]);
  assert.ok(!d.isAvailable("a"), "a stays ejected across an update");
  assert.ok(d.isAvailable("c"));
  assert.ok(!d.isAvailable("b"), "b is gone");
});

test("a passing active health check ends an ejection at once (probation), unless turned off", () => {
  const { d, clock, events } = setup(["a", "b"]);
  fail(d, "a", 5);
  assert.ok(!d.isAvailable("a"));
  clock.advance(1_000);
  d.activeCheckPassed("a");
  assert.ok(d.isAvailable("a"), "back long before its 30 s ejection time");
  assert.equal(d.state("a").state, "probation");
  assert.deepEqual(events, ["eject a until 30000 x1", "return a via health_check"]);
  // The ejection timer was cancelled: nothing more happens when its time would have ended.
  clock.advance(60_000);
  assert.equal(events.length, 2);
  // On probation one failure ejects it again, for twice as long.
  d.failure("a");
  assert.equal(events.at(-1), "eject a until 121000 x2");
  // A passing check on an endpoint that is not ejected changes nothing.
  d.activeCheckPassed("b");
  assert.equal(d.state("b").state, "healthy");

  const off = setup(["a", "b"], { successfulActiveHealthCheckUnejectHost: false });
  fail(off.d, "a", 5);
  off.d.activeCheckPassed("a");
  assert.ok(!off.d.isAvailable("a"), "stays ejected for its time");
  off.clock.advance(30_000);
  assert.deepEqual(off.events, ["eject a until 30000 x1", "return a"]);
});
