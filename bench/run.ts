/**
 * `npm run bench [-- --quick] [-- --rounds=N] [-- --only=throughput,latency,connections,memory]
 * [-- --contenders=pooled,per-connection,haproxy,stunnel]`: Weft against direct TCP and the mutual-TLS
 * pairs of HAProxy and stunnel (bench/peers.ts), on loopback, in one run. Every contender is a proxy pair
 * in front of the same apps (an echo server and a byte sink in this process, a sockperf server); each
 * proxy is its own process. It measures, interleaved over N rounds (medians):
 *   - bulk throughput over one connection, and the CPU both proxies spend per GiB of it,
 *   - request latency p50/p99 on persistent connections (64-byte ping-pong, sockperf when installed):
 *     one connection alone (the latency a proxy adds to a request, and the CPU both proxies spend per
 *     round trip), and four at once (on 2 cores that saturates the CPU, so it also shows each proxy's
 *     CPU cost per message as queueing),
 *   - new connections per second, each a full mTLS handshake, and again with session resumption,
 *   - time to the first byte of a reply on a new connection (connect, write one byte, read the echo;
 *     one connection after another, p50 and p99): what the peer's answer step (it accepts only after its
 *     app did) costs a client, if anything,
 *   - proxy memory per idle proxied connection (RSS of both proxy processes, before and after), once,
 *     after the rounds, followed by throughput and 1-connection p99 again ("after the memory test"),
 *   - the footprint (with the memory measurement): time to ready, RSS at rest, and RSS after a last
 *     1 GiB of bulk and 1,000 idle connections closed, each proxy quiet for BENCH_SETTLE_SECONDS.
 * `--baseline=<checkout>` also runs the Weft of another checkout (built: `npm run build` there) as
 * "(baseline)" contenders, so one run shows a change before and after.
 * It prints a table of ratios against direct TCP and the best peer and writes JSON to bench/results/.
 * Every process it starts is stopped.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { freePort } from "../src/core/ports.ts";
import {
  findBinary,
  listeningPorts,
  type PeerPair,
  startHaproxyPair,
  startStunnelPair,
  startWeftPair,
  writePeerCerts,
} from "./peers.ts";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const QUICK = process.argv.includes("--quick");
/** `--only=throughput,latency` runs just those measurements (for profiling one path). */
const ONLY = new Set(
  (
    process.argv.find((a) => a.startsWith("--only="))?.slice(7) ??
    "throughput,latency,connections,ttfb,memory"
  ).split(","),
);
/**
 * `--contenders=pooled,haproxy` starts and measures only those (direct TCP always runs): pooled,
 * per-connection, haproxy, stunnel. Fewer processes on the machine, for finding what disturbs what.
 */
const CONTENDERS = new Set(
  (
    process.argv.find((a) => a.startsWith("--contenders="))?.slice(13) ??
    "pooled,per-connection,haproxy,stunnel"
  ).split(","),
);
/** `--baseline=<checkout>`: another Weft build measured beside this one (see the module comment). */
const BASELINE = process.argv.find((a) => a.startsWith("--baseline="))?.slice(11);
/** New connections timed one after another for the time-to-first-byte rows. */
const TTFB_CONNS = QUICK ? 150 : 400;
/** Interleaved repetitions; the table shows medians (`--rounds=N`, default 3). */
const ROUNDS = Math.max(1, Number(process.argv.find((a) => a.startsWith("--rounds="))?.slice(9) ?? 3));
/** Extra Node flags for the Weft processes, e.g. BENCH_WEFT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/p". */
const WEFT_NODE_ARGS = (process.env.BENCH_WEFT_NODE_ARGS ?? "").split(" ").filter(Boolean);
/**
 * BENCH_WEFT_NODE_FLAGS="...": the sidecars' node flags instead of SIDECAR_NODE_FLAGS ("" for none), to
 * measure what each flag costs and buys (docs/benchmarks.md, "Node flags").
 */
const WEFT_NODE_FLAGS =
  process.env.BENCH_WEFT_NODE_FLAGS === undefined
    ? undefined
    : process.env.BENCH_WEFT_NODE_FLAGS.split(" ").filter(Boolean);
/**
 * BENCH_QUIET_SECONDS=S: S seconds of quiet before every round but the first, so that each later round
 * starts after the sidecars' idle reclaim (20 s of quiet) and shows what a burst costs after it.
 */
