/**
 * `npm run demo`: a whole mesh on loopback, no root and no Docker. It creates a trust domain, runs the
 * CA server, gives each sidecar a join token, starts three backend apps and four sidecars (each its own
 * `weft proxy` process, as users run them), sends traffic through the frontend's explicit listener,
 * stops one backend's sidecar to show retries and an ejection, brings it back, and prints where the
 * metrics are. Everything it starts is stopped by PID on exit or Ctrl-C.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { CertificateAuthority, createTrustDomain } from "../ca/authority.ts";
import { createCaServer } from "../ca/server.ts";
import { CaStore } from "../ca/store.ts";
import { TokenStore } from "../ca/tokens.ts";
import { systemClock } from "../core/clock.ts";
import { silentLogger } from "../core/log.ts";
import { freePort } from "../core/ports.ts";
import { SIDECAR_NODE_FLAGS } from "../runtime/node-flags.ts";
import {
  type EndpointView,
  endpointLine,
  endpointsIn,
  identityLine,
  metricsHighlights,
  Spread,
} from "./report.ts";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const TD = "weft.local";

export interface DemoOptions {
  readonly dir: string;
  readonly keepRunning: boolean;
  readonly out: (line: string) => void;
  /** Resolves when the user asks to stop (Ctrl-C). */
  readonly interrupted: Promise<void>;
}

/** A backend app that knows nothing of Weft: answers every line with its own name. */
function startBackend(name: string, port: number): Promise<Server> {
  const server = createServer((socket) => {
    socket.on("error", () => {});
    socket.on("data", (d) => socket.write(`${name} got ${d.toString().trim()}\n`));
  });
  return new Promise((res) => server.listen(port, "127.0.0.1", () => res(server)));
}

/** One request through the mesh: connect to the frontend sidecar, send a line, read the answer. */
function request(port: number, text: string, timeoutMs = 5000): Promise<string> {
  return new Promise((res, rej) => {
    const s = connect({ host: "127.0.0.1", port });
    let got = "";
    const timer = setTimeout(() => {
      s.destroy();
      rej(new Error("timed out"));
    }, timeoutMs);
    s.on("data", (d) => {
      got += d;
      if (got.includes("\n")) {
        clearTimeout(timer);
        s.end();
        res(got.trim());
      }
    });
    s.on("error", (e) => {
      clearTimeout(timer);
      rej(e);
    });
    s.on("close", () => {
      clearTimeout(timer);
      if (!got.includes("\n")) rej(new Error("closed without an answer"));
    });
    s.write(`${text}\n`);
  });
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await sleep(100);
  }
}

const isReady = async (admin: number) => (await get(admin, "/ready")).status === 200;

interface SidecarProc {
  name: string;
  /** The service account: backend-1..3 all run as `backend`. */
  sa: string;
  dir: string;
  admin: number;
  tunnel: number;
  config: string;
  child?: ChildProcess;
  log: string;
}

type CaServer = Awaited<ReturnType<typeof createCaServer>>;

/** Everything the demo started: stopped (children by PID) whatever happens. */
class Started {
  readonly children = new Set<ChildProcess>();
  readonly servers: Server[] = [];
  ca: CaServer | undefined;

  async stopAll(): Promise<void> {
    for (const c of this.children) if (c.exitCode === null) c.kill("SIGTERM");
    await Promise.all(
      [...this.children].map((c) =>
        c.exitCode === null ? new Promise((r) => c.once("exit", r)) : Promise.resolve(),
      ),
    );
    for (const s of this.servers) s.close();
    await this.ca?.close();
  }
}

/** Runs a step unless the user asked to stop (Ctrl-C) before it began. */
type Step = <T>(fn: () => Promise<T>) => Promise<T>;

function stepsUntil(interrupted: Promise<void>): Step {
  let stopped = false;
  void interrupted.then(() => {
    stopped = true;
  });
  return async (fn) => {
    if (stopped) throw new Error("interrupted");
    return fn();
  };
}

/** The mesh on loopback: its CA, the frontend's explicit listener, the backend apps and four sidecars. */
interface LoopbackMesh {
  readonly caUrl: string;
  /** The frontend app's way in: an explicit listener of the frontend sidecar for service `backend`. */
  readonly explicit: number;
  readonly appPorts: readonly [number, number, number];
  readonly sidecars: readonly [SidecarProc, SidecarProc, SidecarProc, SidecarProc];
}

