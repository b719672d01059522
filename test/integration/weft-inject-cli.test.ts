/**
 * `weft inject` and `weft uninject` as a user runs them (in-process, real files and stdin): manifests
 * out on stdout, skips and warnings on stderr, a missing or non-PEM bundle refused with its code and
 * exit 1, bad YAML exit 2 (usage), and uninject from standard input restoring the input.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { test } from "node:test";
import { parseAllDocuments } from "yaml";
import { runWeft } from "../../src/cli/weft.ts";
import { systemClock } from "../../src/core/clock.ts";
import { injectManifests } from "../../src/k8s/inject.ts";
import { INJECT_OPTIONS, TEST_BUNDLE } from "../fixtures/inject/options.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

class Capture extends Writable {
  text = "";
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

async function weft(args: string[], stdin = ""): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runWeft(args, {
    stdout,
    stderr,
    env: {},
    clock: systemClock,
    waitForShutdown: () => Promise.resolve(),
    readStdin: async () => stdin,
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

test("weft inject / uninject: files and stdin, stderr for skips and warnings, errors with codes", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-inject-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const input = await readFile(join(import.meta.dirname, "../fixtures/inject/workloads.in.yaml"), "utf8");
  await writeFile(join(dir, "in.yaml"), input);
  await writeFile(join(dir, "bundle.pem"), TEST_BUNDLE);
  await writeFile(join(dir, "empty.pem"), "nothing\n");
  const flags = ["--ca-bundle", join(dir, "bundle.pem"), "--image", INJECT_OPTIONS.image];

  const out = await weft(["inject", "-f", join(dir, "in.yaml"), ...flags]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, injectManifests(input, INJECT_OPTIONS).text);
  assert.match(out.stderr, /weft inject: skipped document 3: DaemonSet\/node-agent: hostNetwork/);
  assert.match(out.stderr, /weft inject: skipped document 5: Job\/once: opted out/);
  assert.match(out.stderr, /weft inject: warning: .*port 8080 \(app readinessProbe\)/);

  const back = await weft(["uninject", "-f", "-"], out.stdout);
  assert.equal(back.code, 0);
  assert.deepEqual(
    parseAllDocuments(back.stdout).map((d) => d.toJS()),
    parseAllDocuments(input).map((d) => d.toJS()),
  );

  const noBundle = await weft([
    "inject",
    "-f",
    join(dir, "in.yaml"),
    "--ca-bundle",
    join(dir, "missing.pem"),
  ]);
  assert.equal(noBundle.code, 1);
  assert.match(noBundle.stderr, /^weft: E_IO: --ca-bundle .*missing\.pem cannot be read/);
  const notPem = await weft(["inject", "-f", join(dir, "in.yaml"), "--ca-bundle", join(dir, "empty.pem")]);
  assert.equal(notPem.code, 2);
  assert.match(notPem.stderr, /E_USAGE: --ca-bundle .* holds no PEM certificate/);
  const badYaml = await weft(["inject", "-f", "-", ...flags], "kind: [\n");
  assert.equal(badYaml.code, 2);
  assert.match(badYaml.stderr, /E_USAGE: document 1 is not valid YAML/);
  const noFile = await weft(["uninject", "-f", join(dir, "absent.yaml")]);
  assert.equal(noFile.code, 1);
  assert.match(noFile.stderr, /E_IO: cannot read .*absent\.yaml/);
});
