/**
 * Sidecar start and readiness with a CA identity. A `weft proxy` child process started 5 s before its
 * CA server exists stays up and not ready (/ready 503 no_certificate), logs each attempt with its
 * reason, keeps retrying with capped, jittered backoff (identity.ca.retryMax), reads its token file per
 * attempt, and serves (/ready 200) once the CA answers. It used to exit with Node's code 13 and no
 * message. In-process: a sidecar whose own certificate expires turns /ready to 503
 * certificate_expired and weft_ready to 0 at the expiry, and keeps logging it.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CertificateAuthority, createTrustDomain } from "../../src/ca/authority.ts";
import { createCaServer } from "../../src/ca/server.ts";
import { TokenStore } from "../../src/ca/tokens.ts";
import { ManualClock, systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { freePort } from "../../src/core/ports.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  adminGet,
  identityDir,
  metricValue,
  startSidecar,
  testConfig,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";
import { logLine } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

const WEB = "spiffe://weft.local/ns/default/sa/web";

test("a sidecar started 5 s before its CA keeps retrying, not ready, and serves once the CA is up", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-ca-start-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const material = await createTrustDomain({ trustDomain: "weft.local" });
  await writeFile(join(dir, "bundle.pem"), material.bundlePem);
  const tokens = new TokenStore({
    file: join(dir, "tokens.json"),
    clock: systemClock,
    trustDomain: "weft.local",
  });
  const port = await freePort();
  const config = join(dir, "weft.yaml");
  await writeFile(
    config,
    `
trustDomain: weft.local
identity:
  ca:
    url: https://127.0.0.1:${port}
    bundle: ${join(dir, "bundle.pem")}
    id: ${WEB}
    tokenFile: ${join(dir, "web.token")}
    retryMax: 1s
listeners:
  outbound: { enabled: false }
  inbound: { enabled: false }
  tunnel: { address: 127.0.0.1, port: 0 }
  admin: { address: 127.0.0.1, port: 0 }
  metrics: { address: 127.0.0.1, port: 0 }
`,
  );
  // The token file does not exist yet either: like a compose CA that has not written it.
  const child = spawn(process.execPath, ["bin/weft.js", "proxy", "--config", config], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  t.after(() => {
    if (child.exitCode === null) child.kill("SIGKILL");
  });
  const lines: Array<Record<string, unknown>> = [];
  let buf = "";
  child.stderr!.on("data", (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      try {
        lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      } catch {
        // not JSON
      }
      buf = buf.slice(nl + 1);
    }
  });
  const started = Date.now();
  let stderrText = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderrText += d.toString();
  });
  const listening = await logLine(child, "sidecar listening").catch((err: Error) => {
    throw new Error(`${err.message}; stderr: ${stderrText.slice(-2000)}`);
  });
  assert.equal(listening.ready, false);
  const admin = String(listening.admin);
  const notReady = await fetch(`http://${admin}/ready`);
  assert.equal(notReady.status, 503);
  assert.equal(await notReady.text(), "not ready: no_certificate\n", stderrText.slice(-2000));

  const { token } = await tokens.create({ idPattern: WEB });
  await writeFile(join(dir, "web.token"), `${token}\n`);
  // The CA comes up 5 s after the sidecar was started, and not before the sidecar has tried (and
  // logged) twice: a process start slowed by a busy machine must not turn this into a race.
  let attempts: typeof lines = [];
  await eventually(
    () => `5 s without a CA and two attempts logged: ${JSON.stringify(lines.slice(-3))}`,
    () => {
      attempts = lines.filter((l) => /first certificate request/.test(String(l.msg)));
      return Date.now() - started >= 5000 && attempts.length >= 2;
    },
    { timeoutMs: 15_000, intervalMs: 100 },
  );
  assert.equal(child.exitCode, null, "the sidecar is still running after 5 s without a CA");
  assert.ok(attempts.length >= 2, `each attempt is logged: ${JSON.stringify(lines.slice(-3))}`);
  assert.ok(attempts.every((a) => typeof a.reason === "string" && typeof a.retry_in_ms === "number"));
  assert.ok(
    attempts.every((a) => (a.retry_in_ms as number) <= 1000),
    "backoff capped by identity.ca.retryMax",
  );
  assert.ok(
    attempts.some((a) => a.reason === "econnrefused"),
    JSON.stringify(attempts.map((a) => a.reason)),
  );

  const server = await createCaServer({
    ca: new CertificateAuthority(material),
    tokens,
    logger: new MemoryLogger(),
    clock: systemClock,
    listen: { host: "127.0.0.1", port },
  });
  t.after(() => server.close());
  await eventually(
    "serving once the CA is up",
    async () => (await fetch(`http://${admin}/ready`)).status === 200,
    {
      intervalMs: 100,
    },
  );
  const certs = (await (await fetch(`http://${admin}/certs`)).json()) as Record<string, unknown>;
  assert.equal(certs.spiffeId, WEB);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
});

test("an expired own certificate turns /ready to 503 certificate_expired at its expiry", async (t) => {
  const clock = new ManualClock(Date.now());
  const ca = await createTestCa({ trustDomain: "weft.local", clock });
  const files = await identityDir(t, "expiring");
  await writeIdentity(files, await ca.issue("default/web", { ttlMs: 3_600_000 }));
  const log = new MemoryLogger();
  const sidecar = await startSidecar(t, testConfig(ca.trustDomain, files), new StaticRouteTable([]), log, {
    clock,
  });
  assert.equal((await adminGet(sidecar, "/ready")).status, 200);
  clock.advance(3_600_000 + 1000);
  const ready = await adminGet(sidecar, "/ready");
  assert.equal(ready.status, 503);
  assert.equal(ready.body, "not ready: certificate_expired\n");
  assert.equal(metricValue((await adminGet(sidecar, "/metrics")).body, "weft_ready"), 0);
  const expiredLogs = () => log.records.filter((r) => /has EXPIRED/.test(String(r.msg))).length;
  const first = expiredLogs();
  assert.ok(first >= 1, "the expiry is logged when it happens");
  clock.advance(60_000);
  assert.ok(expiredLogs() > first, "and again at every check, not once");
});