const QUIET_SECONDS = Number(process.env.BENCH_QUIET_SECONDS ?? 0);
/** Seconds of quiet before the "after" RSS is read (what a sidecar holds once traffic has stopped). */
const SETTLE_SECONDS = Number(process.env.BENCH_SETTLE_SECONDS ?? 30);
const BULK_BYTES = (QUICK ? 256 : 1024) * 1024 * 1024;
/** Connections pinging at once in the loaded latency measurement. */
const LAT_CONNS = 4;
const LAT_ROUNDS = QUICK ? 1500 : 4000;
/** Seconds of ping-pong per latency measurement with sockperf (after its own 0.4 s warm-up). */
const LAT_SECONDS = QUICK ? 2 : 4;
/** The latency load generator, if installed (BENCH_NODE_PINGS=1: always this process instead). */
const SOCKPERF = process.env.BENCH_NODE_PINGS ? undefined : findBinary(["sockperf"]);
const CONN_SECONDS = QUICK ? 3 : 6;
const CONN_WORKERS = 8;
const IDLE_CONNS = QUICK ? 500 : 1500;
/**
 * The footprint step before the "after" RSS reading (issue 17's target: ≤ 100 MiB after 1 GiB of bulk
 * and 1,000 idle connections closed), the same in quick and full runs.
 */
const FOOTPRINT_BULK_BYTES = 1024 * 1024 * 1024;
const FOOTPRINT_IDLE_CONNS = 1000;

function listen(server: Server): Promise<number> {
  return new Promise((res) =>
    server.listen(0, "127.0.0.1", () => res((server.address() as { port: number }).port)),
  );
}

/**
 * CPU time (µs) per thread of `pids` so far, keyed "<index in pids>:<main|thread name>" (Node's V8 and
 * libuv helper threads are all named "node"). For BENCH_THREADS=1, which shows where a proxy's CPU per
 * ping goes.
 */
function threadCpu(pids: readonly number[]): Map<string, number> {
  const m = new Map<string, number>();
  pids.forEach((pid, i) => {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const st = procStat(`/proc/${pid}/task/${t}/stat`);
      if (!st) continue; // the thread ended
      const k = `${i}:${t === String(pid) ? "main" : st.comm}`;
      m.set(k, (m.get(k) ?? 0) + st.cpuUs);
    }
  });
  return m;
}

/** Garbage collections so far (all sidecars summed) and each sidecar's new space, from Weft's /metrics. */
async function weftGc(ports: readonly number[]): Promise<{ minor: number; major: number; newMiB: number[] }> {
  const r = { minor: 0, major: 0, newMiB: [] as number[] };
  for (const port of ports) {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
    r.minor += num(/^nodejs_gc_duration_seconds_count\{kind="minor"\} (\d+)/m);
    r.major += num(/^nodejs_gc_duration_seconds_count\{kind="major"\} (\d+)/m);
    r.newMiB.push(num(/^nodejs_heap_space_size_total_bytes\{space="new"\} (\d+)/m) / 2 ** 20);
  }
  return r;
}

/**
 * A process's or thread's `stat` file (proc(5)): its name, CPU time so far (user + system, in µs, at
 * 100 ticks a second) and page faults so far (minor + major); undefined once it has ended.
 */
function procStat(path: string): { comm: string; cpuUs: number; faults: number } | undefined {
  let raw: string;
  try {
    raw = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const comm = raw.slice(raw.indexOf("(") + 1, raw.lastIndexOf(")"));
  // Fields after "(comm) ": state is [0], minflt [7], majflt [9], utime [11], stime [12].
  const f = raw.slice(raw.lastIndexOf(")") + 2).split(" ");
  return {
    comm,
    cpuUs: ((Number(f[11]) + Number(f[12])) * 1e6) / 100,
    faults: Number(f[7]) + Number(f[9]),
  };
}

/** CPU time (µs, user + system, all threads) and page faults of `pids` so far, summed; one read each. */
function procTotals(pids: readonly number[]): { cpuUs: number; faults: number } {
  const t = { cpuUs: 0, faults: 0 };
  for (const pid of pids) {
    const st = procStat(`/proc/${pid}/stat`);
    t.cpuUs += st?.cpuUs ?? 0;
    t.faults += st?.faults ?? 0;
  }
  return t;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : 0;
}

interface Contender {
  name: string;
  /** Where the client connects for the echo app and for the sink app. */
  echoPort: number;
  sinkPort: number;
  /** The echo app again, with every connection a full mTLS handshake (no session resumption). */
  echoFullPort: number;
  /** Where the latency load generator connects: the sockperf server's route, else the echo app's. */
  pingPort: number;
  pids: readonly number[];
  /** Weft: the sidecars' admin ports, for their own GC figures. */
  adminPorts: readonly number[];
  /** Spawn until ready of each proxy, started one after the other: the slower (ms); 0 for direct TCP. */
  readyMs: number;
}

const work = mkdtempSync(join(tmpdir(), "weft-bench-"));
const pairs: PeerPair[] = [];
/** Processes of the bench's own (the sockperf server). */
const children: ChildProcess[] = [];
process.on("exit", () => {
  for (const p of pairs) p.kill();
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
});
process.on("SIGINT", () => process.exit(130));

/** A pair's routes as a contender; `full` is the pair whose echo route makes a full handshake each time. */
function contender(pair: PeerPair, full: PeerPair = pair): Contender {
  return {
    name: pair.name,
    echoPort: pair.listenPorts.echo!,
    sinkPort: pair.listenPorts.sink!,
    echoFullPort: full.listenPorts["echo-full"] ?? full.listenPorts.echo!,
    pingPort: pair.listenPorts.ping ?? pair.listenPorts.echo!,
    pids: pair.pids,
    adminPorts: pair.adminPorts ?? [],
    readyMs: pair.readyMs,
  };
}

/** The largest RSS of a contender's proxy processes, in MiB. */
function maxRssMiB(c: Contender): number {
  return Math.max(...c.pids.map((p) => rssKiB(p))) / 1024;
}

/** `sockperf server` on a free loopback port, the app behind every pair's "ping" route. */
async function startSockperfServer(): Promise<{ port: number; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn(SOCKPERF!, ["server", "--tcp", "-i", "127.0.0.1", "-p", String(port)], {
    stdio: "ignore",
  });
  children.push(proc);
  for (let i = 0; i < 200 && !listeningPorts().has(port); i++) {
    if (proc.exitCode !== null) break;
    await sleep(25);
  }
  if (!listeningPorts().has(port)) throw new Error(`bench: sockperf server did not listen on ${port}`);
  return { port, proc };
}

// ---- the measurements --------------------------------------------------------------------------

async function bulk(port: number, total = BULK_BYTES): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 7);
  return new Promise((res, rej) => {
    const s = connect({ host: "127.0.0.1", port });
    s.setNoDelay(true);
    const t0 = process.hrtime.bigint();
    let sent = 0;
    s.on("error", rej);
    s.on("data", () => {
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      s.destroy();
      res((total * 8) / secs / 1e9);
    });
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once("drain", pump);
      }
      s.end();
    };
    s.once("connect", pump);
  });
}