/** The trust domain on disk and its CA server, which `started` stops. */
async function startCa(dir: string, started: Started, out: (line: string) => void) {
  const material = await createTrustDomain({ trustDomain: TD });
  const caDir = join(dir, "ca");
  await new CaStore(caDir).save(material);
  const tokens = new TokenStore({ file: join(caDir, "tokens.json"), clock: systemClock, trustDomain: TD });
  const ca = await createCaServer({
    ca: new CertificateAuthority(material),
    tokens,
    logger: silentLogger,
    clock: systemClock,
    listen: "127.0.0.1:0",
  });
  started.ca = ca;
  out(`   trust domain ${TD}; CA server ${ca.url}; CA files in ${caDir}`);
  return { material, tokens, ca };
}

/** A sidecar's directory with its single-use join token and the trust bundle, and its ports. */
async function enrolSidecar(
  dir: string,
  name: string,
  tokens: TokenStore,
  bundlePem: string,
): Promise<SidecarProc> {
  const own = join(dir, name);
  await mkdir(own, { recursive: true });
  const sa = name.startsWith("backend") ? "backend" : name;
  const created = await tokens.create({
    idPattern: `spiffe://${TD}/ns/default/sa/${sa}`,
    ttlMs: 600_000,
    maxUses: 1,
  });
  await writeFile(join(own, "token"), `${created.token}\n`, { mode: 0o600 });
  await writeFile(join(own, "bundle.pem"), bundlePem);
  return {
    name,
    sa,
    dir: own,
    admin: await freePort(),
    tunnel: await freePort(),
    config: join(own, "weft.yaml"),
    log: "",
  };
}

/** The weft.yaml of sidecar `s`: the CA identity source, the `backend` service and its outlier settings. */
function sidecarConfig(s: SidecarProc, mesh: LoopbackMesh): string {
  const [front, s1, s2, s3] = mesh.sidecars;
  const [b1App, b2App, b3App] = mesh.appPorts;
  return [
    `trustDomain: ${TD}`,
    "identity:",
    "  ca:",
    `    url: ${mesh.caUrl}`,
    `    bundle: ${join(s.dir, "bundle.pem")}`,
    `    id: spiffe://${TD}/ns/default/sa/${s.sa}`,
    `    tokenFile: ${join(s.dir, "token")}`,
    `    stateDir: ${join(s.dir, "state")}`,
    "listeners:",
    "  outbound: { enabled: false }",
    "  inbound: { enabled: false }",
    `  tunnel: { address: 127.0.0.1, port: ${s.tunnel} }`,
    `  admin: { address: 127.0.0.1, port: ${s.admin} }`,
    "  metrics: { enabled: false }",
    s === front
      ? `  explicit: [ { listen: "127.0.0.1:${mesh.explicit}", service: backend } ]`
      : "  explicit: []",
    "outlierDetection: { consecutiveFailures: 2, baseEjectionTime: 4s, maxEjectionPercent: 34 }",
    "retries: { attempts: 3, deadline: 5s }",
    "policy:",
    "  default: deny",
    `  rules: [ { allow: ["spiffe://${TD}/ns/default/sa/frontend"] } ]`,
    "services:",
    "  - name: backend",
    "    ports: [8080]",
    "    endpoints:",
    `      - { address: 127.0.0.1, port: ${b1App}, tunnelPort: ${s1.tunnel} }`,
    `      - { address: 127.0.0.1, port: ${b2App}, tunnelPort: ${s2.tunnel} }`,
    `      - { address: 127.0.0.1, port: ${b3App}, tunnelPort: ${s3.tunnel} }`,
    "log: { level: warn }",
    "",
  ].join("\n");
}

/** Step 1: the CA, three backend apps, and four enrolled sidecars with their configs written (not started). */
async function buildMesh(dir: string, started: Started, out: (line: string) => void): Promise<LoopbackMesh> {
  const { material, tokens, ca } = await startCa(dir, started, out);
  const [b1App, b2App, b3App, explicit] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  started.servers.push(
    await startBackend("backend-1", b1App),
    await startBackend("backend-2", b2App),
    await startBackend("backend-3", b3App),
  );
  const sidecars: SidecarProc[] = [];
  for (const name of ["frontend", "backend-1", "backend-2", "backend-3"])
    sidecars.push(await enrolSidecar(dir, name, tokens, material.bundlePem));
  out(
    "   join tokens made for spiffe://weft.local/ns/default/sa/frontend and .../sa/backend (single use, 10 min)",
  );
  const mesh: LoopbackMesh = {
    caUrl: ca.url,
    explicit,
    appPorts: [b1App, b2App, b3App],
    sidecars: sidecars as [SidecarProc, SidecarProc, SidecarProc, SidecarProc],
  };
  for (const s of mesh.sidecars) await writeFile(s.config, sidecarConfig(s, mesh));
  return mesh;
}

