/**
 * Reliable delivery (issue 15): one client sidecar balances a service over three endpoints, each its own
 * `weft proxy` process in front of its own app, while a load generator opens 40 short connections a
 * second (connect, write, read the echo, close). One endpoint fails for a while and comes back:
 *
 * - its app stops (its sidecar stays up): no client connection fails, with Weft's defaults and with
 *   health checks on; the endpoint is ejected while its app is down; with health checks on it serves
 *   again within 2 s of its app's return (a passing check ends the ejection);
 * - the whole pod dies (sidecar SIGKILLed, app gone): no connection fails beyond those that were already
 *   in flight at the kill.
 *
 * Each scenario runs on both transports. Every process is real (sidecars are child processes, apps
 * are loopback servers in this process, stopped and restarted on the same port); the load and the run
 * are bounded (12 s of load per scenario).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net, { type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { freePort } from "../../src/core/ports.ts";
import { SIDECAR_NODE_FLAGS } from "../../src/runtime/node-flags.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { type TestCa, TRANSPORTS, type Transport, writeIdentity } from "../helpers/sidecar.ts";
import { whenReady } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

const RATE_PER_S = 40;
const FAIL_AT_MS = 3_000;
const BACK_AT_MS = 7_000;
/** Load runs this long, and at least until 5 s after the endpoint is back (a restarted sidecar can be slow to start on a busy machine), at most 40 s. */
const LOAD_MS = 12_000;
const LOAD_AFTER_BACK_MS = 5_000;
const LOAD_MAX_MS = 40_000;
/** A connection slower than this counts as failed (generous: slowness on a shared machine is not loss). */
const CONNECTION_DEADLINE_MS = 30_000;

/** An echo app on a fixed port that can be stopped (gracefully or killed) and started again. */
class EchoApp {
  private server: net.Server | undefined;
  private readonly open = new Set<Socket>();
  /** When each connection that carried bytes arrived (ms since the epoch). */
  readonly served: number[] = [];

  constructor(readonly port: number) {}

  async start(): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      this.open.add(s);
      s.on("error", () => {});
      s.once("close", () => this.open.delete(s));
      s.once("data", () => this.served.push(Date.now()));
      s.pipe(s);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", resolve);
    });
    this.server = server;
  }

  /** Stop accepting; connections in progress finish (an app that is shut down). */
  stop(): void {
    this.server?.close();
    this.server = undefined;
  }

  /** Gone at once, connections and all (the pod died). */
  kill(): void {
    this.stop();
    for (const s of this.open) s.destroy();
  }
}

interface Pod {
  readonly app: EchoApp;
  /** The log lines of every sidecar process this pod had. */
  readonly log: Array<Record<string, unknown>>;
  readonly tunnelPort: number;
  readonly config: string;
  child: ChildProcess | undefined;
}

function spawnWeft(config: string): ChildProcess {
  return spawn(process.execPath, [...SIDECAR_NODE_FLAGS, "bin/weft.js", "proxy", "--config", config], {
    stdio: ["ignore", "ignore", "pipe"],
  });
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "weft-reliable-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function identityFiles(dir: string, ca: TestCa, name: string, sa: string): Promise<string> {
  const files = {
    dir,
    cert: join(dir, `${name}-cert.pem`),
    key: join(dir, `${name}-key.pem`),
    bundle: join(dir, `${name}-bundle.pem`),
  };
  await writeIdentity(files, await ca.issue(`default/${sa}`));
  return `identity: { files: { cert: ${files.cert}, key: ${files.key}, bundle: ${files.bundle} } }`;
}

async function startPod(t: TestContext, dir: string, ca: TestCa, i: number): Promise<Pod> {
  const app = new EchoApp(await freePort());
  await app.start();
  t.after(() => app.kill());
  const tunnelPort = await freePort();
  const config = join(dir, `server-${i}.yaml`);
  await writeFile(
    config,
    `trustDomain: ${ca.trustDomain}
${await identityFiles(dir, ca, `server-${i}`, "backend")}
listeners:
  outbound: { enabled: false }
  inbound: { enabled: false }
  tunnel: { address: 127.0.0.1, port: ${tunnelPort} }
  admin: { address: 127.0.0.1, port: 0 }
  metrics: { address: 127.0.0.1, port: 0 }
log: { level: info, accessLog: true }
`,
  );
  return { app, tunnelPort, config, child: undefined, log: [] };
}

/** `p`, or a rejection naming `what` after `ms` (no step of the scenario may hang the suite). */
async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

async function startSidecarOf(t: TestContext, pod: Pod): Promise<void> {
  const child = spawnWeft(pod.config);
  pod.child = child;
  collectLog(child, pod.log);
  await within(30_000, "server sidecar ready", whenReady(t, child));
}

interface Outcome {
  readonly id: number;
  readonly started: number;
  ended: number;
  ok: boolean;
  detail: string;
  /** The client's local port: its line in the client sidecar's access log has it as `src`. */
  localPort?: number;
}

