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
 * `--min-semi-space-size=8`: when a sidecar idles, V8 shrinks its young generation to 1 MiB, and then a
 * pooled sidecar carrying requests scavenges every few hundred round trips; each scavenge delays the
 * round trip in flight, about 1 % of them, which is the p99. With young-generation halves of at least
 * 8 MiB: pooled one-connection p99 526 → 204 µs (median of 3 rounds, one quick bench; HAProxy 284 and
 * 179 in the same runs), for ~8–16 MiB more RSS.
 */
export const SIDECAR_NODE_FLAGS: readonly string[] = [
  "--initial-old-space-size=128",
  "--min-semi-space-size=8",
];

/** The flags of SIDECAR_NODE_FLAGS that `execArgv` (this process's node flags) lacks. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SIDECAR_NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
