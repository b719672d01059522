/**
 * Proxy pairs to hold Weft against, on loopback: an HAProxy mutual-TLS pair, a stunnel mutual-TLS pair and
 * a Weft pair (two `weft proxy` processes), each proxy its own child process, all with the same
 * certificates from one Weft CA (`writePeerCerts`). Every pair carries a list of named routes: a client
 * connects to the client-side proxy's plain listen port for a route, the client-side proxy opens mTLS
 * (TLS 1.3, peer certificate required both ways) to the server-side proxy, which connects to the route's
 * app port. Used by `bench/run.ts` and by the TCP-semantics test; this module owns those child processes
 * and their config files in the given work directory, and nothing else.
 *
 * Readiness is read from `/proc/net/tcp{,6}` (a LISTEN socket on each port), never by connecting: a probe
 * connection would travel through both proxies and reach the app, which the semantics test must not see.
 * (Weft's sidecars are also asked their admin port's /ready, which reaches no app.)
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { accessSync, constants, readFileSync, writeFileSync } from "node:fs";
import { delimiter, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import "reflect-metadata";
import { CertificateAuthority, createTrustDomain } from "../src/ca/authority.ts";
import { freePort } from "../src/core/ports.ts";
import { SIDECAR_NODE_FLAGS } from "../src/runtime/node-flags.ts";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));

/** The file names `writePeerCerts` writes into the work directory and the pairs read from it. */
export const PEER_CERT_FILES = {
  bundle: "bundle.pem",
  clientChain: "client-chain.pem",
  clientKey: "client-key.pem",
  /** Chain followed by key: HAProxy's `crt` wants both in one file. */
  clientCombined: "client-combined.pem",
  serverChain: "server-chain.pem",
  serverKey: "server-key.pem",
  serverCombined: "server-combined.pem",
} as const;

/** The SPIFFE identities of the two sides, as issued by `writePeerCerts`. */
export function peerIdentities(trustDomain: string): { client: string; server: string } {
  return {
    client: `spiffe://${trustDomain}/ns/default/sa/client`,
    server: `spiffe://${trustDomain}/ns/default/sa/server`,
  };
}

/**
 * Create a fresh trust domain and write a client and a server identity (chain, key, chain+key) and the
 * trust bundle into `workDir` under the names in `PEER_CERT_FILES`. Keys are written 0600.
 */
export async function writePeerCerts(workDir: string, trustDomain = "bench.local"): Promise<void> {
  const material = await createTrustDomain({ trustDomain });
  const ca = new CertificateAuthority(material);
  const ids = peerIdentities(trustDomain);
  for (const side of ["client", "server"] as const) {
    const issued = await ca.issue({ id: ids[side] });
    writeFileSync(join(workDir, `${side}-chain.pem`), issued.chainPem);
    writeFileSync(join(workDir, `${side}-key.pem`), issued.keyPem, { mode: 0o600 });
    writeFileSync(join(workDir, `${side}-combined.pem`), issued.chainPem + issued.keyPem, { mode: 0o600 });
  }
  writeFileSync(join(workDir, PEER_CERT_FILES.bundle), material.bundlePem);
}

/** One route through a pair: a name (letters, digits, `-`, `_`) and the app port it leads to. */
export interface PeerRoute {
  readonly name: string;
  readonly appPort: number;
  /**
   * Let the client-side proxy resume TLS sessions to the server-side proxy (default true, which is what
   * Weft's sidecars do). `false` forces a full handshake per connection: HAProxy `no-ssl-reuse`,
   * stunnel `sessionResume = no`. Weft has no such switch; for Weft this flag is ignored.
   */
  readonly sessionReuse?: boolean;
}

export interface PeerOptions {
  /** Holds the files of `writePeerCerts`; the pair writes its config files here too. */
  readonly workDir: string;
  readonly routes: readonly PeerRoute[];
  /** Where messages go: a missing binary, a proxy that exited early (default: console.error). */
  readonly onMessage?: (message: string) => void;
  /** How long to wait for every port to listen (default 20 s). */
  readonly readyTimeoutMs?: number;
}