/** One short connection: connect, write a line, read its echo, close; bounded by a deadline. */
function oneConnection(port: number, id: number): Promise<Outcome> {
  const out: Outcome = { id, started: Date.now(), ended: 0, ok: false, detail: "" };
  const msg = `ping ${id}\n`;
  return new Promise((resolve) => {
    let got = "";
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    const timer = setTimeout(() => {
      out.detail = "deadline";
      s.destroy();
    }, CONNECTION_DEADLINE_MS);
    s.once("connect", () => {
      out.localPort = s.localPort;
      s.write(msg);
    });
    s.on("data", (d: Buffer) => {
      got += d.toString();
      if (got.length >= msg.length) s.end();
    });
    s.on("error", (err: NodeJS.ErrnoException) => {
      out.detail ||= err.code ?? err.message;
    });
    s.once("close", () => {
      clearTimeout(timer);
      out.ended = Date.now();
      out.ok = got === msg && out.detail === "";
      if (!out.ok && !out.detail) out.detail = `echo ${JSON.stringify(got)}`;
      resolve(out);
    });
  });
}

/**
 * `RATE_PER_S` new connections a second until `stopAt()` ms (at most `LOAD_MAX_MS`); `events` run at
 * their offsets meanwhile, each given the ids of the connections in flight at that moment.
 */
async function runLoad(
  port: number,
  stopAt: () => number,
  events: Array<{ at: number; run: (inFlight: ReadonlySet<number>) => unknown }>,
): Promise<Outcome[]> {
  const t0 = Date.now();
  const all: Promise<Outcome>[] = [];
  const inFlight = new Set<number>();
  const pending = [...events].sort((a, b) => a.at - b.at);
  const running: Promise<unknown>[] = [];
  for (let i = 0; ; i++) {
    const offset = (i * 1000) / RATE_PER_S;
    if (offset >= Math.min(stopAt(), LOAD_MAX_MS)) break;
    while (pending.length > 0 && Date.now() - t0 >= pending[0]!.at) {
      running.push(Promise.resolve(pending.shift()!.run(new Set(inFlight))));
    }
    const wait = t0 + offset - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    inFlight.add(i);
    all.push(
      oneConnection(port, i).then((o) => {
        inFlight.delete(i);
        return o;
      }),
    );
  }
  for (const e of pending) running.push(Promise.resolve(e.run(new Set(inFlight))));
  await Promise.all(running);
  return Promise.all(all);
}

/** JSON log lines of a child sidecar's stderr, as they come. */
function collectLog(child: ChildProcess, into: Array<Record<string, unknown>>): void {
  let partial = "";
  child.stderr?.on("data", (d: Buffer) => {
    partial += d.toString();
    for (let nl = partial.indexOf("\n"); nl >= 0; nl = partial.indexOf("\n")) {
      try {
        into.push(JSON.parse(partial.slice(0, nl)) as Record<string, unknown>);
      } catch {
        // not a log line
      }
      partial = partial.slice(nl + 1);
    }
  });
}

interface EndpointView {
  key: string;
  state: string;
}

async function endpointState(admin: string, key: string): Promise<string> {
  const body = (await (await fetch(`http://${admin}/endpoints`)).json()) as Array<{
    endpoints: EndpointView[];
  }>;
  return body.flatMap((s) => s.endpoints).find((e) => e.key === key)?.state ?? "missing";
}

/** Poll the client's view of `key` every 100 ms until `until` resolves; the states seen, in order. */
async function watchStates(admin: string, key: string, until: Promise<unknown>): Promise<string[]> {
  const seen: string[] = [];
  let done = false;
  void until.then(() => {
    done = true;
  });
  for (let i = 0; i < 200 && !done; i++) {
    const s = await endpointState(admin, key).catch(() => "admin_error");
    if (seen.at(-1) !== s) seen.push(s);
    await new Promise((r) => setTimeout(r, 100));
  }
  return seen;
}

type What = "app" | "pod";

