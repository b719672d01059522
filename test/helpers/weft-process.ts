/**
 * `weft proxy` as a child process, the way a user or an image starts it: a weft.yaml with file
 * identity (issued by a fresh test CA), the process's JSON log read from its stderr, readiness from the
 * "sidecar listening" line and the admin port's /ready.
 */
import type { ChildProcess } from "node:child_process";
import { chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { createTestCa } from "./ca.ts";
import { writeIdentity } from "./sidecar.ts";

/** Resolves with the first JSON log line on `child`'s stderr whose msg is `msg`. */
export function logLine(child: ChildProcess, msg: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = "";
    const onData = (d: Buffer): void => {
      buf += d.toString();
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (rec.msg === msg) {
            child.stderr?.off("data", onData);
            resolve(rec);
            return;
          }
        } catch {
          // not a log line
        }
      }
    };
    child.stderr?.on("data", onData);
    child.once("exit", (code) => reject(new Error(`weft exited (${code}) before logging "${msg}"`)));
  });
}

export interface SidecarFiles {
  readonly dir: string;
  readonly config: string;
  readonly cert: string;
}

/**
 * A directory with a file identity (spiffe://weft.local/ns/default/sa/frontend) and a weft.yaml whose
 * listeners all bind 127.0.0.1 port 0. `owner`: chown everything to this UID/GID (a sidecar running as
 * UID 1337 must read its key); the directory is then world-searchable.
 */
export async function sidecarFiles(t: TestContext, owner?: number): Promise<SidecarFiles> {
  const dir = await mkdtemp(join(tmpdir(), "weft-proc-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const files = {
    dir,
    cert: join(dir, "cert.pem"),
    key: join(dir, "key.pem"),
    bundle: join(dir, "bundle.pem"),
  };
  await writeIdentity(files, await ca.issue("default/frontend"));
  const config = join(dir, "weft.yaml");
  await writeFile(
    config,
    `trustDomain: weft.local
identity:
  files: { cert: ${files.cert}, key: ${files.key}, bundle: ${files.bundle} }
listeners:
  outbound: { enabled: false }
  inbound: { enabled: false }
  tunnel: { address: 127.0.0.1, port: 0 }
  admin: { address: 127.0.0.1, port: 0 }
  metrics: { address: 127.0.0.1, port: 0 }
  explicit: [ { listen: "127.0.0.1:0", service: backend } ]
services:
  - name: backend
    ports: [8080]
    endpoints: [ { address: 127.0.0.1 } ]
`,
  );
  if (owner !== undefined) {
    await chmod(dir, 0o755);
    for (const f of [dir, config, files.cert, files.key, files.bundle]) await chown(f, owner, owner);
  }
  return { dir, config, cert: files.cert };
}

/**
 * Waits until the sidecar `child` logs "sidecar listening" and its /ready answers 200; resolves with the
 * admin address (`127.0.0.1:port`). Kills the child with SIGKILL when the test ends, if still running.
 */
export async function whenReady(t: TestContext, child: ChildProcess): Promise<string> {
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const listening = await logLine(child, "sidecar listening").catch((err: Error) => {
    throw new Error(`${err.message}; stderr: ${stderr}`);
  });
  const admin = String(listening.admin);
  const ready = await fetch(`http://${admin}/ready`);
  if (ready.status !== 200) throw new Error(`/ready answered ${ready.status}: ${await ready.text()}`);
  return admin;
}

/** SIGTERM, then the exit code (a sidecar drains and exits 0). */
export function terminate(child: ChildProcess): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.kill("SIGTERM");
  return exited;
}