export interface WeftPairOptions extends PeerOptions {
  /** The trust domain `writePeerCerts` was called with (default bench.local). */
  readonly trustDomain?: string;
  /** Extra Node flags for both Weft processes, e.g. `--cpu-prof`. */
  readonly nodeArgs?: readonly string[];
  /** The node flags instead of SIDECAR_NODE_FLAGS (to measure their trade-off; [] for none). */
  readonly nodeFlags?: readonly string[];
  /** Log level of both Weft processes (default warn; access log off). */
  readonly logLevel?: string;
  /**
   * `tls.sessionResumption` of the client side (default true). Weft's switch is per sidecar, not per
   * route, so a route's `sessionReuse` is ignored; start a second pair for full handshakes.
   */
  readonly sessionResumption?: boolean;
  /** `upstream.transport` of the client side (default: Weft's default, pooled). */
  readonly transport?: "per-connection" | "pooled";
  /** The Weft checkout whose bin/weft.js runs (default this one): `--baseline` compares two builds. */
  readonly root?: string;
}

/** A running pair. `stop()` ends both processes (SIGTERM, then SIGKILL after `graceMs`). */
export interface PeerPair {
  readonly name: string;
  /** What the binary says it is, e.g. "HAProxy 2.6.12-1+deb12u4", "stunnel 5.68", "Weft 0.1.0". */
  readonly version: string;
  /** Per route name: the client-side proxy's plain TCP listen port on 127.0.0.1. */
  readonly listenPorts: Readonly<Record<string, number>>;
  /** Per route name: the server-side proxy's mTLS port on 127.0.0.1 (Weft: one tunnel port for all). */
  readonly tunnelPorts: Readonly<Record<string, number>>;
  /** Server-side proxy first, then client-side. */
  readonly pids: readonly number[];
  /** Weft only: the admin (/metrics) ports, in the order of `pids`. */
  readonly adminPorts?: readonly number[];
  /**
   * Milliseconds from a proxy's spawn until it is ready (its ports listening; for Weft its /ready
   * answering 200: first certificate loaded, listeners up), the two started one after the other: the
   * slower of the two.
   */
  readonly readyMs: number;
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL both at once, synchronously (for a `process.on("exit")` handler). */
  kill(): void;
}

/** The first of `names` that is an executable file on PATH, /usr/sbin or /usr/bin; undefined if none. */
export function findBinary(names: readonly string[]): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/local/sbin", "/usr/sbin", "/usr/bin"];
  for (const name of names) {
    for (const dir of dirs) {
      if (!dir) continue;
      const path = join(dir, name);
      try {
        accessSync(path, constants.X_OK);
        return path;
      } catch {
        // not here
      }
    }
  }
  return undefined;
}

/** Ports with a LISTEN socket on this host (IPv4 and IPv6), read from /proc. */
export function listeningPorts(): Set<number> {
  const ports = new Set<number>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4 || cols[3] !== "0A") continue;
      const port = Number.parseInt(cols[1]!.split(":")[1] ?? "", 16);
      if (Number.isFinite(port)) ports.add(port);
    }
  }
  return ports;
}

interface Child {
  readonly proc: ChildProcess;
  readonly label: string;
  /** True until it is ready and again once we signal it: an exit then is not reported as unexpected. */
  quiet: boolean;
  stderrTail(): string;
}

