/**
 * `npm run bench [-- --quick]`: Weft against direct TCP and an HAProxy mutual-TLS pair, on loopback, in
 * one run. Every contender is a proxy pair in front of the same apps (an echo server and a byte sink in
 * this process); each proxy is its own process. It measures:
 *   - bulk throughput over one connection,
 *   - request latency p50/p99 on persistent connections (64-byte ping-pong),
 *   - new connections per second (each one a full mTLS handshake between the proxies),
 *   - proxy memory per idle proxied connection (RSS of both proxy processes, before and after).
 * It prints a table of ratios and writes JSON to bench/results/. Every process it starts is stopped.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { CertificateAuthority, createTrustDomain } from "../src/ca/authority.ts";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const QUICK = process.argv.includes("--quick");
/** `--only=throughput,latency` runs just those measurements (for profiling one path). */
const ONLY = new Set(
  (
    process.argv.find((a) => a.startsWith("--only="))?.slice(7) ?? "throughput,latency,connections,memory"
  ).split(","),
);
/** Extra Node flags for the Weft processes, e.g. BENCH_WEFT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/p". */
/** Interleaved repetitions; the table shows medians (`--rounds=N`, default 3). */
const ROUNDS = Math.max(1, Number(process.argv.find((a) => a.startsWith("--rounds="))?.slice(9) ?? 3));
const WEFT_NODE_ARGS = (process.env.BENCH_WEFT_NODE_ARGS ?? "").split(" ").filter(Boolean);
const BULK_BYTES = (QUICK ? 256 : 1024) * 1024 * 1024;
const LAT_CONNS = 4;
const LAT_ROUNDS = QUICK ? 1500 : 4000;
const CONN_SECONDS = QUICK ? 3 : 6;
const CONN_WORKERS = 8;
const IDLE_CONNS = QUICK ? 500 : 1500;

const children: ChildProcess[] = [];
const work = mkdtempSync(join(tmpdir(), "weft-bench-"));
function cleanup(): void {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
}

/** Stop every proxy with SIGTERM (so `--cpu-prof` profiles get written), SIGKILL after 25 s. */
async function stopAll(): Promise<void> {
  await Promise.all(
    children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise((r) => c.once("exit", r));
      c.kill("SIGTERM");
      if ((await Promise.race([gone, sleep(25_000, "timeout")])) === "timeout") c.kill("SIGKILL");
    }),
  );
}
process.on("exit", cleanup);
process.on("SIGINT", () => process.exit(130));

async function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((res) => {
      const s = connect({ host: "127.0.0.1", port }, () => {
        s.destroy();
        res(true);
      });
      s.on("error", () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`bench: nothing listens on ${port}`);
    await sleep(50);
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((res) =>
    server.listen(0, "127.0.0.1", () => res((server.address() as { port: number }).port)),
  );
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
  pids: number[];
}

// ---- the measurements --------------------------------------------------------------------------

async function bulk(port: number): Promise<number> {
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
      res((BULK_BYTES * 8) / secs / 1e9);
    });
    const pump = () => {
      while (sent < BULK_BYTES) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once("drain", pump);
      }
      s.end();
    };
    s.once("connect", pump);
  });
}

