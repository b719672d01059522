/**
 * V8 flags every `weft proxy` process is started with. They cannot be set from inside the process
 * (`v8.setFlagsFromString` comes too late for heap sizing) nor through NODE_OPTIONS (Node refuses
 * them there), so every launcher passes them on node's command line: bin/weft.js's `#!` line, the
 * Dockerfile's ENTRYPOINT, examples/pod/sidecar.sh, the demo, and bench/peers.ts (a unit test keeps
 * the literal copies equal to this list). `weft proxy` warns (W_NODE_FLAGS) when they are missing.
 *
 * `--initial-old-space-size=128`: the buffers of the data path (socket reads, TLS records, HTTP/2
 * frames) count towards V8's old generation once they survive two scavenges, and with V8's default
 * limit for a small heap (about 8 MiB above the ~18 MiB a sidecar holds) that set off a full
 * mark-compact every few MiB: 70–80 per GiB carried in the benchmark, at about twice the CPU per GiB
 * (docs/benchmarks.md). With the old generation allowed to start at 128 MiB: none per GiB, and the
 * sidecar's peak RSS under bulk load rose by ~16 MiB.
 *
 * Re-measured on Node 24 (2026-12-06, quick bench, pooled pair against HAProxy in the same run, one
 * round each, docs/benchmarks.md "Node flags on Node 24"): with this flag alone, 5480 ms of CPU per GiB
 * (1.78× HAProxy's) and no full collection per GiB; with `--min-semi-space-size=8` added (the second
 * default until then, for the p99 on Node 20), 7880 ms (2.43×), 20 full collections per GiB (a larger
 * young generation promotes more) and 172 MiB RSS after the traffic instead of 124; with no flag,
 * 14560 ms (3.83×) and 132 full collections per GiB. The one-connection p99 stayed within the ≤ 2×
 * target either way. So the default is this one flag; what it keeps at rest, the idle reclaimer
 * (idle-reclaim.ts) gives back once traffic stops.
 */
export const SIDECAR_NODE_FLAGS: readonly string[] = ["--initial-old-space-size=128"];

/** The flags of SIDECAR_NODE_FLAGS that `execArgv` (this process's node flags) lacks. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SIDECAR_NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
