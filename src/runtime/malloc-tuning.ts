/**
 * glibc malloc settings for the sidecar process. A proxy allocates and frees buffers of 16 to 256 KiB at
 * a high rate. With glibc's defaults, freed memory at the top of the heap goes back to the kernel and
 * large buffers get pages of their own, so the next allocations fault those pages in again, which is
 * dear on a virtual machine (figures: docs/benchmarks.md, "What limits Weft", page faults). So the
 * sidecar keeps freed memory for reuse:
 *
 * - M_MMAP_THRESHOLD 4 MiB: buffers of the data path come from the heap, not from mmap (this also
 *   turns off glibc's sliding threshold);
 * - M_TRIM_THRESHOLD 64 MiB: up to that much free memory at the top of the heap stays mapped;
 * - M_TOP_PAD 16 MiB: the heap grows in steps of at least that much.
 *
 * The cost is RSS that does not shrink after a burst (at most the trim threshold per arena). An operator
 * who sets any `glibc.malloc.*` tunable in GLIBC_TUNABLES keeps glibc's behaviour as configured; nothing
 * is changed off Linux, with another C library (musl), or without koffi.
 */
import { loadKoffiLibc } from "./libc.ts";

const M_TRIM_THRESHOLD = -1;
const M_TOP_PAD = -2;
const M_MMAP_THRESHOLD = -3;

export const MALLOC_SETTINGS = {
  mmapThreshold: 4 << 20,
  trimThreshold: 64 << 20,
  topPad: 16 << 20,
} as const;

export type MallocTuning =
  | { readonly applied: true; readonly settings: typeof MALLOC_SETTINGS }
  | { readonly applied: false; readonly reason: string };

type Mallopt = (param: number, value: number) => number;

/** Where the decision comes from; tests pass their own. */
export interface MallocEnv {
  readonly platform: NodeJS.Platform;
  readonly glibcVersion: string | undefined;
  readonly glibcTunables: string | undefined;
  /** libc's mallopt; called only when every other check passed. */
  readonly mallopt: () => Mallopt;
}

export function processMallocEnv(): MallocEnv {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)
    ?.header;
  return {
    platform: process.platform,
    glibcVersion: header?.glibcVersionRuntime,
    glibcTunables: process.env.GLIBC_TUNABLES,
    mallopt: () => loadKoffiLibc().lib.func("int mallopt(int, int)") as Mallopt,
  };
}

/** Applies MALLOC_SETTINGS to this process where that is safe and wanted (see above). */
export function tuneMalloc(env: MallocEnv = processMallocEnv()): MallocTuning {
  if (env.platform !== "linux") return { applied: false, reason: `not Linux (${env.platform})` };
  if (!env.glibcVersion) return { applied: false, reason: "not glibc" };
  if (env.glibcTunables?.includes("glibc.malloc.")) {
    return { applied: false, reason: "GLIBC_TUNABLES sets glibc.malloc tunables" };
  }
  let mallopt: Mallopt;
  try {
    mallopt = env.mallopt();
  } catch (err) {
    return { applied: false, reason: `mallopt unavailable: ${(err as Error).message}` };
  }
  const pairs: Array<[number, number, string]> = [
    [M_MMAP_THRESHOLD, MALLOC_SETTINGS.mmapThreshold, "M_MMAP_THRESHOLD"],
    [M_TRIM_THRESHOLD, MALLOC_SETTINGS.trimThreshold, "M_TRIM_THRESHOLD"],
    [M_TOP_PAD, MALLOC_SETTINGS.topPad, "M_TOP_PAD"],
  ];
  for (const [param, value, name] of pairs) {
    // mallopt returns 1 on success, 0 on error.
    if (mallopt(param, value) !== 1) return { applied: false, reason: `mallopt(${name}, ${value}) failed` };
  }
  return { applied: true, settings: MALLOC_SETTINGS };
}
