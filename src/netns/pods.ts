/**
 * A small cluster of "pods" in network namespaces, run by the same scripts as docker-compose
 * (examples/pod/ca.sh, init.sh, sidecar.sh): a CA pod, and pods that each hold an unmodified app, the
 * capture rules (init.sh, as root in the namespace) and a Weft sidecar (sidecar.sh, as UID 1337 via
 * setpriv). Discovery is a services file naming backends by pod IP. The namespace tests and
 * `npm run demo -- --transparent` both use it. `destroy()` kills every process it started (by PID) and
 * deletes every namespace, also after a failure. Needs root.
 */
import { chmod, chown, mkdir, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { WeftError } from "../core/errors.ts";
import { createNetwork, type Host, type Spawned, type TestNetwork } from "./namespaces.ts";

/** The checkout (or install) holding bin/ and examples/pod/: the scripts' WEFT_HOME. */
export const WEFT_HOME = resolve(fileURLToPath(new URL("../..", import.meta.url)));
/** The sidecar's UID, exempt from capture (the scripts' default too). */
export const PROXY_UID = 1337;
const ADMIN = 15_000;
const CA_PORT = 15_443;

/**
 * Poll `check` every 100 ms until it is true, or throw after `timeoutMs` naming `what`. `gone` (e.g. a
 * process's `exited`) ends the wait early with an error: there is no point waiting for a dead process.
 */
export async function pollUntil(
  what: string | (() => string),
  check: () => Promise<boolean>,
  timeoutMs = 30_000,
  gone?: Promise<unknown>,
): Promise<void> {
  const describe = () => (typeof what === "string" ? what : what());
  let died: unknown;
  let isGone = false;
  void gone?.then((v) => {
    isGone = true;
    died = v;
  });
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (isGone) {
      throw new WeftError("E_NOT_READY", `exited (${String(died)}) while waiting for ${describe()}`, {
        reason: "exited",
      });
    }
    if (Date.now() > deadline) {
      throw new WeftError("E_TIMEOUT", `timed out after ${timeoutMs} ms waiting for ${describe()}`, {
        reason: "poll_timeout",
      });
    }
    await sleep(100);
  }
}

/** How to start an app: a command and its arguments, run as root in the pod's namespace. */
export interface AppSpec {
  readonly cmd: string;
  readonly args: readonly string[];
  /** A TCP port the app listens on; the pod waits until it is bound. */
  readonly port?: number;
  /** Files to write into the pod's directory first (e.g. nginx.conf). */
  readonly files?: Readonly<Record<string, string>>;
}

/** Ready-made unmodified apps from Debian and Node. `dir` is the pod's own directory. */
export const apps = {
  /** nginx (one process, no master) answering every request with `<text>\n`. */
  nginx(dir: string, port: number, text: string): AppSpec {
    const conf = [
      "daemon off;",
      "master_process off;",
      `pid ${join(dir, "nginx.pid")};`,
      "error_log stderr warn;",
      "events { worker_connections 512; }",
      "http {",
      "  access_log off;",
      ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map(
        (k) => `  ${k}_temp_path ${join(dir, `nginx-${k}`)};`,
      ),
      `  server { listen 0.0.0.0:${port}; default_type text/plain; return 200 "${text}\\n"; }`,
      "}",
      "",
    ].join("\n");
    return {
      cmd: "nginx",
      args: ["-e", "stderr", "-p", dir, "-c", join(dir, "nginx.conf")],
      port,
      files: { "nginx.conf": conf },
    };
  },
  /** A plain Node HTTP server answering `<text> <url>`. */
  node(port: number, text: string): AppSpec {
    return {
      cmd: process.execPath,
      args: [
        "-e",
        `require("http").createServer((q, r) => r.end(${JSON.stringify(text)} + " " + q.url + "\\n")).listen(${port}, "0.0.0.0")`,
      ],
      port,
    };
  },
  /** redis-server without persistence, bound to `bind` (default every address; a pod IP for an app bound to it alone). */
  redis(dir: string, port: number, bind = "0.0.0.0"): AppSpec {
    return {
      cmd: "redis-server",
      // No password in a test pod: protected mode would refuse every client that is not on loopback.
      args: [
        "--port",
        String(port),
        "--bind",
        bind,
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
      ],
      port,
    };
  },
  /** A shell loop that asks `url` every `everyS` seconds and prints each answer (or `failed`). */
  curlLoop(url: string, everyS = 0.2): AppSpec {
    return {
      cmd: "sh",
      args: ["-c", `while true; do curl -s --max-time 3 ${url} || echo failed; sleep ${everyS}; done`],
    };
  },
} as const;

