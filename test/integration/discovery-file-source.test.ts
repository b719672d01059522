import assert from "node:assert/strict";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
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

const defaults = {
  dns: { minTtl: 1000, maxTtl: 60_000, timeout: 1000 },
  retries: { attempts: 3, deadline: 5000 },
  outlierDetection: {
    enabled: true,
    consecutiveFailures: 5,
    baseEjectionTime: 30_000,
    maxEjectionTime: 300_000,
    maxEjectionPercent: 10,
  },
};

function servicesYaml(addresses: string[]): string {
  return `services:\n  - name: backend\n    ports: [8080]\n    endpoints:\n${addresses.map((a) => `      - address: ${a}\n`).join("")}`;
}

/** Like an editor or config management: write a temp file, rename it over the watched one. */
async function replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

test("editing the services file adds and removes endpoints without touching live leases; a broken edit is refused", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-file-source-"));
  const path = join(dir, "services.yaml");
  await writeFile(path, servicesYaml(["198.18.0.10", "198.18.0.11"]));
  const metrics = new WeftMetrics();
  const logger = new MemoryLogger();
  const discovery = createDiscovery({
    trustDomain: "weft.local",
    services: [serviceSchema.parse({ name: "static", ports: [9000], endpoints: [{ address: "127.0.0.9" }] })],
    file: path,
    ...defaults,
    metrics,
    logger,
    clock: systemClock,
    fileDebounceMs: 20,
  });
  t.after(async () => {
    await discovery.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await discovery.start();
  const keys = () => discovery.service("backend")?.endpoints.map((e) => e.key) ?? [];
  assert.deepEqual(keys(), ["198.18.0.10:8080", "198.18.0.11:8080"]);
  assert.ok(discovery.service("static"), "config services stay beside file services");

  const live = discovery.pick("backend", { clientAddress: "c", exclude: new Set(["198.18.0.11:8080"]) })!;
  assert.equal(live.endpoint.key, "198.18.0.10:8080");

  await replaceFile(path, servicesYaml(["198.18.0.11", "198.18.0.12"]));
  await eventually("the edit to apply", () => keys().includes("198.18.0.12:8080"));
  assert.deepEqual(keys(), ["198.18.0.11:8080", "198.18.0.12:8080"]);
  // The lease taken before the edit still reports and releases without error.
  live.reportSuccess(2);
  live.release();

  await replaceFile(
    path,
    "services:\n  - name: backend\n    ports: [8080]\n    endpoints:\n      - address: not-an-ip\n",
  );
  await eventually("the refusal to be counted", () =>
    logger.records.some((r) => r.msg.startsWith("services file refused")),
  );
  const refusal = logger.records.find((r) => r.msg.startsWith("services file refused"))!;
  assert.match(String(refusal.error), /services\[0\]\.endpoints\[0\]\.address/);
  assert.deepEqual(keys(), ["198.18.0.11:8080", "198.18.0.12:8080"], "the last good table stays");
  assert.equal(await metrics.value("weft_discovery_errors_total", { source: "file", reason: "invalid" }), 1);

  await replaceFile(path, "services: [ {");
  await eventually(
    "the YAML error",
    () => logger.records.filter((r) => r.msg.startsWith("services file refused")).length >= 2,
  );
  assert.deepEqual(keys(), ["198.18.0.11:8080", "198.18.0.12:8080"]);
});

test("a health check declared in the services file runs (not only those in weft.yaml)", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-file-health-"));
  const path = join(dir, "services.yaml");
  await writeFile(
    path,
    `services:\n  - name: backend\n    ports: [8080]\n    healthCheck: { interval: 50ms, timeout: 1s, unhealthyThreshold: 1 }\n    endpoints: [ { address: 198.18.0.10 } ]\n`,
  );
  const probed: string[] = [];
  const discovery = createDiscovery({
    trustDomain: "weft.local",
    services: [],
    file: path,
    ...defaults,
    metrics: new WeftMetrics(),
    logger: new MemoryLogger(),
    clock: systemClock,
    fileDebounceMs: 20,
    probe: async ({ endpoint }) => {
      probed.push(endpoint.key);
      return false;
    },
  });
  t.after(async () => {
    await discovery.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await discovery.start();
  await eventually("the file's health check to probe its endpoint", () =>
    probed.includes("198.18.0.10:8080"),
  );
  await eventually(
    "the endpoint to fail its checks",
    () => discovery.describe().find((s) => s.name === "backend")?.endpoints[0]?.state === "unhealthy",
  );
});
