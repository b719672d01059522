/**
 * The `weft` CLI: `weft validate` reports every schema error at once, each naming its key (exit 1);
 * `weft proxy` started from a weft.yaml in a child process answers /ready on its admin port, reloads
 * weft.yaml on SIGHUP and on change, and on SIGTERM drains and exits 0.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { SIDECAR_NODE_FLAGS } from "../../src/runtime/node-flags.ts";
import { weftCli } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { logLine, sidecarFiles } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

async function tempFile(t: TestContext, name: string, text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "weft-cli-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

const weft = (args: string[]) => weftCli(...args);

test("weft validate lists every error with its key and exits 1; a good config exits 0", async (t) => {
  const bad = await tempFile(
    t,
    "weft.yaml",
    `
trustDomain: Not A Domain
identity: { files: { cert: c.pem, key: k.pem, bundle: b.pem } }
timeouts: { handshake: soon, idle: -1 }
listeners:
  explicit: [ { listen: "127.0.0.1:99999", service: backend } ]
inbound: { mode: lax }
`,
  );
  const r = await weft(["validate", "--config", bad]);
  assert.equal(r.code, 1);
  for (const key of [
    "trustDomain",
    "timeouts.handshake",
    "timeouts.idle",
    "listeners.explicit[0].listen",
    "inbound.mode",
  ]) {
    assert.match(r.stderr, new RegExp(`^  ${key.replace(/[[\].]/g, "\\$&")}: `, "m"), `stderr names ${key}`);
  }
  assert.match(r.stderr, /^weft: E_CONFIG: the config has 5 problem\(s\):/);

  // Past the schema, validate looks at what the keys point to (test/integration/weft-validate.test.ts).
  const schemaOnly = await tempFile(
    t,
    "weft.yaml",
    "trustDomain: weft.local\nidentity: { files: { cert: c.pem, key: k.pem, bundle: b.pem } }\n",
  );
  const noFiles = await weft(["validate", "-c", schemaOnly]);
  assert.equal(noFiles.code, 1);
  assert.match(noFiles.stderr, /^ {2}identity\.files\.cert: \S+\/c\.pem does not exist$/m);

  const missing = await weft(["validate", "-c", join(tmpdir(), "weft-no-such-file.yaml")]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^weft: E_IO: cannot read config/);
  assert.equal((await weft(["validate"])).code, 2, "a missing --config is a usage error");
});

for (const [how, nodeFlags] of [
  ["with SIDECAR_NODE_FLAGS", SIDECAR_NODE_FLAGS],
  ["without them (warns W_NODE_FLAGS)", []],
] as const) {
  test(`weft proxy from a weft.yaml in a child process, ${how}: /ready answers 200, SIGTERM drains and exits 0`, async (t) => {
    // A file identity (default/frontend) and a weft.yaml with every listener on 127.0.0.1 port 0.
    const { config } = await sidecarFiles(t);
    const child = spawn(process.execPath, [...nodeFlags, "bin/weft.js", "proxy", "--config", config], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    t.after(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    const listening = await logLine(child, "sidecar listening");
    assert.equal(listening.ready, true);
    const admin = String(listening.admin);
    const ready = await fetch(`http://${admin}/ready`);
    assert.equal(ready.status, 200);
    assert.equal(await ready.text(), "ready\n");
    const certs = (await (await fetch(`http://${admin}/certs`)).json()) as Record<string, unknown>;
    assert.equal(certs.spiffeId, "spiffe://weft.local/ns/default/sa/frontend");

    // SIGHUP reloads (and never ends the process); an edit of the file is picked up by itself.
    const unchanged = logLine(child, "config unchanged");
    child.kill("SIGHUP");
    assert.equal((await unchanged).trigger, "signal");
    assert.equal((await fetch(`http://${admin}/ready`)).status, 200);
    const reloaded = logLine(child, "config reloaded");
    await writeFile(config, `${await readFile(config, "utf8")}policy: { default: deny }\n`);
    assert.deepEqual((await reloaded).applied, ["policy.default"]);
    const effective = (await (await fetch(`http://${admin}/config`)).json()) as {
      policy: { default: string };
    };
    assert.equal(effective.policy.default, "deny");

    const stopped = logLine(child, "stopped");
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    assert.deepEqual((await stopped).forced, 0);
    assert.equal(await exited, 0);
    const warned = stderr.split("\n").filter((l) => l.includes('"code":"W_NODE_FLAGS"'));
    if (nodeFlags.length > 0) assert.deepEqual(warned, []);
    else {
      assert.equal(warned.length, 1, stderr);
      assert.deepEqual(JSON.parse(warned[0]!).missing, [...SIDECAR_NODE_FLAGS]);
    }
  });
}