/** One pod to add. Without `sa` it has no sidecar and no capture rules (an outsider). */
export interface PodSpec {
  readonly name: string;
  /** The workload's service account: its identity is spiffe://<td>/ns/default/sa/<sa>. */
  readonly sa?: string;
  /** The app, given the pod's directory (for config files) and IPv4 address (for apps bound to it). */
  readonly app?: (dir: string, ip4: string) => AppSpec;
  /** Where the sidecar reaches the app (APP_ADDRESS): `pod` for the pod's IP; default 127.0.0.1. */
  readonly appAddress?: "pod" | string;
  /** File identities (IDENTITY_DIR) instead of the CA server: a folder with key.pem, chain.pem, bundle.pem. */
  readonly identityDir?: string;
  readonly inboundMode?: "strict" | "permissive";
  /** More top-level weft.yaml lines (WEFT_EXTRA_YAML), e.g. a `policy:` block. */
  readonly extraYaml?: readonly string[];
  /** The sidecar's whole `discovery:` value (WEFT_DISCOVERY_YAML); default the cluster's services file. */
  readonly discoveryYaml?: string;
}

/** A running pod. */
export interface Pod {
  readonly name: string;
  readonly host: Host;
  readonly ns: string;
  readonly ip4: string;
  readonly dir: string;
  readonly spec: PodSpec;
  /** The SPIFFE ID of its sidecar, if it has one. */
  readonly identity?: string;
  app?: Spawned;
  sidecar?: Spawned;
  /** Run a command in the pod's namespace (as root, so it is captured like the app). */
  exec(cmd: string, args: string[]): Promise<string>;
  /** GET a path of the sidecar's admin port (from inside the pod): body. */
  admin(path: string): Promise<string>;
  /** Kill the app and the sidecar (SIGKILL: as if the pod died). */
  stop(): Promise<void>;
  /** Start the app and the sidecar again (the sidecar renews with the certificate in its state dir). */
  start(): Promise<void>;
}

/**
 * The `backend` service of the demo and the namespace tests: round-robin over `pods` behind `vip`:8080,
 * with short outlier-detection and health-check times so an ejection and a return fit in seconds.
 */
export function backendService(
  vip: string,
  pods: readonly Pick<Pod, "ip4">[],
  baseEjectionTime: string,
): Record<string, unknown> {
  return {
    name: "backend",
    ports: [8080],
    vips: [vip],
    balancer: "round-robin",
    endpoints: pods.map((b) => ({ address: b.ip4 })),
    retries: { attempts: 3, deadline: "5s" },
    outlierDetection: { consecutiveFailures: 2, baseEjectionTime, maxEjectionPercent: 50 },
    // A check is a tunnel to the app through the pod's sidecar (handshake, PROXY header, the app's
    // accept, the answer): 500 ms was too tight on a busy 2-core machine (the demo test saw a healthy
    // pod marked unhealthy), so the timeout is 2 s; a stopped pod still fails at once (refused).
    healthCheck: { interval: "1s", timeout: "2s", healthyThreshold: 1, unhealthyThreshold: 2 },
  };
}

/** One HTTP GET with curl from inside a pod; never throws: `failed: ...` when curl fails. */
export async function curlFrom(pod: Pod, url: string, maxTimeS = 5): Promise<string> {
  return pod
    .exec("curl", ["-sS", "--max-time", String(maxTimeS), url])
    .then((s) => s.trim())
    .catch((e: Error) => `failed: ${e.message.split("\n")[0]}`);
}

export interface PodClusterOptions {
  /** Service accounts the CA makes join tokens for (WORKLOADS). */
  readonly workloads: readonly string[];
  readonly trustDomain?: string;
  /** Uses per join token (TOKEN_USES): one per sidecar of that account (restarts renew instead). */
  readonly tokenUses?: number;
  /** Working directory (made if missing); default a fresh one under the system temp dir, removed on destroy. */
  readonly dir?: string;
  /** Progress lines (for the demo); default none. */
  readonly log?: (line: string) => void;
}

export interface PodCluster {
  readonly net: TestNetwork;
  readonly dir: string;
  readonly trustDomain: string;
  readonly caPod: { readonly host: Host; readonly url: string; readonly process: Spawned };
  readonly servicesFile: string;
  readonly pods: Pod[];
  /** Write the services file (`{ services }`, the discovery-file schema); sidecars hot-reload it. */
  writeServices(services: readonly Record<string, unknown>[]): Promise<void>;
  /** Add a pod: its namespace, app, capture rules and sidecar; resolves once the app listens and /ready is 200. */
  addPod(spec: PodSpec): Promise<Pod>;
  /** An address in the pod subnet that no pod holds, usable as a service VIP. */
  vip(index?: number): string;
  destroy(): Promise<void>;
}

