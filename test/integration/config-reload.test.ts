/**
 * Live reload of weft.yaml: a policy edit is picked up from the file (no restart) while a connection
 * opened before keeps going; a broken edit is refused with its keys named and the last good config keeps
 * serving; a reload by signal restores it; changes that need a restart are reported and not applied;
 * `/logging` and `log.level` change the level of a running sidecar.
 */
import assert from "node:assert/strict";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { type TestContext, test } from "node:test";
import { loadConfigFile } from "../../src/config/load.ts";
import { systemClock } from "../../src/core/clock.ts";
import { createLogger, MemoryLogger } from "../../src/core/log.ts";
import { ConfigReloader } from "../../src/proxy/config-reload.ts";
import type { Sidecar } from "../../src/proxy/sidecar.ts";
import { closeKind, connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  adminGet,
  identityDir,
  startSidecar,
  startSidecarPair,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

const FRONTEND = "spiffe://weft.local/ns/default/sa/frontend";

async function configFile(t: TestContext, sidecar: Sidecar): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "weft-reload-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, "weft.yaml");
  // The running config, as JSON (which is YAML): durations in ms, every default spelled out.
  await writeFile(path, JSON.stringify(sidecar.config));
  return path;
}

/** Replace the file as an editor would (write aside, rename over). */
async function edit(
  path: string,
  change: (c: Record<string, unknown>) => void,
  base: unknown,
): Promise<void> {
  const c = structuredClone(base) as Record<string, unknown>;
  change(c);
  await writeFile(`${path}.tmp`, JSON.stringify(c));
  await rename(`${path}.tmp`, path);
}

async function echoes(s: import("node:net").Socket, text: string): Promise<void> {
  s.write(text);
  assert.equal((await readBytes(s, text.length)).toString(), text);
}