function spawnChild(
  label: string,
  cmd: string,
  args: readonly string[],
  onMessage: (m: string) => void,
): Child {
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let tail = "";
  const keep = (d: Buffer): void => {
    tail += d.toString();
    if (tail.length > 20_000) tail = tail.slice(-10_000);
  };
  proc.stdout?.on("data", keep);
  proc.stderr?.on("data", keep);
  const child: Child = { proc, label, quiet: true, stderrTail: () => tail };
  proc.on("error", (err) => onMessage(`${label}: ${err.message}`));
  proc.once("exit", (code, signal) => {
    if (!child.quiet) onMessage(`${label} exited (code ${code}, signal ${signal}): ${tail.slice(-2000)}`);
  });
  return child;
}

/** Resolves once every port listens; rejects if a child exits first or the deadline passes. */
async function waitListening(children: readonly Child[], ports: readonly number[], timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const c of children) {
      if (c.proc.exitCode !== null || c.proc.signalCode !== null) {
        throw new Error(`${c.label} exited before it listened: ${c.stderrTail().slice(-2000)}`);
      }
    }
    const open = listeningPorts();
    const missing = ports.filter((p) => !open.has(p));
    if (missing.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `nothing listens on ${missing.join(", ")} after ${timeoutMs} ms: ${children.map((c) => `${c.label}: ${c.stderrTail().slice(-1000)}`).join("; ")}`,
      );
    }
    await sleep(5);
  }
}

async function stopChild(c: Child, graceMs: number): Promise<void> {
  const p = c.proc;
  if (p.exitCode !== null || p.signalCode !== null) return;
  c.quiet = true;
  const gone = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  const timer = setTimeout(() => p.kill("SIGKILL"), graceMs);
  await gone;
  clearTimeout(timer);
}

/** First line of `cmd args` (stdout, else stderr) matching `pattern`, or "unknown". */
function versionOf(cmd: string, args: readonly string[], pattern: RegExp): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 5000 });
  const text = `${r.stdout ?? ""}\n${r.stderr ?? ""}`;
  return pattern.exec(text)?.[1]?.trim() ?? "unknown";
}

function pairOf(
  name: string,
  version: string,
  children: readonly Child[],
  listenPorts: Record<string, number>,
  tunnelPorts: Record<string, number>,
): Omit<PeerPair, "readyMs"> {
  return {
    name,
    version,
    listenPorts,
    tunnelPorts,
    pids: children.map((c) => c.proc.pid!),
    async stop(graceMs = 10_000) {
      await Promise.all(children.map((c) => stopChild(c, graceMs)));
    },
    kill() {
      for (const c of children) {
        c.quiet = true;
        if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill("SIGKILL");
      }
    },
  };
}

/** One proxy process of a pair: what to run, the ports it listens on, Weft's /ready URL. */
interface ProxySpec {
  readonly label: string;
  readonly cmd: string;
  readonly args: readonly string[];
  readonly ports: readonly number[];
  readonly readyUrl?: string;
}

/**
 * Start the children one after the other, each timed from its spawn until it is ready (its ports
 * listening, and its /ready answering 200 for Weft): a proxy starts alone in its pod, so the pair's
 * `readyMs` is the slower of the two, not the time two processes need when they share the cores. On any
 * failure kill what was started and rethrow.
 */
async function launch(
  name: string,
  version: string,
  specs: readonly ProxySpec[],
  o: PeerOptions,
  listenPorts: Record<string, number>,
  tunnelPorts: Record<string, number>,
): Promise<PeerPair> {
  const say = o.onMessage ?? ((m: string) => console.error(m));
  const children: Child[] = [];
  let readyMs = 0;
  try {
    for (const s of specs) {
      const t0 = performance.now();
      const child = spawnChild(s.label, s.cmd, s.args, say);
      children.push(child);
      await waitListening([child], s.ports, o.readyTimeoutMs ?? 20_000);
      if (s.readyUrl) await waitReady([s.readyUrl], o.readyTimeoutMs ?? 20_000);
      readyMs = Math.max(readyMs, performance.now() - t0);
    }
  } catch (err) {
    pairOf(name, version, children, listenPorts, tunnelPorts).kill();
    throw err;
  }
  for (const c of children) c.quiet = false;
  return { ...pairOf(name, version, children, listenPorts, tunnelPorts), readyMs };
}