function scriptEnv(extra: Record<string, string>): Record<string, string> {
  return { WEFT_HOME, ...extra };
}

/** What every pod of a cluster shares: the network, the working directory, the CA and the services file. */
interface ClusterContext {
  readonly net: TestNetwork;
  readonly dir: string;
  /** Where ca.sh writes each workload's join token and the bundle (TOKENS_DIR). */
  readonly runDir: string;
  readonly trustDomain: string;
  readonly caUrl: string;
  readonly servicesFile: string;
}

/**
 * The CA pod: examples/pod/ca.sh makes the trust domain, one join token file per workload, then runs
 * `meshca serve` with the CA pod's IP as a SAN. Resolves once it serves.
 */
async function startCaPod(
  net: TestNetwork,
  dir: string,
  runDir: string,
  td: string,
  o: PodClusterOptions,
): Promise<PodCluster["caPod"]> {
  const host = await net.addHost("ca");
  const url = `https://${host.ip4}:${CA_PORT}`;
  const proc = host.spawn("sh", [join(WEFT_HOME, "examples/pod/ca.sh")], {
    env: scriptEnv({
      CA_DIR: join(dir, "ca"),
      TRUST_DOMAIN: td,
      TOKENS_DIR: runDir,
      WORKLOADS: o.workloads.join(" "),
      TOKEN_USES: String(o.tokenUses ?? 4),
      CA_LISTEN: `0.0.0.0:${CA_PORT}`,
      CA_SANS: host.ip4,
    }),
  });
  await proc.waitFor(/serving \S+ at https:/, 60_000);
  return { host, url, process: proc };
}

/** Write the services file atomically (temp file, rename): sidecars never read half of it. */
async function writeServicesFile(file: string, services: readonly Record<string, unknown>[]): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, stringify({ services }), { mode: 0o644 });
  await rename(tmp, file);
}

/** Start the pod's app as root in its namespace; resolves once it listens on its port (if it names one). */
async function startApp(host: Host, podDir: string, spec: PodSpec): Promise<Spawned | undefined> {
  if (!spec.app) return undefined;
  const app = spec.app(podDir, host.ip4);
  for (const [name, text] of Object.entries(app.files ?? {}))
    await writeFile(join(podDir, name), text, { mode: 0o644 });
  const proc = host.spawn(app.cmd, [...app.args], { cwd: podDir });
  if (app.port !== undefined) {
    const port = app.port;
    await pollUntil(
      () => `${spec.name}'s app to listen on ${port} (output: ${proc.output().slice(-1000)})`,
      async () => (await host.exec("ss", ["-Hltn", `sport = :${port}`])).trim().length > 0,
      30_000,
      proc.exited,
    );
  }
  return proc;
}

/** The environment of examples/pod/sidecar.sh for the pod of `spec`. */
function sidecarEnv(ctx: ClusterContext, host: Host, podDir: string, spec: PodSpec): Record<string, string> {
  return scriptEnv({
    WEFT_SA: spec.sa!,
    TRUST_DOMAIN: ctx.trustDomain,
    // ca.sh writes each workload's token and bundle into a directory of its own.
    TOKENS_DIR: join(ctx.runDir, spec.sa!),
    WEFT_CONFIG: join(podDir, "weft.yaml"),
    STATE_DIR: join(podDir, "state"),
    CA_URL: ctx.caUrl,
    INBOUND_MODE: spec.inboundMode ?? "strict",
    APP_ADDRESS: spec.appAddress === "pod" ? host.ip4 : (spec.appAddress ?? "127.0.0.1"),
    ...(spec.identityDir ? { IDENTITY_DIR: spec.identityDir } : {}),
    SERVICES_FILE: ctx.servicesFile,
    WEFT_EXTRA_YAML: (spec.extraYaml ?? []).join("\n"),
    ...(spec.discoveryYaml ? { WEFT_DISCOVERY_YAML: spec.discoveryYaml } : {}),
  });
}

/** Start the pod's sidecar (sidecar.sh as the proxy UID); resolves once its /ready answers 200. */
async function startSidecar(
  ctx: ClusterContext,
  host: Host,
  podDir: string,
  spec: PodSpec,
): Promise<Spawned> {
  const proc = host.spawn("sh", [join(WEFT_HOME, "examples/pod/sidecar.sh")], {
    uid: PROXY_UID,
    cwd: podDir,
    env: sidecarEnv(ctx, host, podDir, spec),
  });
  await pollUntil(
    () => `${spec.name}'s sidecar to be ready (output: ${proc.output().slice(-1500)})`,
    async () => {
      const ready = `http://127.0.0.1:${ADMIN}/ready`;
      return (await host.exec("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", ready])) === "200";
    },
    60_000,
    proc.exited,
  );
  return proc;
}

