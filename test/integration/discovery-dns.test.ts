import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { serviceSchema } from "../../src/config/services-schema.ts";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { createDiscovery } from "../../src/discovery/index.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const DNSMASQ = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].find((p) => existsSync(p));

async function freeUdpishPort(): Promise<number> {
  // A free TCP port is free for UDP too in practice on loopback; dnsmasq binds both.
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

test("DNS source follows a real DNS server's A and SRV records and keeps the last good endpoints when it dies", async (t) => {
  if (!DNSMASQ) {
    if (process.env.CI === "true") assert.fail("dnsmasq is not installed (apt-get install dnsmasq-base)");
    t.skip("dnsmasq is not installed (apt-get install dnsmasq-base)");
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), "weft-dns-"));
  const hosts = join(dir, "hosts");
  await writeFile(
    hosts,
    "198.18.0.10 backend.mesh.test\n198.18.0.11 backend.mesh.test\n198.18.0.20 db-1.mesh.test\n",
  );
  const port = await freeUdpishPort();
  const dnsmasq: ChildProcess = spawn(
    DNSMASQ,
    [
      "--no-daemon",
      `--port=${port}`,
      "--listen-address=127.0.0.1",
      "--bind-interfaces",
      "--no-resolv",
      "--no-hosts",
      `--addn-hosts=${hosts}`,
      "--local-ttl=1",
      "--srv-host=_db._tcp.mesh.test,db-1.mesh.test,5432,0,7",
      "--user=root",
      "--log-facility=-",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let dnsmasqOut = "";
  dnsmasq.stdout?.on("data", (d) => {
    dnsmasqOut += d;
  });
  dnsmasq.stderr?.on("data", (d) => {
    dnsmasqOut += d;
  });
  const exited = new Promise((r) => dnsmasq.once("exit", r));
  const metrics = new WeftMetrics();
  const logger = new MemoryLogger();
  const discovery = createDiscovery({
    trustDomain: "weft.local",
    services: [
      serviceSchema.parse({
        name: "backend",
        ports: [8080],
        dns: { name: "backend.mesh.test", type: "A", minTtl: "200ms" },
      }),
      serviceSchema.parse({
        name: "db",
        ports: [5432],
        dns: { name: "_db._tcp.mesh.test", type: "SRV", minTtl: "200ms" },
      }),
    ],
    dns: { servers: [`127.0.0.1:${port}`], minTtl: 200, maxTtl: 1000, timeout: 300 },
    retries: { attempts: 3, deadline: 5000 },
    outlierDetection: {
      enabled: true,
      consecutiveFailures: 5,
      baseEjectionTime: 30_000,
      maxEjectionTime: 300_000,
      maxEjectionPercent: 10,
    },
    metrics,
    logger,
    clock: systemClock,
  });
  t.after(async () => {
    await discovery.stop();
    if (dnsmasq.exitCode === null) {
      dnsmasq.kill("SIGKILL");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });
  const keys = (name: string) => (discovery.service(name)?.endpoints.map((e) => e.key) ?? []).sort();
  await discovery.start();
  await eventually("dnsmasq to answer", async () => {
    await discovery.refreshDns();
    return keys("backend").length === 2 && keys("db").length === 1;
  }).catch((err) => assert.fail(`${err}\ndnsmasq said: ${dnsmasqOut}`));
  assert.deepEqual(keys("backend"), ["198.18.0.10:8080", "198.18.0.11:8080"]);
  assert.deepEqual(keys("db"), ["198.18.0.20:5432"], "SRV gives the port");
  assert.equal(discovery.service("db")?.endpoints[0]?.weight, 7, "SRV weight becomes the endpoint weight");

  // Change the records while Weft runs: dnsmasq rereads addn-hosts on SIGHUP.
  await writeFile(
    hosts,
    "198.18.0.11 backend.mesh.test\n198.18.0.12 backend.mesh.test\n198.18.0.20 db-1.mesh.test\n",
  );
  dnsmasq.kill("SIGHUP");
  await eventually("the TTL-driven refresh to see the new records", () =>
    keys("backend").includes("198.18.0.12:8080"),
  );
  assert.deepEqual(keys("backend"), ["198.18.0.11:8080", "198.18.0.12:8080"]);

  // The DNS server dies: lookups fail, are counted, and the last good endpoints stay.
  dnsmasq.kill("SIGTERM");
  await exited;
  await eventually(
    "a failed lookup to be counted",
    async () => ((await metrics.value("weft_discovery_errors_total", { source: "dns" })) ?? 0) >= 1,
  );
  assert.deepEqual(keys("backend"), ["198.18.0.11:8080", "198.18.0.12:8080"]);
  assert.ok(logger.records.some((r) => r.msg === "dns lookup failed; keeping the last good endpoints"));
});
