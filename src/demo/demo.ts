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

interface SidecarProc {
  name: string;
  admin: number;
  tunnel: number;
  config: string;
  child?: ChildProcess;
  log: string;
}

export async function runDemo(o: DemoOptions): Promise<void> {
  const { out } = o;
  const children = new Set<ChildProcess>();
  const servers: Server[] = [];
  let ca: Awaited<ReturnType<typeof createCaServer>> | undefined;
  const stopAll = async () => {
    for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
    await Promise.all(
      [...children].map((c) =>
        c.exitCode === null ? new Promise((r) => c.once("exit", r)) : Promise.resolve(),
      ),
    );
    for (const s of servers) s.close();
    await ca?.close();
  };
  let interrupted = false;
  void o.interrupted.then(() => {
    interrupted = true;
  });
  const step = async <T>(fn: () => Promise<T>): Promise<T> => {
    if (interrupted) throw new Error("interrupted");
    return fn();
  };

  try {
    await rm(o.dir, { recursive: true, force: true });
    await mkdir(o.dir, { recursive: true });
    out("== 1. A trust domain and its CA server");
    const material = await createTrustDomain({ trustDomain: TD });
    const caDir = join(o.dir, "ca");
    await new CaStore(caDir).save(material);
    const tokens = new TokenStore({ file: join(caDir, "tokens.json"), clock: systemClock, trustDomain: TD });
    ca = await createCaServer({
      ca: new CertificateAuthority(material),
      tokens,
      logger: silentLogger,
      clock: systemClock,
      listen: "127.0.0.1:0",
    });
    out(`   trust domain ${TD}; CA server ${ca.url}; CA files in ${caDir}`);

    const [b1App, b2App, b3App, explicit] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    servers.push(
      await startBackend("backend-1", b1App),
      await startBackend("backend-2", b2App),
      await startBackend("backend-3", b3App),
    );
    const sidecars: SidecarProc[] = [];
    for (const name of ["frontend", "backend-1", "backend-2", "backend-3"]) {
      const dir = join(o.dir, name);
      await mkdir(dir, { recursive: true });
      const sa = name.startsWith("backend") ? "backend" : name;
      const id = `spiffe://${TD}/ns/default/sa/${sa}`;
      const created = await tokens.create({ idPattern: id, ttlMs: 600_000, maxUses: 1 });
      await writeFile(join(dir, "token"), `${created.token}\n`, { mode: 0o600 });
      await writeFile(join(dir, "bundle.pem"), material.bundlePem);
      sidecars.push({
        name,
        admin: await freePort(),
        tunnel: await freePort(),
        config: join(dir, "weft.yaml"),
        log: "",
      });
    }
    out(
      "   join tokens made for spiffe://weft.local/ns/default/sa/frontend and .../sa/backend (single use, 10 min)",
    );

    const [front, s1, s2, s3] = sidecars as [SidecarProc, SidecarProc, SidecarProc, SidecarProc];
    for (const s of sidecars) {
      const dir = join(o.dir, s.name);
      const sa = s.name.startsWith("backend") ? "backend" : s.name;
      const yaml = [
        `trustDomain: ${TD}`,
        "identity:",
        "  ca:",
        `    url: ${ca.url}`,
        `    bundle: ${join(dir, "bundle.pem")}`,
        `    id: spiffe://${TD}/ns/default/sa/${sa}`,
        `    tokenFile: ${join(dir, "token")}`,
        `    stateDir: ${join(dir, "state")}`,
        "listeners:",
        "  outbound: { enabled: false }",
        "  inbound: { enabled: false }",
        `  tunnel: { address: 127.0.0.1, port: ${s.tunnel} }`,
        `  admin: { address: 127.0.0.1, port: ${s.admin} }`,
        "  metrics: { enabled: false }",
        s === front
          ? `  explicit: [ { listen: "127.0.0.1:${explicit}", service: backend } ]`
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
      await writeFile(s.config, yaml);
    }

    const startSidecar = (s: SidecarProc) => {
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
      children.add(child);
      child.once("exit", () => children.delete(child));
      s.child = child;
    };

    out("\n== 2. Four sidecars, each fetching its certificate from the CA with its join token");
    for (const s of sidecars) startSidecar(s);
    for (const s of sidecars) {
      await step(() =>
        waitFor(
          `${s.name} to be ready (log: ${s.log.slice(-500)})`,
          async () => (await get(s.admin, "/ready")).status === 200,
        ),
      );
      const certs = JSON.parse((await get(s.admin, "/certs")).body) as Record<string, unknown>;
      out(
        `   ${s.name.padEnd(10)} ${String(certs.spiffeId ?? certs.identity ?? "")}  serial ${String(certs.serial ?? "").slice(0, 12)}…  admin http://127.0.0.1:${s.admin}`,
      );
    }

    const burst = async (n: number) => {
      const tally = new Map<string, number>();
      let failed = 0;
      for (let i = 0; i < n; i++) {
        try {
          const answer = await request(explicit, `request ${i}`);
          const who = answer.split(" ")[0]!;
          tally.set(who, (tally.get(who) ?? 0) + 1);
        } catch {
          failed++;
        }
      }
      return { tally, failed };
    };
    const show = (r: { tally: Map<string, number>; failed: number }) =>
      `${[...r.tally]
        .sort()
        .map(([k, v]) => `${k}: ${v}`)
        .join(", ")}${r.failed ? `, failed: ${r.failed}` : ", failed: 0"}`;

    out(`\n== 3. The frontend app connects to 127.0.0.1:${explicit}; Weft carries it over mutual TLS`);
    const r1 = await step(() => burst(30));
    out(`   30 connections, round-robin over three endpoints → ${show(r1)}`);

    out("\n== 4. backend-3's sidecar stops (killed): connections retry on the others, backend-3 is ejected");
    s3.child?.kill("SIGKILL");
    await new Promise((r) => s3.child?.once("exit", r));
    const r2 = await step(() => burst(30));
    out(`   30 connections → ${show(r2)}`);
    const endpoints = JSON.parse((await get(front.admin, "/endpoints")).body) as Array<{
      endpoints: Array<{ key: string; state: string; timesEjected: number }>;
    }>;
    for (const e of endpoints[0]?.endpoints ?? [])
      out(`   endpoint ${e.key.padEnd(16)} ${e.state} (ejected ${e.timesEjected}×)`);

    out(
      "\n== 5. backend-3's sidecar comes back (renewing with its stored certificate); after the ejection it gets traffic again",
    );
    startSidecar(s3);
    await step(() =>
      waitFor("backend-3 to be ready", async () => (await get(s3.admin, "/ready")).status === 200),
    );
    await step(() =>
      waitFor(
        "backend-3 to return from ejection",
        async () => {
          const eps = JSON.parse((await get(front.admin, "/endpoints")).body) as typeof endpoints;
          return (eps[0]?.endpoints ?? []).every((e) => e.state !== "ejected");
        },
        20_000,
      ),
    );
    const r3 = await step(() => burst(30));
    out(`   30 connections → ${show(r3)}`);

    out("\n== 6. Metrics (Prometheus text) on every sidecar's admin port");
    const metrics = (await get(s1.admin, "/metrics")).body.split("\n");
    for (const line of metrics
      .filter((l) => /^weft_tcp_connections_closed_total\{direction="inbound"/.test(l))
      .slice(0, 2)) {
      out(`   backend-1: ${line}`);
    }
    const fm = (await get(front.admin, "/metrics")).body.split("\n");
    for (const line of fm.filter((l) =>
      /^weft_(outlier_ejections_total|upstream_connect_retries_total)\{/.test(l),
    )) {
      out(`   frontend:  ${line}`);
    }
    out(`   curl http://127.0.0.1:${front.admin}/metrics   (also /ready /live /config /certs /endpoints)`);
    if (o.keepRunning) {
      out(`\nThe mesh keeps running: try  nc 127.0.0.1 ${explicit}  — Ctrl-C stops everything.`);
      await o.interrupted;
    }
    out("\nDone: stopping every process the demo started.");
  } finally {
    await stopAll();
  }
}