/** The init container: capture rules (examples/pod/init.sh), as root in the pod's namespace. */
async function installCapture(host: Host): Promise<void> {
  await host
    .exec("env", [`WEFT_HOME=${WEFT_HOME}`, "sh", join(WEFT_HOME, "examples/pod/init.sh")])
    .catch((err: Error) => {
      throw new WeftError("E_IPTABLES", `init.sh in ${host.ns}: ${err.message}`, { cause: err });
    });
}

/** The pod's directory and its sidecar's state directory, both owned by the proxy UID. */
async function makePodDir(dir: string, name: string): Promise<string> {
  const podDir = join(dir, "pods", name);
  await mkdir(join(podDir, "state"), { recursive: true });
  await chown(podDir, PROXY_UID, PROXY_UID);
  await chown(join(podDir, "state"), PROXY_UID, PROXY_UID);
  return podDir;
}

/** A pod on `host` (not started): its app and sidecar start and stop together. */
function newPod(ctx: ClusterContext, host: Host, podDir: string, spec: PodSpec): Pod {
  const pod: Pod = {
    name: spec.name,
    host,
    ns: host.ns,
    ip4: host.ip4,
    dir: podDir,
    spec,
    identity: spec.sa === undefined ? undefined : `spiffe://${ctx.trustDomain}/ns/default/sa/${spec.sa}`,
    exec: (cmd, args) => host.exec(cmd, args),
    admin: (path) => host.exec("curl", ["-sS", "--max-time", "5", `http://127.0.0.1:${ADMIN}${path}`]),
    async stop() {
      await Promise.all([pod.sidecar?.kill("SIGKILL"), pod.app?.kill("SIGKILL")]);
    },
    async start() {
      pod.app = await startApp(host, podDir, spec);
      if (spec.sa !== undefined) pod.sidecar = await startSidecar(ctx, host, podDir, spec);
    },
  };
  return pod;
}

/** Add a pod to the cluster: namespace, directory, capture rules (with a sidecar), app and sidecar. */
async function addPod(
  ctx: ClusterContext,
  spec: PodSpec,
  pods: Pod[],
  log: (line: string) => void,
): Promise<Pod> {
  const host = await ctx.net.addHost(spec.name);
  const pod = newPod(ctx, host, await makePodDir(ctx.dir, spec.name), spec);
  pods.push(pod);
  if (spec.sa !== undefined) await installCapture(host);
  await pod.start();
  log(
    `pod ${spec.name.padEnd(10)} ${host.ip4.padEnd(14)} ${pod.identity ?? "(no sidecar)"}${spec.inboundMode === "permissive" ? "  inbound: permissive" : ""}`,
  );
  return pod;
}

/**
 * Build the network and the CA pod (examples/pod/ca.sh: trust domain, one join token file per
 * workload, then `meshca serve` with the CA pod's IP as a SAN). Register `destroy` right away.
 */
export async function createPodCluster(o: PodClusterOptions): Promise<PodCluster> {
  const td = o.trustDomain ?? "weft.local";
  const log = o.log ?? (() => {});
  const ownDir = o.dir === undefined;
  const dir = o.dir ?? (await mkdtemp(join(tmpdir(), "weft-pods-")));
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  const runDir = join(dir, "run");
  const servicesFile = join(dir, "services.yaml");
  const net = await createNetwork();
  const pods: Pod[] = [];
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await net.destroy();
    if (ownDir) await rm(dir, { recursive: true, force: true });
  };

  try {
    await writeFile(servicesFile, "services: []\n", { mode: 0o644 });
    const caPod = await startCaPod(net, dir, runDir, td, o);
    log(
      `CA pod ${caPod.host.ns} (${caPod.host.ip4}): examples/pod/ca.sh made trust domain ${td}, serving ${caPod.url}`,
    );
    const ctx: ClusterContext = { net, dir, runDir, trustDomain: td, caUrl: caPod.url, servicesFile };
    let vipIndex = 200;
    return {
      net,
      dir,
      trustDomain: td,
      caPod,
      servicesFile,
      pods,
      writeServices: (services) => writeServicesFile(servicesFile, services),
      vip(index) {
        const base = caPod.host.ip4.split(".").slice(0, 3).join(".");
        return `${base}.${index ?? vipIndex++}`;
      },
      addPod: (spec) => addPod(ctx, spec, pods, log),
      destroy,
    };
  } catch (err) {
    await destroy();
    throw err;
  }
}