/** Polls each URL until it answers 200 (Weft's /ready). */
async function waitReady(urls: readonly string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const url of urls) {
    for (;;) {
      const status = await fetch(url).then(
        (r) => r.status,
        () => 0,
      );
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`${url} is not ready after ${timeoutMs} ms`);
      await sleep(5);
    }
  }
}

/**
 * Run `attempt` (pick ports, write configs, launch) up to three times while it fails because a port it
 * picked was taken in the meantime (`freePort` releases the port before the proxy binds it, and loopback
 * client connections draw from the same ephemeral range).
 */
async function retryOnPortClash(attempt: () => Promise<PeerPair>): Promise<PeerPair> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (err) {
      const clash = /address already in use|EADDRINUSE|cannot bind socket/i.test((err as Error).message);
      if (!clash || i >= 3) throw err;
    }
  }
}

function checkRoutes(routes: readonly PeerRoute[]): void {
  if (routes.length === 0) throw new Error("peers: at least one route is needed");
  const seen = new Set<string>();
  for (const r of routes) {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(r.name))
      throw new Error(`peers: bad route name ${JSON.stringify(r.name)}`);
    if (seen.has(r.name)) throw new Error(`peers: route ${r.name} twice`);
    if (!Number.isInteger(r.appPort) || r.appPort < 1 || r.appPort > 65_535)
      throw new Error(`peers: route ${r.name}: bad app port ${r.appPort}`);
    seen.add(r.name);
  }
}

async function portsFor(routes: readonly PeerRoute[]) {
  const listen: Record<string, number> = {};
  const tunnel: Record<string, number> = {};
  for (const r of routes) {
    listen[r.name] = await freePort();
    tunnel[r.name] = await freePort();
  }
  return { listen, tunnel };
}

/**
 * An HAProxy 2.x mTLS pair: `mode tcp`, `nbthread 1`, TLS 1.3 only, `verify required` on both sides
 * against the bundle, timeouts of an hour (connect 5 s). Undefined (and a message) if haproxy is missing.
 */
export async function startHaproxyPair(o: PeerOptions): Promise<PeerPair | undefined> {
  checkRoutes(o.routes);
  const bin = findBinary(["haproxy"]);
  if (!bin) {
    (o.onMessage ?? console.error)("peers: haproxy is not installed (apt-get install haproxy)");
    return undefined;
  }
  return retryOnPortClash(() => haproxyAttempt(o, bin));
}

async function haproxyAttempt(o: PeerOptions, bin: string): Promise<PeerPair> {
  const f = (k: keyof typeof PEER_CERT_FILES) => join(o.workDir, PEER_CERT_FILES[k]);
  const { listen, tunnel } = await portsFor(o.routes);
  const tls = `ssl ca-file ${f("bundle")} verify required ssl-min-ver TLSv1.3`;
  const head = [
    "global",
    "  maxconn 8000",
    "  nbthread 1",
    "defaults",
    "  mode tcp",
    "  timeout connect 5s",
    "  timeout client 1h",
    "  timeout server 1h",
    "",
  ].join("\n");
  const server = o.routes
    .map(
      (r) =>
        `listen ${r.name}\n  bind 127.0.0.1:${tunnel[r.name]} ${tls} crt ${f("serverCombined")}\n  server app 127.0.0.1:${r.appPort}\n`,
    )
    .join("");
  const client = o.routes
    .map(
      (r) =>
        `listen ${r.name}\n  bind 127.0.0.1:${listen[r.name]}\n  server s 127.0.0.1:${tunnel[r.name]} ${tls} crt ${f("clientCombined")}${r.sessionReuse === false ? " no-ssl-reuse" : ""}\n`,
    )
    .join("");
  writeFileSync(join(o.workDir, "haproxy-server.cfg"), head + server);
  writeFileSync(join(o.workDir, "haproxy-client.cfg"), head + client);
  return launch(
    "HAProxy",
    `HAProxy ${versionOf(bin, ["-v"], /HAProxy version (\S+)/)}`,
    [
      {
        label: "haproxy (server side)",
        cmd: bin,
        args: ["-db", "-f", join(o.workDir, "haproxy-server.cfg")],
        ports: Object.values(tunnel),
      },
      {
        label: "haproxy (client side)",
        cmd: bin,
        args: ["-db", "-f", join(o.workDir, "haproxy-client.cfg")],
        ports: Object.values(listen),
      },
    ],
    o,
    listen,
    tunnel,
  );
}

