/**
 * The CLIs run in-process for tests: `meshcaWorkspace` (a temp directory, a manual clock whole-second
 * aligned, `meshca(...argv)` capturing stdout, stderr and the exit code) and `weftCli` (the same for
 * `weft`).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import type { TestContext } from "node:test";
import { type MeshcaDeps, runMeshca } from "../../src/cli/meshca.ts";
import { runWeft } from "../../src/cli/weft.ts";
import { ManualClock, systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function meshcaWorkspace(t: TestContext) {
  const cwd = await mkdtemp(join(tmpdir(), "weft-meshca-"));
  t.after(() => rm(cwd, { recursive: true, force: true }));
  // Whole seconds: X.509 times have no milliseconds, so countdowns come out exact.
  const clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
  const env: Record<string, string | undefined> = {};
  const meshca = async (...argv: string[]): Promise<CliResult> => {
    let stdout = "";
    let stderr = "";
    const deps: MeshcaDeps = {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: (s: string) => (stderr += s) },
      clock,
      cwd,
      env,
      logger: new MemoryLogger(),
      waitForShutdown: () => Promise.resolve(),
    };
    const code = await runMeshca(argv, deps);
    return { code, stdout, stderr };
  };
  const ok = async (...argv: string[]) => {
    const r = await meshca(...argv);
    assert.equal(r.code, 0, `meshca ${argv.join(" ")} failed: ${r.stderr}`);
    return r;
  };
  const p = (...parts: string[]) => join(cwd, ...parts);
  return { cwd, clock, env, meshca, ok, p };
}

class Capture extends Writable {
  text = "";
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/** `weft ...argv` in-process, with an empty environment and the system clock. */
export async function weftCli(...argv: string[]): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runWeft(argv, {
    stdout,
    stderr,
    env: {},
    clock: systemClock,
    waitForShutdown: () => Promise.resolve(),
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}