test("a policy edit applies to new connections, keeps the open one, and a broken edit is refused", async (t) => {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    serverConfig: { policy: { default: "deny", rules: [{ ports: [app.port], allow: [FRONTEND] }] } },
  });
  const path = await configFile(t, pair.server);
  const original = JSON.parse(JSON.stringify(pair.server.config));
  const reloader = new ConfigReloader({
    path,
    env: {},
    apply: (c) => pair.server.reload(c),
    clock: systemClock,
    logger: pair.serverLog.child({ component: "config" }),
    metrics: pair.server.metrics,
    debounceMs: 20,
  });
  await reloader.start();
  t.after(() => reloader.stop());

  const live = await connect(pair.explicitPort);
  t.after(() => live.destroy());
  await echoes(live, "before");

  // 1. The file changes: frontend is no longer allowed on the app port.
  await edit(
    path,
    (c) => {
      c.policy = {
        default: "deny",
        rules: [{ ports: [app.port], allow: ["spiffe://weft.local/ns/default/sa/ops"] }],
      };
    },
    original,
  );
  const reloaded = await waitForLog(pair.serverLog, (r) => r.msg === "config reloaded");
  assert.deepEqual(reloaded.applied, ["policy.rules"]);
  assert.equal(reloaded.trigger, "file");
  await echoes(live, "still-open");
  const denied = await connect(pair.explicitPort);
  assert.equal(await closeKind(denied), "reset", "a new connection is refused by the new policy");
  await waitForLog(pair.serverLog, (r) => r.rule === "not_in_rules");

  // 2. A broken edit: refused with every key named, the last good config (deny) keeps serving.
  await edit(
    path,
    (c) => {
      c.policy = {
        default: "deny",
        rules: [{ ports: [app.port], allow: ["spiffe://weft.local/ns/default/sa/ops"] }],
      };
      (c.timeouts as { idle: unknown }).idle = "soon";
      c.polcy = {};
    },
    original,
  );
  const refused = await waitForLog(
    pair.serverLog,
    (r) => r.msg === "config refused; keeping the last good config",
  );
  const problems = refused.problems as string[];
  assert.ok(
    problems.some((p) => p.startsWith("timeouts.idle: ")),
    String(problems),
  );
  assert.ok(
    problems.some((p) => p.includes('"polcy"')),
    String(problems),
  );
  assert.deepEqual(pair.server.config.policy.rules[0]?.allow, ["spiffe://weft.local/ns/default/sa/ops"]);
  assert.equal(
    await closeKind(await connect(pair.explicitPort)),
    "reset",
    "still the last good (denying) policy",
  );
  await echoes(live, "after-refusal");
  assert.equal(await pair.server.metrics.value("weft_config_reloads_total", { result: "refused" }), 1);

  // 3. The original file back, reloaded by signal: allowed again.
  await writeFile(path, JSON.stringify(original));
  const bySignal = await reloader.reload("signal");
  assert.equal(bySignal.result, "applied");
  const again = await connect(pair.explicitPort);
  t.after(() => again.destroy());
  await echoes(again, "allowed-again");
  await echoes(live, "all-along");

  // 4. Keys that need a restart are reported, not applied; live keys beside them are.
  const r = await reloader.reload("signal");
  assert.equal(r.result, "unchanged");
  await edit(
    path,
    (c) => {
      (c.listeners as { tunnel: { port: number } }).tunnel.port = 15999;
      (c.timeouts as { idle: number }).idle = 60_000;
      (c.listeners as { tunnel: { maxConnections: number } }).tunnel.maxConnections = 7;
    },
    original,
  );
  const mixed = await reloader.reload("signal");
  assert.equal(mixed.result, "applied");
  assert.ok("outcome" in mixed);
  assert.deepEqual([...mixed.outcome.restartNeeded], ["listeners.tunnel.port"]);
  assert.deepEqual([...mixed.outcome.applied].sort(), ["listeners.tunnel.maxConnections", "timeouts.idle"]);
  assert.equal(pair.server.config.listeners.tunnel.port, 0, "the running port stays");
  assert.equal(pair.server.config.timeouts.idle, 60_000);
  assert.equal(await pair.server.metrics.value("weft_config_restart_pending"), 1);
  live.end();
});

class Sink extends Writable {
  lines: string[] = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.lines.push(...chunk.toString().split("\n").filter(Boolean));
    cb();
  }
}

test("/logging shows and changes the level at runtime; log.level in a reload does too", async (t) => {
  const ca = await createTestCa();
  const files = await identityDir(t, "logging");
  await writeIdentity(files, await ca.issue("default/backend"));
  const sink = new Sink();
  const logger = createLogger({ level: "info", name: "weft", destination: sink });
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files),
    new StaticRouteTable([]),
    new MemoryLogger(),
    {
      logger,
    },
  );
  assert.deepEqual(JSON.parse((await adminGet(sidecar, "/logging")).body), { level: "info" });

  const a = sidecar.addresses.admin;
  const post = (q: string) => fetch(`http://${a.address}:${a.port}/logging${q}`, { method: "POST" });
  const bad = await post("?level=loud");
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /level must be one of fatal, error, warn, info, debug, trace, silent/);
  const ok = await post("?level=debug");
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { level: "debug" });
  assert.deepEqual(JSON.parse((await adminGet(sidecar, "/logging")).body), { level: "debug" });
  // Components log through children made at start: they follow the root's level.
  assert.ok(sink.lines.some((l) => JSON.parse(l).msg === "log level changed through the admin port"));

  const path = await configFile(t, sidecar);
  await writeFile(
    path,
    JSON.stringify({
      ...JSON.parse(JSON.stringify(sidecar.config)),
      log: { level: "warn", accessLog: true },
    }),
  );
  const outcome = sidecar.reload(await loadConfigFile(path));
  assert.deepEqual([...outcome.applied], ["log.level"]);
  assert.deepEqual(JSON.parse((await adminGet(sidecar, "/logging")).body), { level: "warn" });
});