function count(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

async function scenario(
  t: TestContext,
  transport: Transport,
  what: What,
  healthChecks: boolean,
): Promise<void> {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const dir = await tempDir(t);
  const pods = await Promise.all([0, 1, 2].map((i) => startPod(t, dir, ca, i)));
  const explicit = await freePort();
  const admin = await freePort();
  const clientConfig = join(dir, "client.yaml");
  const endpoints = pods
    .map((p) => `      - { address: 127.0.0.1, port: ${p.app.port}, tunnelPort: ${p.tunnelPort} }`)
    .join("\n");
  await writeFile(
    clientConfig,
    `trustDomain: ${ca.trustDomain}
${await identityFiles(dir, ca, "client", "frontend")}
listeners:
  outbound: { enabled: false }
  inbound: { enabled: false }
  tunnel: { enabled: false }
  admin: { address: 127.0.0.1, port: ${admin} }
  metrics: { address: 127.0.0.1, port: 0 }
  explicit: [ { listen: "127.0.0.1:${explicit}", service: backend } ]
upstream: { transport: ${transport} }
log: { level: debug, accessLog: true }
${healthChecks ? "healthCheck: { interval: 1s, timeout: 1s, healthyThreshold: 1 }" : ""}
services:
  - name: backend
    ports: [8080]
    endpoints:
${endpoints}
`,
  );
  await Promise.all(pods.map((p) => startSidecarOf(t, p)));
  const client = spawnWeft(clientConfig);
  const clientLog: Array<Record<string, unknown>> = [];
  collectLog(client, clientLog);
  await within(30_000, "client sidecar ready", whenReady(t, client));

  const victim = pods[0]!;
  const key = `127.0.0.1:${victim.app.port}`;
  const startedAt = Date.now();
  let failedAt = 0;
  let backAt = 0;
  let inFlightAtKill = new Set<number>();
  let states: Promise<string[]> = Promise.resolve([]);
  let back!: () => void;
  const returned = new Promise<void>((r) => {
    back = r;
  });
  // Until the endpoint is back the load goes on (capped); then at least LOAD_AFTER_BACK_MS more.
  const stopAt = (): number =>
    backAt === 0 ? LOAD_MAX_MS : Math.max(LOAD_MS, backAt - startedAt + LOAD_AFTER_BACK_MS);
  const outcomes = await runLoad(explicit, stopAt, [
    {
      at: FAIL_AT_MS,
      run: (inFlight) => {
        failedAt = Date.now();
        if (what === "app") victim.app.stop();
        else {
          inFlightAtKill = new Set(inFlight);
          victim.child?.kill("SIGKILL");
          victim.app.kill();
        }
        states = watchStates(`127.0.0.1:${admin}`, key, returned);
      },
    },
    {
      at: BACK_AT_MS,
      run: async () => {
        await victim.app.start();
        if (what === "pod") await startSidecarOf(t, victim);
        backAt = Date.now();
        back();
      },
    },
  ]);

  const failed = outcomes.filter((o) => !o.ok);
  const seen = await states;
  const servedAgain = victim.app.served.find((ms) => ms >= backAt);
  const summary = {
    transport,
    what,
    healthChecks,
    connections: outcomes.length,
    failed: failed.length,
    failures: failed.slice(0, 5).map((o) => {
      const line = clientLog.find(
        (r) => r.msg === "connection closed" && r.src === `127.0.0.1:${o.localPort}`,
      );
      return `${o.id}: ${o.detail}${line ? ` (client sidecar: ${line.reason} ${line.endpoint ?? ""} ${line.err ?? ""})` : ""}`;
    }),
    backAtMs: backAt - startedAt,
    statesWhileDown: seen,
    servedAgainAfterMs: servedAgain === undefined ? null : servedAgain - backAt,
    // How the client sidecar saw it: close reasons, and the reasons of attempts that were retried.
    closeReasons: count(clientLog.filter((r) => r.msg === "connection closed").map((r) => String(r.reason))),
    serverReasons: count(
      pods.flatMap((p, i) =>
        p.log
          .filter((r) => r.msg === "connection closed" && r.reason !== "closed")
          .map((r) => `${i} ${r.reason}`),
      ),
    ),
    attemptFailures: count(
      clientLog.filter((r) => r.msg === "upstream attempt failed").map((r) => `${r.endpoint} ${r.reason}`),
    ),
  };
  t.diagnostic(JSON.stringify(summary));

  if (what === "app") {
    assert.deepEqual(summary.failures, [], "no client connection failed");
  } else {
    const beyond = failed.filter((o) => !inFlightAtKill.has(o.id));
    assert.deepEqual(
      beyond.map((o) => `${o.id}: ${o.detail}`),
      [],
      "every failed connection was in flight at the kill",
    );
  }
  assert.ok(failedAt > 0 && backAt > failedAt);
  assert.ok(seen.includes("ejected"), `the endpoint was ejected while down (states: ${seen.join(", ")})`);
  assert.ok(
    clientLog.some((r) => r.msg === "endpoint ejected" && r.endpoint === key),
    "the client sidecar logged the ejection",
  );
  if (healthChecks) {
    const unejected = clientLog.find(
      (r) => r.endpoint === key && r.via === "health_check" && String(r.msg).startsWith("endpoint returned"),
    );
    assert.ok(unejected, "a passing health check ended the ejection (its 30 s were not waited out)");
    assert.ok(servedAgain !== undefined, "the endpoint served client connections again");
    // Issue 15's acceptance bound for an app's return (1 s checks): back within 2 s. (A whole pod's
    // return also waits for its sidecar process to start, which the bound does not cover.)
    if (what === "app") {
      assert.ok(servedAgain - backAt <= 2_000, `served again ${servedAgain - backAt} ms after its return`);
    }
  }
}

for (const transport of TRANSPORTS) {
  test(`${transport}: an app that dies behind a live sidecar costs no client connection (defaults) and is ejected`, async (t) => {
    await scenario(t, transport, "app", false);
  });

  test(`${transport}: with health checks on, the endpoint whose app is down is ejected and serves again within 2 s of its return`, async (t) => {
    await scenario(t, transport, "app", true);
  });

  test(`${transport}: a whole pod killed fails no connection beyond those in flight at the kill, and returns by health check`, async (t) => {
    await scenario(t, transport, "pod", true);
  });
}
