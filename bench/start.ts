/**
 * `npm run bench:start [-- --rounds=N] [-- --settle=S] [-- --baseline=<checkout>]`: the start and
 * footprint of one sidecar, without the pair and the apps of `npm run bench`. Each round spawns one
 * `weft proxy` (bin/weft.js with the sidecar node flags; file identity, inbound and outbound capture off,
 * one tunnel listener, the admin and metrics listeners on loopback) per build, one after another, and records
 *   - ready: spawn until its admin port's /ready answers 200 (polled every 5 ms),
 *   - CPU to ready: the child's user + system CPU time at that moment (/proc/<pid>/stat): on a shared
 *     machine this moves much less with the load than the wall-clock time does,
 *   - RSS at rest: VmRSS once every sidecar has been up and quiet for S seconds (default 30, so that the
 *     idle reclaim has run, as in the bench's "RSS at rest").
 * All sidecars stay up until the RSS reading, so the rounds of the builds interleave. Medians printed.
 * `--baseline=<checkout>` adds the Weft of another checkout (built) as a second build.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { freePort } from "../src/core/ports.ts";
import { SIDECAR_NODE_FLAGS } from "../src/runtime/node-flags.ts";
import { PEER_CERT_FILES, writePeerCerts } from "./peers.ts";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const ROUNDS = Math.max(1, Number(arg("rounds") ?? 4));
const SETTLE_SECONDS = Number(arg("settle") ?? 30);
const BASELINE = arg("baseline");

interface Sample {
  readyMs: number;
  cpuMs: number;
  proc: ChildProcess;
}

function status(pid: number, key: string): number {
  const m = new RegExp(`${key}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}

/** User + system CPU time of `pid` so far, ms (clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function startOne(work: string, root: string): Promise<Sample> {
  const [admin, metrics, tunnel] = [await freePort(), await freePort(), await freePort()];
  const f = (k: keyof typeof PEER_CERT_FILES) => join(work, PEER_CERT_FILES[k]);
  const config = join(work, `weft-${admin}.yaml`);
  writeFileSync(
    config,
    [
      "trustDomain: bench.local",
      "identity:",
      `  files: { cert: ${f("serverChain")}, key: ${f("serverKey")}, bundle: ${f("bundle")} }`,
      "log: { level: warn, accessLog: false }",
      "listeners:",
      "  outbound: { enabled: false }",
      "  inbound: { enabled: false }",
      `  tunnel: { address: 127.0.0.1, port: ${tunnel} }`,
      `  admin: { address: 127.0.0.1, port: ${admin} }`,
      `  metrics: { address: 127.0.0.1, port: ${metrics} }`,
      "",
    ].join("\n"),
  );
  const t0 = performance.now();
  const proc = spawn(
    process.execPath,
    [...SIDECAR_NODE_FLAGS, join(root, "bin/weft.js"), "proxy", "--config", config],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${admin}/ready`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) break;
    if (proc.exitCode !== null || performance.now() - t0 > 20_000) {
      proc.kill("SIGKILL");
      throw new Error(`bench:start: the sidecar of ${root} was not ready within 20 s`);
    }
    await sleep(5);
  }
  return { readyMs: performance.now() - t0, cpuMs: cpuMs(proc.pid!), proc };
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), "weft-bench-start-"));
  const builds = [
    { name: "Weft", root: ROOT },
    ...(BASELINE ? [{ name: "Weft (baseline)", root: resolve(BASELINE) }] : []),
  ];
  const samples = new Map<string, Sample[]>(builds.map((b) => [b.name, []]));
  try {
    await writePeerCerts(work);
    for (let round = 0; round < ROUNDS; round++) {
      for (const b of builds) {
        samples.get(b.name)!.push(await startOne(work, b.root));
        await sleep(300);
      }
    }
    await sleep(SETTLE_SECONDS * 1000);
    console.log(`| build | ready (ms) | CPU to ready (ms) | RSS after ${SETTLE_SECONDS} s at rest (MiB) |`);
    console.log("|---|---|---|---|");
    for (const b of builds) {
      const s = samples.get(b.name)!;
      const rss = s.map((x) => status(x.proc.pid!, "VmRSS") / 1024);
      const cell = (v: number[], digits: number) =>
        `${median(v).toFixed(digits)} (${v.map((x) => x.toFixed(digits)).join(", ")})`;
      console.log(
        `| ${b.name} | ${cell(
          s.map((x) => x.readyMs),
          0,
        )} | ${cell(
          s.map((x) => x.cpuMs),
          0,
        )} | ${cell(rss, 1)} |`,
      );
    }
  } finally {
    for (const s of [...samples.values()].flat()) s.proc.kill("SIGTERM");
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench:start: ${(err as Error).stack}`);
  process.exit(1);
});
