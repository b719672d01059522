/**
 * Bounded polling for tests: the one way a test waits for something another process or the event loop
 * will make true. Fails with what was awaited and for how long, never loops forever.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";

export interface EventuallyOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
  /** Check again after this long (default 20 ms). */
  intervalMs?: number;
}

/** Resolves once `check()` is true; fails the test with `what` after `timeoutMs`. */
export async function eventually(
  what: string | (() => string),
  check: () => boolean | Promise<boolean>,
  options: EventuallyOptions = {},
): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= deadline)
      assert.fail(`not within ${timeoutMs} ms: ${typeof what === "string" ? what : what()}`);
    await sleep(intervalMs);
  }
}