interface Latency {
  p50: number;
  p99: number;
  /** All round trips made, the measured ones and the warm-up (for CPU per round trip). */
  roundTrips: number;
}

/** p50/p99 of round-trip times (µs); p90 … max go to stderr as the run goes. */
function summarize(samples: number[], roundTrips: number): Latency {
  if (samples.length === 0) throw new Error("bench: no latency samples");
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.min(samples.length - 1, Math.floor(samples.length * q))]!;
  const f = (q: number) => at(q).toFixed(0);
  process.stderr.write(
    ` (n ${samples.length}, p90 ${f(0.9)}, p95 ${f(0.95)}, p98 ${f(0.98)}, p99 ${f(0.99)}, p99.9 ${f(0.999)}, max ${f(1)} µs)`,
  );
  return { p50: at(0.5), p99: at(0.99), roundTrips };
}

/**
 * The latency load generator: sockperf (Debian's package) in ping-pong mode when it is installed, one
 * process per connection, 64-byte messages for `seconds` after its own warm-up, every round trip logged
 * (`--full-log`) and the logs merged. It is native and light, so the numbers are the proxies' and not
 * a JS load generator's: on 2 cores the load generator shares the CPUs with both proxies. Without
 * sockperf, the same ping-pong from this process (`nodePings`).
 */
async function sockperfPings(port: number, seconds: number, conns: number): Promise<Latency> {
  const logs = Array.from({ length: conns }, (_, i) => join(work, `sockperf-${i}.csv`));
  await Promise.all(
    logs.map(
      (log) =>
        new Promise<void>((res, rej) => {
          const args = ["ping-pong", "--tcp", "-i", "127.0.0.1", "-p", String(port), "-m", "64"];
          const p = spawn(SOCKPERF!, [...args, "-t", String(seconds), "--full-rtt", "--full-log", log], {
            stdio: ["ignore", "ignore", "pipe"],
          });
          let err = "";
          p.stderr!.on("data", (d: Buffer) => {
            err = (err + d.toString()).slice(-2000);
          });
          p.on("error", rej);
          p.on("exit", (code) =>
            code === 0 ? res() : rej(new Error(`sockperf exited with ${code}: ${err.slice(-500)}`)),
          );
        }),
    ),
  );
  const samples: number[] = [];
  let roundTrips = 0;
  for (const log of logs) {
    // Lines "<seq>, <tx s>, <rx s>, <rtt µs>" between sockperf's report lines, one of which counts
    // every reply including the warm-up's: "[Total Run] ... ReceivedMessages=<n>".
    const text = readFileSync(log, "utf8");
    roundTrips += Number(/\[Total Run\].*ReceivedMessages=(\d+)/.exec(text)?.[1] ?? 0);
    for (const line of text.split("\n")) {
      const m = /^\d+, [\d.]+, [\d.]+, ([\d.]+)$/.exec(line.trim());
      if (m) samples.push(Number(m[1]));
    }
    rmSync(log, { force: true });
  }
  return summarize(samples, Math.max(roundTrips, samples.length));
}

