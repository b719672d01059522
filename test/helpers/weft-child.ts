/**
 * A `weft proxy` in a child process, for tests that must be able to lose it: crash storms (a crash
 * ends the child, not the test runner), SIGSTOP/SIGCONT, and signals. The config is written as JSON
 * (valid YAML) to a temporary file; the child's JSON log lines are parsed as they arrive, and `exited`
 * says how the process ended, if it did.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { SIDECAR_NODE_FLAGS } from "../../src/runtime/node-flags.ts";

export interface WeftProcess {
  readonly child: ChildProcess;
  /** Every JSON log line so far. */
  readonly logs: Record<string, unknown>[];
  /** The "sidecar listening" line's addresses, `host:port`. */
  readonly admin: string;
  readonly explicit: string[];
  readonly tunnel: string | undefined;
  /** Where the config file is (tests rewrite it to reload). */
  readonly configPath: string;
  /** Resolves when the child exits, with its code and signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Whether the child is still running. */
  alive(): boolean;
  /** stderr lines that were not JSON (a crash's stack trace). */
  readonly text: string[];
  /** Resolves with the first log line (from now or already seen) for which `match` holds. */
  waitLog(
    match: (r: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /** GET a path from the admin port. */
  admin_get(path: string): Promise<{ status: number; body: string }>;
}

/** Start `weft proxy` with `config` (an object, written as JSON); resolves once it listens. */
export async function startWeftProcess(
  t: TestContext,
  config: Record<string, unknown>,
): Promise<WeftProcess> {
  const dir = await mkdtemp(join(tmpdir(), "weft-proc-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const configPath = join(dir, "weft.yaml");
  await writeFile(configPath, JSON.stringify(config, null, 1));
  const child = spawn(process.execPath, [...SIDECAR_NODE_FLAGS, "bin/weft.js", "proxy", "-c", configPath], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    }
  });
  const logs: Record<string, unknown>[] = [];
  const text: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = "";
  child.stderr!.on("data", (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        text.push(line);
      }
    }
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      resolve({ code, signal });
      for (const w of waiters.splice(0)) w();
    }),
  );
  const waitLog = (
    match: (r: Record<string, unknown>) => boolean,
    timeoutMs = 20_000,
  ): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const deadline = setTimeout(
        () =>
          reject(
            new Error(
              `no matching log line within ${timeoutMs} ms; last: ${JSON.stringify(logs.slice(-3))} ${text.slice(-5).join("\n")}`,
            ),
          ),
        timeoutMs,
      );
      const check = (): void => {
        const hit = logs.find(match);
        if (hit) {
          clearTimeout(deadline);
          resolve(hit);
          return;
        }
        if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(deadline);
          reject(
            new Error(
              `weft exited (${child.exitCode ?? child.signalCode}) first: ${text.slice(-20).join("\n")}`,
            ),
          );
          return;
        }
        waiters.push(check);
      };
      check();
    });
  const listening = await waitLog((r) => r.msg === "sidecar listening");
  const admin = String(listening.admin);
  return {
    child,
    logs,
    text,
    admin,
    explicit: (listening.explicit as string[]) ?? [],
    tunnel: listening.tunnel as string | undefined,
    configPath,
    exited,
    alive: () => child.exitCode === null && child.signalCode === null,
    waitLog,
    async admin_get(path: string) {
      const res = await fetch(`http://${admin}${path}`);
      return { status: res.status, body: await res.text() };
    },
  };
}

/** `host:port` → port. */
export function portOf(hostPort: string): number {
  return Number(hostPort.slice(hostPort.lastIndexOf(":") + 1));
}
