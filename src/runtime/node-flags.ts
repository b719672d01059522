/**
 * V8 flags every `weft proxy` process is started with. They cannot be set from inside the process
 * (`v8.setFlagsFromString` comes too late for heap sizing) nor through NODE_OPTIONS (Node refuses
 * them there), so every launcher passes them on node's command line: bin/weft.js's `#!` line, the
 * Dockerfile's ENTRYPOINT, examples/pod/sidecar.sh, the demo, and bench/peers.ts (a unit test keeps
 * the literal copies equal to this list). `weft proxy` warns (W_NODE_FLAGS) when they are missing.
 *
 * `--initial-old-space-size=128`: the buffers of the data path (socket reads, TLS records, HTTP/2
 * frames) count towards V8's old generation once they survive two scavenges; with V8's default limit
 * for a small heap that set off a full mark-compact every few MiB carried, at about twice the CPU per
 * GiB. With the old generation allowed to start at 128 MiB there are none under bulk load; what it keeps
 * at rest, the idle reclaimer (idle-reclaim.ts) gives back once traffic stops. The measurements (this
 * flag, the second flag it replaced, none): docs/benchmarks.md, "Footprint and start on Node 24, and
 * the node flags".
 */
export const SIDECAR_NODE_FLAGS: readonly string[] = ["--initial-old-space-size=128"];

/** The flags of SIDECAR_NODE_FLAGS that `execArgv` (this process's node flags) lacks. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SIDECAR_NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