async function latency(port: number): Promise<{ p50: number; p99: number }> {
  const samples: number[] = [];
  const msg = Buffer.alloc(64, 1);
  await Promise.all(
    Array.from({ length: LAT_CONNS }, async () => {
      const s = connect({ host: "127.0.0.1", port });
      s.setNoDelay(true);
      await new Promise((r) => s.once("connect", r));
      for (let i = 0; i < LAT_ROUNDS; i++) {
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
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.min(samples.length - 1, Math.floor(samples.length * q))]!.toFixed(0);
  process.stderr.write(
    ` (p90 ${at(0.9)}, p95 ${at(0.95)}, p98 ${at(0.98)}, p99 ${at(0.99)}, p99.9 ${at(0.999)}, max ${at(1)} µs)`,
  );
  return {
    p50: samples[Math.floor(samples.length * 0.5)]!,
    p99: samples[Math.floor(samples.length * 0.99)]!,
  };
}

async function connRate(port: number): Promise<number> {
  const end = Date.now() + CONN_SECONDS * 1000;
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
  return done / CONN_SECONDS;
}

async function idleMemory(c: Contender): Promise<number> {
  if (c.pids.length === 0) return 0;
  await sleep(300);
  const before = c.pids.reduce((n, p) => n + rssKiB(p), 0);
  const socks: Socket[] = [];
  for (let i = 0; i < IDLE_CONNS; i += 50) {
    await Promise.all(
      Array.from(
        { length: Math.min(50, IDLE_CONNS - i) },
        () =>
          new Promise<void>((r, rej) => {
            const s = connect({ host: "127.0.0.1", port: c.echoPort });
            socks.push(s);
            s.on("error", rej);
            s.once("connect", () => s.write("x"));
            s.once("data", () => r());
          }),
      ),
    );
  }
  await sleep(1000);
  const after = c.pids.reduce((n, p) => n + rssKiB(p), 0);
  for (const s of socks) s.destroy();
  await sleep(500);
  return (after - before) / IDLE_CONNS;
}

// ---- the contenders ------------------------------------------------------------------------------

async function certs() {
  const material = await createTrustDomain({ trustDomain: "bench.local" });
  const ca = new CertificateAuthority(material);
  const client = await ca.issue({ id: "spiffe://bench.local/ns/default/sa/client" });
  const server = await ca.issue({ id: "spiffe://bench.local/ns/default/sa/server" });
  for (const [name, id] of [
    ["client", client],
    ["server", server],
  ] as const) {
    writeFileSync(join(work, `${name}-chain.pem`), id.chainPem);
    writeFileSync(join(work, `${name}-key.pem`), id.keyPem, { mode: 0o600 });
    writeFileSync(join(work, `${name}-combined.pem`), id.chainPem + id.keyPem, { mode: 0o600 });
  }
  writeFileSync(join(work, "bundle.pem"), material.bundlePem);
}

function start(cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
    if (err.length > 20_000) err = err.slice(-10_000);
  });
  child.once("exit", (code) => {
    if (code && code !== 0 && code !== 143)
      console.error(`bench: ${cmd} exited ${code}: ${err.slice(-2000)}`);
  });
  children.push(child);
  return child;
}

async function startWeft(echo: number, sink: number): Promise<Contender> {
  const [tunnel, adminS, adminC, tunnelC, eEcho, eSink] = await Promise.all(
    Array.from({ length: 6 }, freePort),
  );
  const common = (who: string) => [
    "trustDomain: bench.local",
    "identity:",
    `  files: { cert: ${join(work, `${who}-chain.pem`)}, key: ${join(work, `${who}-key.pem`)}, bundle: ${join(work, "bundle.pem")} }`,
    "log: { level: warn, accessLog: false }",
  ];
  writeFileSync(
    join(work, "weft-server.yaml"),
    [
      ...common("server"),
      "listeners:",
      "  outbound: { enabled: false }",
      "  inbound: { enabled: false }",
      `  tunnel: { address: 127.0.0.1, port: ${tunnel}, maxConnections: 100000 }`,
      `  admin: { address: 127.0.0.1, port: ${adminS} }`,
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(work, "weft-client.yaml"),
    [
      ...common("client"),
      "listeners:",
      "  outbound: { enabled: false }",
      "  inbound: { enabled: false }",
      `  tunnel: { address: 127.0.0.1, port: ${tunnelC} }`,
      `  admin: { address: 127.0.0.1, port: ${adminC} }`,
      `  explicit: [ { listen: "127.0.0.1:${eEcho}", service: echo }, { listen: "127.0.0.1:${eSink}", service: sink } ]`,
      "services:",
      `  - { name: echo, ports: [${echo}], identity: "spiffe://bench.local/ns/default/sa/server", endpoints: [ { address: 127.0.0.1, tunnelPort: ${tunnel} } ] }`,
      `  - { name: sink, ports: [${sink}], identity: "spiffe://bench.local/ns/default/sa/server", endpoints: [ { address: 127.0.0.1, tunnelPort: ${tunnel} } ] }`,
      "",
    ].join("\n"),
  );
  const weft = join(ROOT, "bin/weft.js");
  const s = start(process.execPath, [
    ...WEFT_NODE_ARGS,
    weft,
    "proxy",
    "--config",
    join(work, "weft-server.yaml"),
  ]);
  const c = start(process.execPath, [
    ...WEFT_NODE_ARGS,
    weft,
    "proxy",
    "--config",
    join(work, "weft-client.yaml"),
  ]);
  await Promise.all([waitForPort(tunnel!), waitForPort(eEcho!), waitForPort(eSink!)]);
  return { name: "Weft", echoPort: eEcho!, sinkPort: eSink!, pids: [s.pid!, c.pid!] };
}

async function startHaproxy(echo: number, sink: number): Promise<Contender | undefined> {
  try {
    execFileSync("haproxy", ["-v"], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin` } });
  } catch {
    console.error("bench: haproxy is not installed (apt-get install haproxy); its column is empty");
    return undefined;
  }
  const [tEcho, tSink, eEcho, eSink] = (await Promise.all(Array.from({ length: 4 }, freePort))) as [
    number,
    number,
    number,
    number,
  ];
  const tls = `ssl ca-file ${join(work, "bundle.pem")} verify required ssl-min-ver TLSv1.3`;
  const head =
    "global\n  maxconn 8000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n";
  writeFileSync(
    join(work, "ha-server.cfg"),
    `${head}listen echo\n  bind 127.0.0.1:${tEcho} ${tls} crt ${join(work, "server-combined.pem")}\n  server app 127.0.0.1:${echo}\nlisten sink\n  bind 127.0.0.1:${tSink} ${tls} crt ${join(work, "server-combined.pem")}\n  server app 127.0.0.1:${sink}\n`,
  );
  writeFileSync(
    join(work, "ha-client.cfg"),
    `${head}listen echo\n  bind 127.0.0.1:${eEcho}\n  server s 127.0.0.1:${tEcho} ${tls} crt ${join(work, "client-combined.pem")} no-ssl-reuse\nlisten sink\n  bind 127.0.0.1:${eSink}\n  server s 127.0.0.1:${tSink} ${tls} crt ${join(work, "client-combined.pem")}\n`,
  );
  const bin = "/usr/sbin/haproxy";
  const s = start(bin, ["-db", "-f", join(work, "ha-server.cfg")]);
  const c = start(bin, ["-db", "-f", join(work, "ha-client.cfg")]);
  await Promise.all([waitForPort(eEcho), waitForPort(tEcho)]);
  return { name: "HAProxy", echoPort: eEcho, sinkPort: eSink, pids: [s.pid!, c.pid!] };
}

// ---- the run --------------------------------------------------------------------------------------

interface Result {
  throughputGbps: number;
  p50us: number;
  p99us: number;
  connPerSec: number;
  kibPerIdleConn: number;
}

type Metric = keyof Result;

/** One measurement of one contender; the measurements are interleaved across contenders in each round. */
async function measureOne(name: string, c: Contender): Promise<Partial<Result>> {
  switch (name) {
    case "throughput":
      return { throughputGbps: await bulk(c.sinkPort) };
    case "latency": {
      const { p50, p99 } = await latency(c.echoPort);
      return { p50us: p50, p99us: p99 };
    }
    case "connections":
      return { connPerSec: await connRate(c.echoPort) };
    case "memory":
      return c.pids.length > 0 ? { kibPerIdleConn: await idleMemory(c) } : {};
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
const HIGHER_BETTER: ReadonlySet<Metric> = new Set(["throughputGbps", "connPerSec"]);

async function main(): Promise<void> {
  await certs();
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
  const direct: Contender = { name: "direct TCP", echoPort: echo, sinkPort: sink, pids: [] };
  const weft = await startWeft(echo, sink);
  const peers = (await Promise.all([startHaproxy(echo, sink)])).filter((p): p is Contender => !!p);
  const contenders = [direct, weft, ...peers];
  console.error(
    `bench: ${QUICK ? "quick" : "full"} run, ${ROUNDS} interleaved round(s), each ${BULK_BYTES >> 20} MiB bulk, ${LAT_CONNS}×${LAT_ROUNDS} pings, ${CONN_SECONDS}s of new connections, ${IDLE_CONNS} idle connections; medians`,
  );
  const samples = new Map<string, Map<Metric, number[]>>(contenders.map((c) => [c.name, new Map()]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const m of ["throughput", "latency", "connections", "memory"].filter((x) => ONLY.has(x))) {
      // Memory is a property of the design, not of the load: one round is enough.
      if (m === "memory" && round > 1) continue;
      for (const c of contenders) {
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
  echoServer.close();
  sinkServer.close();
  await stopAll();

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
    ["latency p50 (µs)", "p50us", 0, ""],
    ["latency p99 (µs)", "p99us", 0, "added ≤ 2× best peer's added"],
    ["new connections/s (mTLS each)", "connPerSec", 0, "≥ 0.50× best peer"],
    ["proxy KiB per idle connection", "kibPerIdleConn", 1, "< 64 KiB"],
  ];
  const lines = [
    `| metric | direct TCP | Weft | ${peers.map((p) => p.name).join(" | ")} | Weft / best peer | Weft / direct | target |`,
    `|---|---|---|${peers.map(() => "---|").join("")}---|---|---|`,
    ...rows.map(([label, k, digits, target]) => {
      const isMem = k === "kibPerIdleConn";
      return `| ${label} | ${isMem ? "—" : fmt(value(direct, k), digits)} | ${fmt(value(weft, k), digits)} | ${peers.map((p) => fmt(value(p, k), digits)).join(" | ")} | ${ratio(value(weft, k), best(k))} | ${isMem ? "—" : ratio(value(weft, k), value(direct, k))} | ${target} |`;
    }),
  ];
  const verdict = (ok: boolean | undefined) => (ok === undefined ? "n/a" : ok ? "PASS" : "FAIL");
  const has = (k: Metric) => Number.isFinite(value(weft, k)) && Number.isFinite(best(k));
  // Added p99: each contender's p99 minus direct TCP's, per round, then the median.
  const addedP99 = (c: Contender) => {
    const mine = samples.get(c.name)!.get("p99us") ?? [];
    const base = samples.get(direct.name)!.get("p99us") ?? [];
    return median(mine.map((v, i) => v - (base[i] ?? Number.NaN)).filter((v) => Number.isFinite(v)));
  };
  const addedW = addedP99(weft);
  const addedBest = Math.min(...peers.map(addedP99).filter((v) => Number.isFinite(v)));
  const verdicts = [
    `throughput ${verdict(has("throughputGbps") ? value(weft, "throughputGbps") >= 0.6 * best("throughputGbps") : undefined)}`,
    `new connections ${verdict(has("connPerSec") ? value(weft, "connPerSec") >= 0.5 * best("connPerSec") : undefined)}`,
    `p99 added latency ${verdict(has("p99us") && Number.isFinite(addedBest) ? addedW <= 2 * Math.max(addedBest, 1) : undefined)} (Weft +${fmt(addedW, 0)} µs, best peer +${fmt(addedBest, 0)} µs)`,
    `memory ${verdict(Number.isFinite(value(weft, "kibPerIdleConn")) ? value(weft, "kibPerIdleConn") < 64 : undefined)} (${fmt(value(weft, "kibPerIdleConn"), 1)} KiB)`,
  ];
  console.log(lines.join("\n"));
  console.log(`\ntargets: ${verdicts.join("; ")}`);
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
