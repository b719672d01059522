/**
 * Event-loop lag as a scrape should read it: how late a timer fires, beyond when it was due. prom-client's
 * `nodejs_eventloop_lag_*` come from `monitorEventLoopDelay`, whose samples are the whole interval between
 * its timer's runs, so at the coarse 500 ms resolution that keeps an idle sidecar from waking 100 times a
 * second they read ~0.5 s on an idle sidecar. Here one timer every `intervalMs` records only the excess
 * (due time to run time) and a scrape reports the samples since the previous scrape: 0 on an idle loop,
 * the real stall when something blocks it. Two wakeups a second at the default interval.
 */
import type { Clock, TimerHandle } from "./clock.ts";

/** At most this many samples are kept between two scrapes (the oldest are dropped). */
const MAX_SAMPLES = 1_024;

export interface LagSummary {
  readonly count: number;
  readonly min: number;
  readonly max: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
}

export class EventLoopLag {
  private timer: TimerHandle | undefined;
  private due = 0;
  private samples: number[] = [];
  private last = 0;

  constructor(
    private readonly clock: Clock,
    private readonly intervalMs = 500,
  ) {}

  start(): void {
    this.arm();
  }

  private arm(): void {
    this.due = this.clock.monotonic() + this.intervalMs;
    this.timer = this.clock.setTimeout(() => {
      const lag = Math.max(0, this.clock.monotonic() - this.due);
      this.last = lag;
      if (this.samples.length >= MAX_SAMPLES) this.samples.shift();
      this.samples.push(lag);
      this.arm();
    }, this.intervalMs);
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
  }

  /** The last sample, in ms. */
  get latest(): number {
    return this.last;
  }

  /** The samples since the last call (ms), then forget them; all zero when none came. */
  take(): LagSummary {
    const s = this.samples.sort((a, b) => a - b);
    this.samples = [];
    if (s.length === 0) return { count: 0, min: 0, max: 0, mean: 0, p50: 0, p90: 0, p99: 0 };
    const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
    return {
      count: s.length,
      min: s[0]!,
      max: s.at(-1)!,
      mean: s.reduce((a, b) => a + b, 0) / s.length,
      p50: q(0.5),
      p90: q(0.9),
      p99: q(0.99),
    };
  }
}
