/**
 * Gives memory back when the sidecar goes quiet. Under traffic the sidecar keeps what it has on purpose:
 * V8 does not collect the old generation until it reaches --initial-old-space-size (node-flags.ts) and
 * glibc keeps freed memory mapped (malloc-tuning.ts), because collecting and faulting pages in again
 * cost CPU per byte. Once traffic stops, that memory only inflates the RSS an operator sees: startup's
 * garbage (config parsing, module evaluation) at rest, and the buffers of a burst after it.
 *
 * So: every `intervalMs` (5 s) the reclaimer looks at the process's CPU time. When it used less than
 * `idleCpuShare` (2 %) of one core in each of the last `quietIntervals` (4) intervals, and something
 * happened since the last reclaim (startup counts), it runs one full V8 garbage collection and glibc's
 * malloc_trim(0), which returns free pages of every arena to the kernel. So a sidecar pays one GC and
 * one trim per burst of traffic followed by 20 s of quiet, never one under load; the pause (tens of
 * milliseconds) falls in a moment with no traffic. The price is the next burst's first pages: they are
 * faulted in again (docs/benchmarks.md), which is why the quiet period is 20 s and not shorter.
 */

import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { noop } from "../core/noop.ts";
import { loadKoffiLibc } from "./libc.ts";
import { v8PressureSignal } from "./v8-pressure.ts";

export interface IdleReclaimOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  /** This process's CPU time so far, in microseconds (user + system). */
  readonly cpuMicros?: () => number;
  /** Gives memory back; returns what it did, for the debug log. */
  readonly reclaim?: () => Record<string, unknown>;
  readonly intervalMs?: number;
  /** Consecutive quiet intervals before a reclaim. */
  readonly quietIntervals?: number;
  /** Below this share of one core (0..1) an interval counts as quiet. */
  readonly idleCpuShare?: number;
}

export const IDLE_RECLAIM_DEFAULTS = { intervalMs: 5_000, quietIntervals: 4, idleCpuShare: 0.02 } as const;

/** weft.yaml's `memory.idleReclaim` (schema.ts says what each costs and gives). */
export const IDLE_RECLAIM_MODES = ["light", "deep", "off"] as const;
export type IdleReclaimMode = (typeof IDLE_RECLAIM_MODES)[number];

/**
 * The reclaimer a `memory.idleReclaim` mode asks for (not started), or none for `off`: `light` runs
 * `reclaim()`, `deep` runs `reclaim({ lastResort: true })`.
 */
export function idleReclaimerFor(
  mode: IdleReclaimMode,
  options: Omit<IdleReclaimOptions, "reclaim">,
  reclaim: (o: { lastResort?: boolean }) => Record<string, unknown> = reclaimProcessMemory,
): IdleReclaimer | undefined {
  if (mode === "off") return undefined;
  const lastResort = mode === "deep";
  return new IdleReclaimer({ ...options, reclaim: () => ({ mode, ...reclaim({ lastResort }) }) });
}

export class IdleReclaimer {
  private timer: TimerHandle | undefined;
  private lastCpu = 0;
  private quiet = 0;
  /** Busy since the last reclaim (true at start: startup's garbage). */
  private dirty = true;
  private stopped = false;
  reclaims = 0;

  constructor(private readonly o: IdleReclaimOptions) {}

  start(): void {
    this.lastCpu = this.cpu();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }

  private cpu(): number {
    if (this.o.cpuMicros) return this.o.cpuMicros();
    const u = process.cpuUsage();
    return u.user + u.system;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.o.clock.setTimeout(
      () => this.check(),
      this.o.intervalMs ?? IDLE_RECLAIM_DEFAULTS.intervalMs,
    );
  }

  private check(): void {
    const interval = this.o.intervalMs ?? IDLE_RECLAIM_DEFAULTS.intervalMs;
    const now = this.cpu();
    const used = now - this.lastCpu;
    const quiet = used < interval * 1000 * (this.o.idleCpuShare ?? IDLE_RECLAIM_DEFAULTS.idleCpuShare);
    if (quiet) this.quiet += 1;
    else {
      this.quiet = 0;
      this.dirty = true;
    }
    if (this.dirty && this.quiet >= (this.o.quietIntervals ?? IDLE_RECLAIM_DEFAULTS.quietIntervals)) {
      this.dirty = false;
      this.reclaims += 1;
      try {
        const done = (this.o.reclaim ?? reclaimProcessMemory)();
        this.o.logger.debug({ ...done, reclaims: this.reclaims }, "idle: memory given back");
      } catch (err) {
        this.o.logger.debug({ err: errorMessage(err) }, "idle: reclaim failed");
      }
    }
    // The reclaim's own CPU is not traffic.
    this.lastCpu = this.cpu();
    this.schedule();
  }
}

let gcFunction: ((options?: Record<string, string>) => void) | undefined;
let mallocTrim: ((pad: number) => number) | null | undefined;

/**
 * One full V8 collection and glibc's malloc_trim(0); RSS before and after, in MiB. `lastResort`: V8's
 * last-resort collection, which also gives the emptied pages of its heap back (as under memory
 * pressure); the tunnel's per-peer limits ask for it after a hostile burst (tunnel/peer-limits.ts), where
 * a plain full GC left the committed old space, 9-17 MiB above the baseline.
 */
export function reclaimProcessMemory(options: { lastResort?: boolean } = {}): Record<string, unknown> {
  const before = process.memoryUsage.rss();
  const t0 = performance.now();
  if (!gcFunction) {
    // `gc` is not exposed without --expose-gc on node's command line; a context created after setting the
    // flag gets it (the function collects the whole isolate, not only that context).
    setFlagsFromString("--expose-gc");
    gcFunction = runInNewContext("gc") as (options?: Record<string, string>) => void;
  }
  if (options.lastResort) gcFunction({ type: "major", execution: "sync", flavor: "last-resort" });
  else gcFunction();
  if (mallocTrim === undefined) {
    try {
      mallocTrim =
        process.platform === "linux"
          ? (loadKoffiLibc().lib.func("int malloc_trim(size_t)") as (pad: number) => number)
          : null;
    } catch {
      mallocTrim = null;
    }
  }
  mallocTrim?.(0);
  // The plain collection keeps V8's page pool; the pressure signal has V8 give it back (v8-pressure.ts).
  const pressure = options.lastResort ? null : v8PressureSignal();
  void pressure?.().catch(noop);
  const mib = (n: number) => Math.round((n / 1048576) * 10) / 10;
  return {
    rss_before_mib: mib(before),
    rss_after_mib: mib(process.memoryUsage.rss()),
    ms: Math.round(performance.now() - t0),
    malloc_trim: mallocTrim ? "yes" : "unavailable",
    // The signal is queued here; V8 collects a moment later on this thread.
    v8_pressure: options.lastResort ? "skipped" : pressure ? "requested" : "unavailable",
  };
}