/** The same ping-pong from this process: `rounds` round trips on each of `conns` connections. */
async function nodePings(port: number, rounds: number, conns: number): Promise<Latency> {
  const samples: number[] = [];
  const msg = Buffer.alloc(64, 1);
  await Promise.all(
    Array.from({ length: conns }, async () => {
      const s = connect({ host: "127.0.0.1", port });
      s.setNoDelay(true);
      await new Promise((r) => s.once("connect", r));
      for (let i = 0; i < rounds; i++) {
        const t0 = process.hrtime.bigint();
        await new Promise<void>((r) => {
          let got = 0;
          const on = (d: Buffer) => {
            got += d.length;
            if (got >= 64) {
              s.off("data", on);
              r();
            }
          };
          s.on("data", on);
          s.write(msg);
        });
        if (i >= 50) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      s.destroy();
    }),
  );
  return summarize(samples, rounds * conns);
}

/** Ping-pong latency through `c` with `conns` connections at once; `short` for warm-up. */
function latency(c: Contender, conns: number, short = false): Promise<Latency> {
  if (SOCKPERF) return sockperfPings(c.pingPort, short ? 1 : LAT_SECONDS, conns);
  return nodePings(c.echoPort, short ? 1000 : LAT_ROUNDS, conns);
}

async function connRate(port: number, seconds = CONN_SECONDS): Promise<number> {
  const end = Date.now() + seconds * 1000;
  let done = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: CONN_WORKERS }, async () => {
      while (Date.now() < end) {
        const ok = await new Promise<boolean>((r) => {
          const s = connect({ host: "127.0.0.1", port });
          const timer = setTimeout(() => {
            s.destroy();
            r(false);
          }, 5000);
          s.on("error", () => {
            clearTimeout(timer);
            r(false);
          });
          s.once("connect", () => s.write("x"));
          s.once("data", () => {
            clearTimeout(timer);
            s.end();
            r(true);
          });
        });
        if (ok) done++;
        else failed++;
      }
    }),
  );
  if (failed > done / 100) console.error(`  (${failed} of ${done + failed} new connections failed)`);
  return done / seconds;
}

/**
 * Time to the first byte of a reply on a new connection, µs: connect, write one byte when connected, until
 * its echo arrives; `n` connections one after another (p50 and p99).
 */
async function timeToFirstByte(port: number, n = TTFB_CONNS): Promise<{ p50: number; p99: number }> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const us = await new Promise<number | undefined>((r) => {
      const t0 = process.hrtime.bigint();
      const s = connect({ host: "127.0.0.1", port, noDelay: true });
      const timer = setTimeout(() => {
        s.destroy();
        r(undefined);
      }, 5000);
      s.on("error", () => {
        clearTimeout(timer);
        r(undefined);
      });
      s.once("connect", () => s.write("x"));
      s.once("data", () => {
        clearTimeout(timer);
        const dt = Number(process.hrtime.bigint() - t0) / 1000;
        s.end();
        s.resume();
        r(dt);
      });
    });
    if (us !== undefined) samples.push(us);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number) =>
    samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? Number.NaN;
  return { p50: at(0.5), p99: at(0.99) };
}

/** `n` proxied connections through `port`, each having carried one byte each way, left open. */
async function openIdle(port: number, n: number): Promise<Socket[]> {
  const socks: Socket[] = [];
  for (let i = 0; i < n; i += 50) {
    await Promise.all(
      Array.from(
        { length: Math.min(50, n - i) },
        () =>
          new Promise<void>((r, rej) => {
            const s = connect({ host: "127.0.0.1", port });
            socks.push(s);
            s.on("error", rej);
            s.once("connect", () => s.write("x"));
            s.once("data", () => r());
          }),
      ),
    );
  }
  return socks;
}

/**
 * RSS growth of the proxy processes per idle proxied connection, measured at the margin: N connections
 * are opened and kept, then N more, and the growth over the second N is divided by N. The first batch
 * brings heaps and allocator arenas to their working size, and since it stays open, the second cannot
 * reuse its memory: the figure is what each further live connection holds.
 */
async function idleMemory(c: Contender): Promise<number> {
  if (c.pids.length === 0) return 0;
  const first = await openIdle(c.echoPort, IDLE_CONNS);
  await sleep(1000);
  const before = c.pids.reduce((n, p) => n + rssKiB(p), 0);
  const second = await openIdle(c.echoPort, IDLE_CONNS);
  await sleep(1000);
  const after = c.pids.reduce((n, p) => n + rssKiB(p), 0);
  for (const s of [...first, ...second]) s.destroy();
  await sleep(500);
  return (after - before) / IDLE_CONNS;
}

/**
 * Issue 17's footprint load, not timed: 1 GiB of bulk through one connection, then 1,000 connections
 * opened through the pair (each carries one echoed byte), held for a second and closed. The "after" RSS
 * is read once every proxy has been quiet for SETTLE_SECONDS after this.
 */
async function footprintLoad(c: Contender): Promise<void> {
  await bulk(c.sinkPort, FOOTPRINT_BULK_BYTES);
  const socks = await openIdle(c.echoPort, FOOTPRINT_IDLE_CONNS);
  await sleep(1000);
  for (const s of socks) s.destroy();
}

/**
 * Not measured: every path once, so JIT-compiled runtimes (Weft) are measured warm, as a long-running
 * sidecar is. Without it Weft's p99 counts V8's first second (most of its >2 ms samples fell there).
 */
