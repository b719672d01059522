/**
 * Time as a dependency. Every timer and timestamp in Weft goes through a `Clock`, so tests drive
 * ejection backoff, renewal schedules and deadlines with a manual clock instead of sleeping.
 */

export interface TimerHandle {
  /** Stops the timer; calling it twice is harmless. */
  cancel(): void;
  /** Restarts the timer with its original delay (idle timers). */
  refresh(): void;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Monotonic milliseconds, for durations. */
  monotonic(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return {
      cancel: () => clearTimeout(t),
      refresh: () => {
        t.refresh();
      },
    };
  },
};

interface ManualTimer {
  due: number;
  delay: number;
  fn: () => void;
  live: boolean;
  seq: number;
}

/** A clock that only moves when told to: `advance(ms)` fires every timer due by then, in order. */
export class ManualClock implements Clock {
  private current: number;
  private seq = 0;
  private timers: ManualTimer[] = [];

  constructor(startMs = 1_700_000_000_000) {
    this.current = startMs;
  }

  now(): number {
    return this.current;
  }

  monotonic(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: ManualTimer = { due: this.current + ms, delay: ms, fn, live: true, seq: this.seq++ };
    this.timers.push(timer);
    return {
      cancel: () => {
        timer.live = false;
      },
      refresh: () => {
        timer.due = this.current + timer.delay;
        timer.live = true;
        if (!this.timers.includes(timer)) this.timers.push(timer);
      },
    };
  }

  advance(ms: number): void {
    const target = this.current + ms;
    for (;;) {
      const next = this.timers
        .filter((t) => t.live && t.due <= target)
        .sort((a, b) => a.due - b.due || a.seq - b.seq)[0];
      if (!next) break;
      this.current = next.due;
      next.live = false;
      this.timers = this.timers.filter((t) => t !== next);
      next.fn();
    }
    this.current = target;
    this.timers = this.timers.filter((t) => t.live);
  }

  pending(): number {
    return this.timers.filter((t) => t.live).length;
  }
}