/**
 * A stunnel 5.x mTLS pair: foreground, no pid file, no syslog, TLS 1.3 only; the client side verifies
 * the server's chain (`verifyChain`, i.e. the old `verify = 2`), the server side requires and verifies a
 * client certificate (`requireCert`, `verifyChain`). Other settings are stunnel's defaults
 * (`TIMEOUTclose` 60 s, `TIMEOUTidle` 12 h). Undefined (and a message) if stunnel is missing.
 */
export async function startStunnelPair(o: PeerOptions): Promise<PeerPair | undefined> {
  checkRoutes(o.routes);
  const bin = findBinary(["stunnel4", "stunnel"]);
  if (!bin) {
    (o.onMessage ?? console.error)("peers: stunnel is not installed (apt-get install stunnel4)");
    return undefined;
  }
  return retryOnPortClash(() => stunnelAttempt(o, bin));
}

async function stunnelAttempt(o: PeerOptions, bin: string): Promise<PeerPair> {
  const f = (k: keyof typeof PEER_CERT_FILES) => join(o.workDir, PEER_CERT_FILES[k]);
  const { listen, tunnel } = await portsFor(o.routes);
  const head = ["foreground = yes", "pid =", "syslog = no", "debug = warning", ""].join("\n");
  const tls = [`CAfile = ${f("bundle")}`, "verifyChain = yes", "sslVersionMin = TLSv1.3"];
  const server = o.routes
    .map((r) =>
      [
        `[${r.name}]`,
        `accept = 127.0.0.1:${tunnel[r.name]}`,
        `connect = 127.0.0.1:${r.appPort}`,
        `cert = ${f("serverChain")}`,
        `key = ${f("serverKey")}`,
        ...tls,
        "requireCert = yes",
        "",
      ].join("\n"),
    )
    .join("");
  const client = o.routes
    .map((r) =>
      [
        `[${r.name}]`,
        "client = yes",
        `accept = 127.0.0.1:${listen[r.name]}`,
        `connect = 127.0.0.1:${tunnel[r.name]}`,
        `cert = ${f("clientChain")}`,
        `key = ${f("clientKey")}`,
        ...tls,
        ...(r.sessionReuse === false ? ["sessionResume = no"] : []),
        "",
      ].join("\n"),
    )
    .join("");
  writeFileSync(join(o.workDir, "stunnel-server.conf"), head + server);
  writeFileSync(join(o.workDir, "stunnel-client.conf"), head + client);
  return launch(
    "stunnel",
    `stunnel ${versionOf(bin, ["-version"], /stunnel (\d\S*) on/)}`,
    [
      {
        label: "stunnel (server side)",
        cmd: bin,
        args: [join(o.workDir, "stunnel-server.conf")],
        ports: Object.values(tunnel),
      },
      {
        label: "stunnel (client side)",
        cmd: bin,
        args: [join(o.workDir, "stunnel-client.conf")],
        ports: Object.values(listen),
      },
    ],
    o,
    listen,
    tunnel,
  );
}

/**
 * A Weft pair as two `weft proxy` processes (bin/weft.js): the server side's tunnel port leads to the
 * apps; the client side has one explicit listener per route, each a service whose port is the route's
 * app port and whose identity is the server's. Inbound/outbound capture off.
 */
