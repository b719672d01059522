/**
 * Network namespaces for the transparent mesh: the tests' harness and `npm run demo -- --transparent`
 * (through src/netns/pods.ts) build on it. Needs root. A test network is a
 * "router" namespace holding a bridge, plus one namespace per host joined to the bridge by a veth pair,
 * with addresses from 198.18.0.0/15 and fd00:198:18::/48 (benchmarking ranges, never routed here).
 * Nothing touches the machine's own network namespace. `destroy()` kills every process the harness
 * started (by PID) and deletes every namespace, even after a failed test.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";
import { WeftError } from "../core/errors.ts";

const execFileP = promisify(execFile);
const PATH = `${process.env.PATH ?? ""}:/usr/sbin:/sbin`;

/** Run a command to completion and return its stdout; a non-zero exit throws with its stderr. */
export async function run(cmd: string, args: string[], opts: { input?: string } = {}): Promise<string> {
  if (opts.input !== undefined) {
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { env: { ...process.env, PATH }, stdio: ["pipe", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.stderr.on("data", (d) => {
        err += d;
      });
      child.on("error", reject);
      child.on("close", (code) =>
        code === 0
          ? resolve(out)
          : reject(
              new WeftError("E_IO", `${cmd} ${args.join(" ")} exited ${code}: ${err.trim()}`, {
                reason: "command_failed",
              }),
            ),
      );
      child.stdin.end(opts.input);
    });
  }
  try {
    const { stdout } = await execFileP(cmd, args, { env: { ...process.env, PATH }, maxBuffer: 16 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new WeftError("E_IO", `${cmd} ${args.join(" ")} failed: ${(e.stderr ?? e.message).trim()}`, {
      reason: "command_failed",
    });
  }
}

/** Namespaces whose names start with `prefix` (default "weft"), for leak checks. */
export async function listNamespaces(prefix = "weft"): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]);
  return out
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(prefix));
}

/**
 * The namespaces of network `id` (its router and hosts) that still exist: empty after `destroy()`.
 * Unlike comparing all namespaces before and after, this holds while other networks come and go.
 */
export async function namespacesOf(id: string): Promise<string[]> {
  return (await listNamespaces()).filter((n) => n === `weft-r-${id}` || n.startsWith(`weft-${id}-`));
}

