import assert from "node:assert/strict";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { isRoutineSocketError, isWeftError, WeftError } from "../../src/core/errors.ts";

test("manual clock fires timers in due order and only when advanced past them", () => {
  const clock = new ManualClock(0);
  const fired: string[] = [];
  clock.setTimeout(() => fired.push("b"), 20);
  clock.setTimeout(() => fired.push("a"), 10);
  const c = clock.setTimeout(() => fired.push("c"), 30);
  c.cancel();
  clock.advance(15);
  assert.deepEqual(fired, ["a"]);
  clock.advance(100);
  assert.deepEqual(fired, ["a", "b"]);
  assert.equal(clock.now(), 115);
  assert.equal(clock.pending(), 0);
});

test("refresh restarts a timer from the current time", () => {
  const clock = new ManualClock(0);
  let fired = 0;
  const t = clock.setTimeout(() => fired++, 10);
  clock.advance(8);
  t.refresh();
  clock.advance(8);
  assert.equal(fired, 0);
  clock.advance(2);
  assert.equal(fired, 1);
});

test("WeftError carries code, reason and a CODE: message line", () => {
  const err = new WeftError("E_POLICY_DENIED", "spiffe://a/ns/x/sa/y may not reach backend:8080");
  assert.equal(err.code, "E_POLICY_DENIED");
  assert.equal(err.reason, "policy_denied");
  assert.match(err.message, /^E_POLICY_DENIED: spiffe/);
  assert.ok(isWeftError(err, "E_POLICY_DENIED"));
  assert.ok(!isWeftError(err, "E_CONFIG"));
  assert.ok(isRoutineSocketError(Object.assign(new Error("x"), { code: "ECONNRESET" })));
  assert.ok(!isRoutineSocketError(new Error("x")));
});