async function warmUp(c: Contender): Promise<void> {
  await bulk(c.sinkPort, 64 * 1024 * 1024);
  await latency(c, LAT_CONNS, true);
  await latency(c, 1, true);
  await connRate(c.echoFullPort, 1);
  await connRate(c.echoPort, 1);
}

interface Result {
  throughputGbps: number;
  /** CPU time of both proxy processes (all threads) per GiB carried in the throughput measurement. */
  cpuMsPerGiB: number;
  /** One connection pinging alone. */
  p50us1: number;
  p99us1: number;
  /** LAT_CONNS connections pinging at once. */
  p50us: number;
  p99us: number;
  /** CPU time of both proxy processes (all threads) per ping, one connection alone. */
  cpuUsPerPing1: number;
  /** New connections per second, each a full mutual-TLS handshake between the proxies. */
  connPerSec: number;
  /** The same with session resumption, as each proxy does by default. */
  connResumedPerSec: number;
  /** Time to the first reply byte on a new connection (session resumed, or a pooled stream), µs. */
  ttfbP50us: number;
  ttfbP99us: number;
  kibPerIdleConn: number;
  /** Measured again after the memory measurement (3000 connections held at once, then closed). */
  throughputAfterGbps: number;
  p99us1After: number;
  /** Spawn until ready of each proxy, started one after the other: the slower. */
  readyMs: number;
  /**
   * The larger proxy's RSS before any traffic, and after all of it (the footprint step last: 1 GiB of
   * bulk, 1,000 idle connections closed) once quiet for SETTLE_SECONDS.
   */
  rssRestMiB: number;
  rssAfterMiB: number;
}

type Metric = keyof Result;

/** One measurement of one contender; the measurements are interleaved across contenders in each round. */
async function measureOne(name: string, c: Contender): Promise<Partial<Result>> {
  switch (name) {
    case "throughput": {
      const before = procTotals(c.pids);
      const gc0 = await weftGc(c.adminPorts);
      const gbps = await bulk(c.sinkPort);
      const after = procTotals(c.pids);
      const gib = BULK_BYTES / 2 ** 30;
      const msPerGiB = (after.cpuUs - before.cpuUs) / 1000 / gib;
      const faultsPerGiB = (after.faults - before.faults) / gib;
      if (c.pids.length > 0) {
        process.stderr.write(
          ` ${gbps.toFixed(2)} Gbit/s [both proxies ${msPerGiB.toFixed(0)} ms CPU, ${faultsPerGiB.toFixed(0)} page faults per GiB]`,
        );
      }
      if (c.adminPorts.length > 0) {
        const gc1 = await weftGc(c.adminPorts);
        process.stderr.write(
          ` {GCs: ${((gc1.minor - gc0.minor) / gib).toFixed(0)} minor, ${((gc1.major - gc0.major) / gib).toFixed(0)} major per GiB; new space ${gc0.newMiB.map((m) => m.toFixed(0)).join("/")} -> ${gc1.newMiB.map((m) => m.toFixed(0)).join("/")} MiB}`,
        );
      }
      return { throughputGbps: gbps, ...(c.pids.length > 0 ? { cpuMsPerGiB: msPerGiB } : {}) };
    }
    case "latency": {
      const cpu0 = procTotals(c.pids).cpuUs;
      const th0 = threadCpu(c.pids);
      const alone = await latency(c, 1);
      const cpuPerPing = (procTotals(c.pids).cpuUs - cpu0) / alone.roundTrips;
      if (c.pids.length > 0) process.stderr.write(` [both proxies ${cpuPerPing.toFixed(0)} µs CPU per ping]`);
      if (process.env.BENCH_THREADS) {
        const th1 = threadCpu(c.pids);
        process.stderr.write(
          ` {${[...th1]
            .map(([k, v]) => [k, (v - (th0.get(k) ?? 0)) / alone.roundTrips] as const)
            .filter(([, v]) => v > 0)
            .map(([k, v]) => `${k} ${v.toFixed(0)}`)
            .join(", ")}}`,
        );
      }
      const loaded = await latency(c, LAT_CONNS);
      return {
        p50us1: alone.p50,
        p99us1: alone.p99,
        p50us: loaded.p50,
        p99us: loaded.p99,
        ...(c.pids.length > 0 ? { cpuUsPerPing1: cpuPerPing } : {}),
      };
    }
    case "connections":
      return { connPerSec: await connRate(c.echoFullPort), connResumedPerSec: await connRate(c.echoPort) };
    case "ttfb": {
      const t = await timeToFirstByte(c.echoPort);
      process.stderr.write(` [${t.p50.toFixed(0)} / ${t.p99.toFixed(0)} µs]`);
      return { ttfbP50us: t.p50, ttfbP99us: t.p99 };
    }
    case "memory":
      return c.pids.length > 0 ? { kibPerIdleConn: await idleMemory(c) } : {};
    case "footprint":
      await footprintLoad(c);
      return {};
    case "after":
      return {
        throughputAfterGbps: await bulk(c.sinkPort),
        p99us1After: (await latency(c, 1)).p99,
      };
    default:
      throw new Error(`bench: unknown measurement ${name}`);
  }
}