/** A process started in a namespace; its PID is the command's own (`ip netns exec` and setpriv exec). */
export interface Spawned {
  readonly pid: number;
  readonly child: ChildProcess;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code (or signal name) once the process is gone. */
  readonly exited: Promise<number | string>;
  /** Wait until the output matches, or fail after `timeoutMs` with the output so far. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** One namespace on the bridge, with its addresses. */
export interface Host {
  readonly name: string;
  /** The namespace name (`ip netns exec <ns>`). */
  readonly ns: string;
  readonly ip4: string;
  readonly ip6: string;
  exec(cmd: string, args: string[], opts?: { input?: string }): Promise<string>;
  spawn(
    cmd: string,
    args: string[],
    opts?: { uid?: number; gid?: number; env?: Record<string, string>; cwd?: string },
  ): Spawned;
}

/** The bridge (in its router namespace) and the hosts on it. */
export interface TestNetwork {
  readonly id: string;
  readonly router: string;
  readonly bridge: string;
  readonly hosts: Host[];
  addHost(name: string): Promise<Host>;
  /** Run a command in the router namespace (where the bridge is: tcpdump goes here). */
  exec(cmd: string, args: string[]): Promise<string>;
  spawnInRouter(cmd: string, args: string[]): Spawned;
  destroy(): Promise<void>;
}

/** Start `cmd` in namespace `ns`, as `opts.uid` when given; its output is piped. */
function spawnInNamespace(ns: string, cmd: string, args: string[], opts: Parameters<Host["spawn"]>[2]) {
  // Entering a namespace needs root, so the switch to another user happens inside it, through
  // setpriv (util-linux), which execs the command: the PID stays the command's own.
  const asUser =
    opts?.uid === undefined
      ? []
      : ["setpriv", `--reuid=${opts.uid}`, `--regid=${opts.gid ?? opts.uid}`, "--clear-groups", "--"];
  return spawn("ip", ["netns", "exec", ns, ...asUser, cmd, ...args], {
    env: { ...process.env, PATH, ...(opts?.env ?? {}) },
    cwd: opts?.cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** A process started in a namespace: its output kept (the last MiBs), waits on it, killed by PID. */
class NamespaceProcess implements Spawned {
  readonly pid: number;
  readonly exited: Promise<number | string>;
  private out = "";
  private gone = false;
  /** Called on every output chunk and on exit: the pending `waitFor`s. */
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly child: ChildProcess,
    private readonly cmd: string,
    private readonly track: Set<Spawned>,
  ) {
    this.pid = child.pid ?? -1;
    const onData = (d: Buffer) => {
      this.out += d.toString();
      if (this.out.length > 4 << 20) this.out = this.out.slice(-(2 << 20));
      for (const w of this.waiters) w();
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    this.exited = new Promise<number | string>((resolve) => {
      child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown"));
      child.on("error", () => resolve("spawn_error"));
    });
    // Once the process is gone and its output read to the end ("close"; "error" when it never
    // started), the pending waits fail at once instead of waiting for their timeout.
    const gone = () => {
      this.gone = true;
      for (const w of this.waiters) w();
    };
    child.on("close", gone);
    child.on("error", gone);
    track.add(this);
  }

  readonly output = (): string => this.out;

  waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = pattern.exec(this.out);
        if (m) {
          done();
          resolve(m);
        } else if (this.gone) {
          done();
          reject(
            new WeftError(
              "E_NOT_READY",
              `${this.cmd} exited before printing ${pattern}; output:\n${this.out.slice(-4000)}`,
              { reason: "exited" },
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new WeftError(
            "E_TIMEOUT",
            `timed out after ${timeoutMs} ms waiting for ${pattern} from ${this.cmd}; output:\n${this.out.slice(-4000)}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  async kill(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const pid = this.child.pid;
    if (this.gone || pid === undefined) return;
    // `ip netns exec` execs the command, so the PID is the command's own.
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    const timer = setTimeout(() => {
      try {
        if (!this.gone) process.kill(pid, "SIGKILL");
      } catch {}
    }, 3000);
    await this.exited;
    clearTimeout(timer);
    this.track.delete(this);
  }
}

function spawnIn(
  ns: string,
  cmd: string,
  args: string[],
  opts: Parameters<Host["spawn"]>[2],
  track: Set<Spawned>,
): Spawned {
  return new NamespaceProcess(spawnInNamespace(ns, cmd, args, opts), cmd, track);
}

/**
 * A bridge in its own router namespace, subnet `198.18.<n>.0/24` and `fd00:198:18:<n>::/64`, where n
 * is picked at random (or given) so parallel runs do not clash. Register `destroy` with `t.after`.
 */
export async function createNetwork(opts: { subnet?: number } = {}): Promise<TestNetwork> {
  const id = randomBytes(3).toString("hex");
  const n = opts.subnet ?? 1 + (randomBytes(1)[0]! % 250);
  const router = `weft-r-${id}`;
  const bridge = "br0";
  const hosts: Host[] = [];
  const namespaces: string[] = [];
  const processes = new Set<Spawned>();
  let nextHost = 10;

  await run("ip", ["netns", "add", router]);
  namespaces.push(router);
  const inRouter = (args: string[]) => run("ip", ["netns", "exec", router, ...args]);
  await inRouter(["ip", "link", "set", "lo", "up"]);
  await inRouter(["ip", "link", "add", bridge, "type", "bridge"]);
  await inRouter(["ip", "link", "set", bridge, "up"]);
  await inRouter(["ip", "addr", "add", `198.18.${n}.1/24`, "dev", bridge]);
  await inRouter(["ip", "-6", "addr", "add", `fd00:198:18:${n}::1/64`, "dev", bridge, "nodad"]);

  const network: TestNetwork = {
    id,
    router,
    bridge,
    hosts,
    async addHost(name: string) {
      const index = nextHost++;
      const ns = `weft-${id}-${name}`.slice(0, 40);
      const veth = `v${id}${index}`;
      await run("ip", ["netns", "add", ns]);
      namespaces.push(ns);
      await run("ip", [
        "link",
        "add",
        veth,
        "netns",
        router,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
      ]);
      await inRouter(["ip", "link", "set", veth, "master", bridge]);
      await inRouter(["ip", "link", "set", veth, "up"]);
      const inNs = (args: string[]) => run("ip", ["netns", "exec", ns, ...args]);
      const ip4 = `198.18.${n}.${index}`;
      const ip6 = `fd00:198:18:${n}::${index.toString(16)}`;
      await inNs(["ip", "link", "set", "lo", "up"]);
      await inNs(["ip", "addr", "add", `${ip4}/24`, "dev", "eth0"]);
      await inNs(["ip", "-6", "addr", "add", `${ip6}/64`, "dev", "eth0", "nodad"]);
      await inNs(["ip", "link", "set", "eth0", "up"]);
      await inNs(["ip", "route", "add", "default", "via", `198.18.${n}.1`]);
      const host: Host = {
        name,
        ns,
        ip4,
        ip6,
        exec: (cmd, args, o) => run("ip", ["netns", "exec", ns, cmd, ...args], o),
        spawn: (cmd, args, o) => spawnIn(ns, cmd, args, o, processes),
      };
      hosts.push(host);
      return host;
    },
    exec: (cmd, args) => inRouter([cmd, ...args]),
    spawnInRouter: (cmd, args) => spawnIn(router, cmd, args, {}, processes),
    async destroy() {
      await Promise.all([...processes].map((p) => p.kill("SIGKILL")));
      // Deleting a namespace removes its veth ends, the bridge and every iptables rule inside it.
      for (const ns of namespaces.reverse()) {
        await run("ip", ["netns", "delete", ns]).catch(() => {});
      }
    },
  };
  return network;
}