export async function startWeftPair(o: WeftPairOptions): Promise<PeerPair> {
  checkRoutes(o.routes);
  return retryOnPortClash(() => weftAttempt(o));
}

async function weftAttempt(o: WeftPairOptions): Promise<PeerPair> {
  const td = o.trustDomain ?? "bench.local";
  const f = (k: keyof typeof PEER_CERT_FILES) => join(o.workDir, PEER_CERT_FILES[k]);
  const [tunnelS, adminS, tunnelC, adminC] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const listen: Record<string, number> = {};
  const tunnel: Record<string, number> = {};
  for (const r of o.routes) {
    listen[r.name] = await freePort();
    tunnel[r.name] = tunnelS;
  }
  const common = (side: "client" | "server") => [
    `trustDomain: ${td}`,
    "identity:",
    `  files: { cert: ${f(side === "client" ? "clientChain" : "serverChain")}, key: ${f(side === "client" ? "clientKey" : "serverKey")}, bundle: ${f("bundle")} }`,
    `log: { level: ${o.logLevel ?? "warn"}, accessLog: false }`,
    ...(side === "client" && o.sessionResumption === false ? ["tls: { sessionResumption: false }"] : []),
    ...(side === "client" && o.transport ? [`upstream: { transport: ${o.transport} }`] : []),
    "listeners:",
    "  outbound: { enabled: false }",
    "  inbound: { enabled: false }",
  ];
  const serverId = peerIdentities(td).server;
  // One file per pair: a sidecar reloads its weft.yaml when the file changes, so a later pair writing
  // the same name would rewire the running ones (seen: resets in warm-up with four pairs).
  writeFileSync(
    join(o.workDir, `weft-server-${tunnelS}.yaml`),
    [
      ...common("server"),
      `  tunnel: { address: 127.0.0.1, port: ${tunnelS}, maxConnections: 100000 }`,
      `  admin: { address: 127.0.0.1, port: ${adminS} }`,
      "  metrics: { enabled: false }",
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(o.workDir, `weft-client-${tunnelS}.yaml`),
    [
      ...common("client"),
      `  tunnel: { address: 127.0.0.1, port: ${tunnelC} }`,
      `  admin: { address: 127.0.0.1, port: ${adminC} }`,
      "  metrics: { enabled: false }",
      "  explicit:",
      ...o.routes.map((r) => `    - { listen: "127.0.0.1:${listen[r.name]}", service: ${r.name} }`),
      "services:",
      ...o.routes.map(
        (r) =>
          `  - { name: ${r.name}, ports: [${r.appPort}], identity: "${serverId}", endpoints: [ { address: 127.0.0.1, tunnelPort: ${tunnelS} } ] }`,
      ),
      "",
    ].join("\n"),
  );
  const root = o.root ?? ROOT;
  const weft = join(root, "bin/weft.js");
  const args = (side: string) => [
    ...(o.nodeFlags ?? SIDECAR_NODE_FLAGS),
    ...(o.nodeArgs ?? []),
    weft,
    "proxy",
    "--config",
    join(o.workDir, `weft-${side}-${tunnelS}.yaml`),
  ];
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version?: string };
  const pair = await launch(
    "Weft",
    `Weft ${pkg.version ?? "unknown"}`,
    [
      {
        label: "weft (server side)",
        cmd: process.execPath,
        args: args("server"),
        ports: [tunnelS!],
        readyUrl: `http://127.0.0.1:${adminS}/ready`,
      },
      {
        label: "weft (client side)",
        cmd: process.execPath,
        args: args("client"),
        ports: Object.values(listen),
        readyUrl: `http://127.0.0.1:${adminC}/ready`,
      },
    ],
    o,
    listen,
    tunnel,
  );
  return { ...pair, adminPorts: [adminS!, adminC!] };
}