function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Higher is better for these; lower for the rest. */
const HIGHER_BETTER: ReadonlySet<Metric> = new Set([
  "throughputGbps",
  "connPerSec",
  "connResumedPerSec",
  "throughputAfterGbps",
]);

async function main(): Promise<void> {
  await writePeerCerts(work);
  const echoServer = createServer({ allowHalfOpen: true }, (s) => {
    s.setNoDelay(true);
    s.on("error", () => {});
    s.pipe(s);
  });
  const sinkServer = createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {});
    s.resume();
    s.on("end", () => s.end("done"));
  });
  const echo = await listen(echoServer);
  const sink = await listen(sinkServer);
  const pingApp = SOCKPERF ? await startSockperfServer() : undefined;
  const direct: Contender = {
    name: "direct TCP",
    echoPort: echo,
    sinkPort: sink,
    echoFullPort: echo,
    pingPort: pingApp?.port ?? echo,
    pids: [],
    adminPorts: [],
    readyMs: 0,
  };
  const routes = [
    { name: "echo", appPort: echo },
    { name: "sink", appPort: sink },
    { name: "echo-full", appPort: echo, sessionReuse: false },
    ...(pingApp ? [{ name: "ping", appPort: pingApp.port }] : []),
  ];
  const opts = { workDir: work, routes, onMessage: (m: string) => console.error(`bench: ${m}`) };
  const track = <T extends PeerPair | undefined>(p: T): T => {
    if (p) pairs.push(p);
    return p;
  };
  // Weft's resumption switch is per sidecar: a second pair (idle but for the full-handshake runs) makes
  // every connection a full handshake.
  const wefts: Contender[] = [];
  // Pooled (the default): app connections are streams of one mTLS session per peer, so a new connection
  // costs no handshake; both connection rows measure the same thing for it.
  if (CONTENDERS.has("pooled")) {
    const pooledPair = track(
      await startWeftPair({
        ...opts,
        routes: routes.filter((r) => r.name !== "echo-full"),
        nodeArgs: WEFT_NODE_ARGS,
        ...(WEFT_NODE_FLAGS ? { nodeFlags: WEFT_NODE_FLAGS } : {}),
        transport: "pooled",
      }),
    );
    wefts.push({ ...contender(pooledPair), name: "Weft pooled" });
  }
  if (CONTENDERS.has("per-connection")) {
    const weftPair = track(
      await startWeftPair({
        ...opts,
        nodeArgs: WEFT_NODE_ARGS,
        ...(WEFT_NODE_FLAGS ? { nodeFlags: WEFT_NODE_FLAGS } : {}),
        transport: "per-connection",
      }),
    );
    const weftFull = track(
      await startWeftPair({
        ...opts,
        routes: [{ name: "echo", appPort: echo }],
        nodeArgs: WEFT_NODE_ARGS,
        ...(WEFT_NODE_FLAGS ? { nodeFlags: WEFT_NODE_FLAGS } : {}),
        transport: "per-connection",
        sessionResumption: false,
      }),
    );
    wefts.push({ ...contender(weftPair, weftFull), name: "Weft per-connection" });
  }
  if (BASELINE) {
    // The same two transports from another build, for before/after rows in one run.
    const root = resolve(BASELINE);
    if (CONTENDERS.has("pooled")) {
      const p = track(
        await startWeftPair({
          ...opts,
          routes: routes.filter((r) => r.name !== "echo-full"),
          nodeArgs: WEFT_NODE_ARGS,
          transport: "pooled",
          root,
        }),
      );
      wefts.push({ ...contender(p), name: "Weft pooled (baseline)" });
    }
    if (CONTENDERS.has("per-connection")) {
      const p = track(
        await startWeftPair({ ...opts, nodeArgs: WEFT_NODE_ARGS, transport: "per-connection", root }),
      );
      const full = track(
        await startWeftPair({
          ...opts,
          routes: [{ name: "echo", appPort: echo }],
          nodeArgs: WEFT_NODE_ARGS,
          transport: "per-connection",
          sessionResumption: false,
          root,
        }),
      );
      wefts.push({ ...contender(p, full), name: "Weft per-connection (baseline)" });
    }
  }
  const peers = [
    CONTENDERS.has("haproxy") ? track(await startHaproxyPair(opts)) : undefined,
    CONTENDERS.has("stunnel") ? track(await startStunnelPair(opts)) : undefined,
  ]
    .filter((p): p is PeerPair => p !== undefined)
    .map((p) => contender(p));
  const contenders = [direct, ...wefts, ...peers];
  console.error(
    `bench: ${[...new Set(pairs.map((p) => p.version))].join(", ")}; ${QUICK ? "quick" : "full"} run, ${ROUNDS} interleaved round(s), each ${BULK_BYTES >> 20} MiB bulk, ${SOCKPERF ? `sockperf ping-pong for ${LAT_SECONDS}s with 1 and with ${LAT_CONNS} connections` : `1×${LAT_ROUNDS} and ${LAT_CONNS}×${LAT_ROUNDS} pings from the bench process`}, ${CONN_SECONDS}s of new connections, ${IDLE_CONNS} idle connections; medians`,
  );
  // Footprint at rest: every proxy started, ready, and not one byte carried yet.
  await sleep(SETTLE_SECONDS * 1000);
  const atRest = new Map(contenders.filter((c) => c.pids.length > 0).map((c) => [c.name, maxRssMiB(c)]));
  for (const [name, mib] of atRest)
    console.error(`  ${name}: RSS at rest ${mib.toFixed(1)} MiB (largest proxy)`);
  for (const c of contenders) {
    process.stderr.write(`  warm-up ${c.name}`);
    await warmUp(c);
    process.stderr.write("\n");
  }
  const samples = new Map<string, Map<Metric, number[]>>(contenders.map((c) => [c.name, new Map()]));
  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1 && QUIET_SECONDS > 0) await sleep(QUIET_SECONDS * 1000);
    // Memory runs once, after the rounds: later rounds would mostly measure allocators reusing what it
    // freed (HAProxy's pools fell from 64 to 2 KiB per connection), and its aftermath slows a Node
    // sidecar for a while (glibc's malloc fragmented by 3000 connections' native state: _int_malloc went
    // from 2 % to 30 % of a sidecar's CPU in one profile), which the rows "after ..." show on their own.
    const last = round === ROUNDS;
    for (const m of [
      "throughput",
      "latency",
      "connections",
      "ttfb",
      ...(last ? ["memory", "after", "footprint"] : []),
    ].filter((x) => ONLY.has(x) || ((x === "after" || x === "footprint") && ONLY.has("memory")))) {
      // The order rotates every round, so that no contender always runs right after the same one
      // (the first latency runs after the last bulk transfer, while the load generator is still
      // collecting its garbage).
      const shift = (round - 1) % contenders.length;
      for (const c of [...contenders.slice(shift), ...contenders.slice(0, shift)]) {
        process.stderr.write(`  round ${round} ${m} ${c.name}`);
        const r = await measureOne(m, c);
        process.stderr.write("\n");
        for (const [k, v] of Object.entries(r) as Array<[Metric, number]>) {
          const list = samples.get(c.name)!.get(k) ?? [];
          list.push(v);
          samples.get(c.name)!.set(k, list);
        }
      }
    }
  }
  // Footprint after the traffic (the rounds' bulk transfers, and with the memory test the footprint
  // step's 1 GiB and 1,000 connections last, all closed now) once the proxies have been quiet a while.
  await sleep(SETTLE_SECONDS * 1000);
  for (const c of contenders.filter((x) => x.pids.length > 0)) {
    const m = samples.get(c.name)!;
    m.set("rssRestMiB", [atRest.get(c.name)!]);
    if (ONLY.has("memory")) m.set("rssAfterMiB", [maxRssMiB(c)]);
    m.set("readyMs", [c.readyMs]);
  }
  echoServer.close();
  sinkServer.close();
  pingApp?.proc.kill("SIGTERM");
  // SIGTERM first, so that `--cpu-prof` profiles get written.
  await Promise.all(pairs.map((p) => p.stop(25_000)));

  const value = (c: Contender, k: Metric) => median(samples.get(c.name)!.get(k) ?? []);
  const best = (k: Metric): number => {
    const vs = peers.map((p) => value(p, k)).filter((v) => Number.isFinite(v));
    if (vs.length === 0) return Number.NaN;
    return HIGHER_BETTER.has(k) ? Math.max(...vs) : Math.min(...vs);
  };
  const fmt = (n: number, digits: number) => (Number.isFinite(n) ? n.toFixed(digits) : "—");
  const ratio = (a: number, b: number) =>
    Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : "—";
  const rows: Array<[string, Metric, number, string]> = [
    ["throughput, 1 stream (Gbit/s)", "throughputGbps", 2, "≥ 0.60× best peer"],
    ["proxy CPU per GiB, 1 stream (ms, both proxies)", "cpuMsPerGiB", 0, ""],
    ["latency p50, 1 connection (µs)", "p50us1", 0, ""],
    ["latency p99, 1 connection (µs)", "p99us1", 0, "added ≤ 2× best peer's added"],
    ["proxy CPU per ping, 1 connection (µs, both proxies)", "cpuUsPerPing1", 0, ""],
    [`latency p50, ${LAT_CONNS} connections at once (µs)`, "p50us", 0, ""],
    [`latency p99, ${LAT_CONNS} connections at once (µs)`, "p99us", 0, "added ≤ 2× best peer's added"],
    ["new connections/s, full mTLS handshake each", "connPerSec", 0, "≥ 0.50× best peer"],
    ["new connections/s, TLS session resumed", "connResumedPerSec", 0, ""],
    ["time to first reply byte, new connection, p50 (µs)", "ttfbP50us", 0, ""],
    ["time to first reply byte, new connection, p99 (µs)", "ttfbP99us", 0, ""],
    ["proxy KiB per idle connection", "kibPerIdleConn", 1, "< 64 KiB"],
    ["throughput after the memory test (Gbit/s)", "throughputAfterGbps", 2, ""],
    ["latency p99, 1 connection, after the memory test (µs)", "p99us1After", 0, ""],
    ["time to ready, spawn → ready, each proxy alone (ms, slower of the pair)", "readyMs", 0, "≤ 500 ms"],
    ["RSS at rest, before any traffic (MiB, larger proxy)", "rssRestMiB", 1, "≤ 60 MiB"],
    [
      `RSS after 1 GiB bulk + ${FOOTPRINT_IDLE_CONNS} idle connections closed, ${SETTLE_SECONDS} s quiet (MiB, larger proxy)`,
      "rssAfterMiB",
      1,
      "≤ 100 MiB",
    ],
  ];
  const lines = [
    `| metric | direct TCP | ${wefts.map((w) => w.name).join(" | ")} | ${peers.map((p) => p.name).join(" | ")} | ${wefts.map((w) => `${w.name} / best peer`).join(" | ")} | target |`,
    `|---|---|${wefts.map(() => "---|").join("")}${peers.map(() => "---|").join("")}${wefts.map(() => "---|").join("")}---|`,
    ...rows.map(([label, k, digits, target]) => {
      const isMem = k === "kibPerIdleConn" || k === "readyMs" || k === "rssRestMiB" || k === "rssAfterMiB";
      return `| ${label} | ${isMem ? "—" : fmt(value(direct, k), digits)} | ${wefts.map((w) => fmt(value(w, k), digits)).join(" | ")} | ${peers.map((p) => fmt(value(p, k), digits)).join(" | ")} | ${wefts.map((w) => ratio(value(w, k), best(k))).join(" | ")} | ${target} |`;
    }),
  ];
  const verdict = (ok: boolean | undefined) => (ok === undefined ? "n/a" : ok ? "PASS" : "FAIL");
  // Added p99: each contender's p99 minus direct TCP's, per round, then the median.
  const addedP99 = (c: Contender, k: Metric) => {
    const mine = samples.get(c.name)!.get(k) ?? [];
    const base = samples.get(direct.name)!.get(k) ?? [];
    return median(mine.map((v, i) => v - (base[i] ?? Number.NaN)).filter((v) => Number.isFinite(v)));
  };
  const verdicts = wefts.map((w) => {
    const has = (k: Metric) => Number.isFinite(value(w, k)) && Number.isFinite(best(k));
    const p99 = (k: Metric, label: string) => {
      const addedBest = Math.min(...peers.map((p) => addedP99(p, k)).filter((v) => Number.isFinite(v)));
      const addedW = addedP99(w, k);
      const ok = has(k) && Number.isFinite(addedBest) ? addedW <= 2 * Math.max(addedBest, 1) : undefined;
      return `p99 added latency, ${label} ${verdict(ok)} (+${fmt(addedW, 0)} µs vs best peer +${fmt(addedBest, 0)} µs)`;
    };
    return `${w.name}: ${[
      `throughput ${verdict(has("throughputGbps") ? value(w, "throughputGbps") >= 0.6 * best("throughputGbps") : undefined)}`,
      `new connections ${verdict(has("connPerSec") ? value(w, "connPerSec") >= 0.5 * best("connPerSec") : undefined)}`,
      p99("p99us1", "1 connection"),
      p99("p99us", `${LAT_CONNS} connections`),
      `memory ${verdict(Number.isFinite(value(w, "kibPerIdleConn")) ? value(w, "kibPerIdleConn") < 64 : undefined)} (${fmt(value(w, "kibPerIdleConn"), 1)} KiB)`,
      ...(
        [
          ["ready", "readyMs", 500, "ms"],
          ["RSS at rest", "rssRestMiB", 60, "MiB"],
          ["RSS after traffic", "rssAfterMiB", 100, "MiB"],
        ] as const
      ).map(
        ([label, k, max, unit]) =>
          `${label} ${verdict(Number.isFinite(value(w, k)) ? value(w, k) <= max : undefined)} (${fmt(value(w, k), 0)} ${unit})`,
      ),
    ].join(", ")}`;
  });
  console.log(lines.join("\n"));
  console.log(`\ntargets:\n  ${verdicts.join("\n  ")}`);
  mkdirSync(join(ROOT, "bench/results"), { recursive: true });
  const file = join(ROOT, "bench/results", `${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  const raw = Object.fromEntries([...samples].map(([n, m]) => [n, Object.fromEntries(m)]));
  writeFileSync(
    file,
    JSON.stringify({ quick: QUICK, rounds: ROUNDS, date: new Date().toISOString(), samples: raw }, null, 2),
  );
  console.log(`results: ${file}`);
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    console.error(`bench: ${(err as Error).stack}`);
    process.exit(1);
  });
