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

async function measure(c: Contender): Promise<Result> {
  process.stderr.write(`  ${c.name}:`);
  const step = async <T>(name: string, fn: () => Promise<T>, none: T): Promise<T> => {
    if (!ONLY.has(name)) return none;
    process.stderr.write(` ${name}`);
    return fn();
  };
  const throughputGbps = await step("throughput", () => bulk(c.sinkPort), Number.NaN);
  const { p50, p99 } = await step("latency", () => latency(c.echoPort), { p50: Number.NaN, p99: Number.NaN });
  const connPerSec = await step("connections", () => connRate(c.echoPort), Number.NaN);
  const kibPerIdleConn = await step("memory", () => idleMemory(c), Number.NaN);
  process.stderr.write("\n");
  return { throughputGbps, p50us: p50, p99us: p99, connPerSec, kibPerIdleConn };
}

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
  const contenders: Contender[] = [{ name: "direct TCP", echoPort: echo, sinkPort: sink, pids: [] }];
  contenders.push(await startWeft(echo, sink));
  const ha = await startHaproxy(echo, sink);
  if (ha) contenders.push(ha);
  console.error(
    `bench: ${QUICK ? "quick" : "full"} run, ${BULK_BYTES >> 20} MiB bulk, ${LAT_CONNS}×${LAT_ROUNDS} pings, ${CONN_SECONDS}s of new connections, ${IDLE_CONNS} idle connections`,
  );
  const results = new Map<string, Result>();
  for (const c of contenders) results.set(c.name, await measure(c));
  echoServer.close();
  sinkServer.close();
  await stopAll();

  const d = results.get("direct TCP")!;
  const w = results.get("Weft")!;
  const h = results.get("HAProxy");
  const fmt = (n: number | undefined, digits = 2) => (n === undefined ? "—" : n.toFixed(digits));
  const ratio = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || b === 0 ? "—" : `${(a / b).toFixed(2)}×`;
  const rows: Array<[string, number, number, number | undefined, string]> = [
    [
      "throughput, 1 stream (Gbit/s)",
      d.throughputGbps,
      w.throughputGbps,
      h?.throughputGbps,
      "≥ 0.60× HAProxy",
    ],
    ["latency p50 (µs)", d.p50us, w.p50us, h?.p50us, ""],
    ["latency p99 (µs)", d.p99us, w.p99us, h?.p99us, "added ≤ 2× HAProxy's added"],
    ["new connections/s (mTLS each)", d.connPerSec, w.connPerSec, h?.connPerSec, "≥ 0.50× HAProxy"],
    ["proxy KiB per idle connection", 0, w.kibPerIdleConn, h?.kibPerIdleConn, "< 64 KiB"],
  ];
  const lines = [
    "| metric | direct TCP | Weft | HAProxy | Weft / HAProxy | Weft / direct | target |",
    "|---|---|---|---|---|---|---|",
    ...rows.map(
      ([name, dv, wv, hv, target]) =>
        `| ${name} | ${name.startsWith("proxy") ? "—" : fmt(dv, name.includes("Gbit") ? 2 : 0)} | ${fmt(wv, name.includes("Gbit") ? 2 : 0)} | ${fmt(hv, name.includes("Gbit") ? 2 : 0)} | ${ratio(wv, hv)} | ${name.startsWith("proxy") ? "—" : ratio(wv, dv)} | ${target} |`,
    ),
  ];
  const addedW = w.p99us - d.p99us;
  const addedH = h ? h.p99us - d.p99us : undefined;
  const verdicts = [
    `throughput ${h ? (w.throughputGbps >= 0.6 * h.throughputGbps ? "PASS" : "FAIL") : "n/a"}`,
    `new connections ${h ? (w.connPerSec >= 0.5 * h.connPerSec ? "PASS" : "FAIL") : "n/a"}`,
    `p99 added latency ${addedH !== undefined ? (addedW <= 2 * Math.max(addedH, 1) ? "PASS" : "FAIL") : "n/a"} (Weft +${addedW.toFixed(0)} µs, HAProxy +${addedH?.toFixed(0) ?? "—"} µs)`,
    `memory ${w.kibPerIdleConn < 64 ? "PASS" : "FAIL"} (${w.kibPerIdleConn.toFixed(1)} KiB)`,
  ];
  console.log(lines.join("\n"));
  console.log(`\ntargets: ${verdicts.join("; ")}`);
  mkdirSync(join(ROOT, "bench/results"), { recursive: true });
  const file = join(ROOT, "bench/results", `${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      { quick: QUICK, date: new Date().toISOString(), results: Object.fromEntries(results) },
      null,
      2,
    ),
  );
  console.log(`results: ${file}`);
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    console.error(`bench: ${(err as Error).stack}`);
    process.exit(1);
  });