/** Start sidecar `s` as its own `weft proxy` process, as users run it; its output goes to `s.log`. */
function spawnSidecar(s: SidecarProc, started: Started): void {
  const child = spawn(
    process.execPath,
    [...SIDECAR_NODE_FLAGS, join(ROOT, "bin/weft.js"), "proxy", "--config", s.config],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  s.log = "";
  child.stdout?.on("data", (d) => {
    s.log += d;
  });
  child.stderr?.on("data", (d) => {
    s.log += d;
  });
  started.children.add(child);
  child.once("exit", () => started.children.delete(child));
  s.child = child;
}

/** Step 2: wait for each sidecar to be ready and print the identity the CA gave it. */
async function showIdentities(sidecars: readonly SidecarProc[], step: Step, out: (line: string) => void) {
  for (const s of sidecars) {
    await step(() => waitFor(`${s.name} to be ready (log: ${s.log.slice(-500)})`, () => isReady(s.admin)));
    const certs = (await get(s.admin, "/certs")).body;
    out(identityLine(s.name, certs, `admin http://127.0.0.1:${s.admin}`));
  }
}

/** `n` connections one after the other through the frontend's explicit listener, tallied by who answered. */
async function burst(port: number, n: number): Promise<Spread> {
  const spread = new Spread();
  for (let i = 0; i < n; i++) {
    try {
      const answer = await request(port, `request ${i}`);
      spread.answered(answer.split(" ")[0]!);
    } catch {
      spread.fail();
    }
  }
  return spread;
}

async function frontendEndpoints(front: SidecarProc): Promise<EndpointView[]> {
  return endpointsIn((await get(front.admin, "/endpoints")).body);
}

/** Step 5: a restarted sidecar is ready and the frontend no longer has any endpoint ejected. */
async function awaitReturn(front: SidecarProc, back: SidecarProc, step: Step): Promise<void> {
  await step(() => waitFor(`${back.name} to be ready`, () => isReady(back.admin)));
  await step(() =>
    waitFor(
      `${back.name} to return from ejection`,
      async () => (await frontendEndpoints(front)).every((e) => e.state !== "ejected"),
      20_000,
    ),
  );
}

export async function runDemo(o: DemoOptions): Promise<void> {
  const { out } = o;
  const started = new Started();
  const step = stepsUntil(o.interrupted);
  try {
    await rm(o.dir, { recursive: true, force: true });
    await mkdir(o.dir, { recursive: true });
    out("== 1. A trust domain and its CA server");
    const mesh = await buildMesh(o.dir, started, out);
    const [front, s1, , s3] = mesh.sidecars;

    out("\n== 2. Four sidecars, each fetching its certificate from the CA with its join token");
    for (const s of mesh.sidecars) spawnSidecar(s, started);
    await showIdentities(mesh.sidecars, step, out);

    out(`\n== 3. The frontend app connects to 127.0.0.1:${mesh.explicit}; Weft carries it over mutual TLS`);
    const r1 = await step(() => burst(mesh.explicit, 30));
    out(`   30 connections, round-robin over three endpoints → ${r1}`);

    out("\n== 4. backend-3's sidecar stops (killed): connections retry on the others, backend-3 is ejected");
    s3.child?.kill("SIGKILL");
    await new Promise((r) => s3.child?.once("exit", r));
    const r2 = await step(() => burst(mesh.explicit, 30));
    out(`   30 connections → ${r2}`);
    for (const e of await frontendEndpoints(front)) out(endpointLine(e, 16));

    out(
      "\n== 5. backend-3's sidecar comes back (renewing with its stored certificate); after the ejection it gets traffic again",
    );
    spawnSidecar(s3, started);
    await awaitReturn(front, s3, step);
    const r3 = await step(() => burst(mesh.explicit, 30));
    out(`   30 connections → ${r3}`);

    out("\n== 6. Metrics (Prometheus text) on every sidecar's admin port");
    const metrics = [
      (await get(s1.admin, "/metrics")).body,
      (await get(front.admin, "/metrics")).body,
    ] as const;
    for (const line of metricsHighlights(...metrics, 2)) out(line);
    out(`   curl http://127.0.0.1:${front.admin}/metrics   (also /ready /live /config /certs /endpoints)`);
    if (o.keepRunning) {
      out(`\nThe mesh keeps running: try  nc 127.0.0.1 ${mesh.explicit}  — Ctrl-C stops everything.`);
      await o.interrupted;
    }
    out("\nDone: stopping every process the demo started.");
  } finally {
    await started.stopAll();
  }
}
