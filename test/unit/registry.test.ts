import assert from "node:assert/strict";
import { test } from "node:test";
import { serviceSchema } from "../../src/config/services-schema.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { ServiceRegistry } from "../../src/discovery/registry.ts";

const outlier = {
  enabled: true,
  consecutiveFailures: 2,
  baseEjectionTime: 1000,
  maxEjectionTime: 10_000,
  maxEjectionPercent: 100,
};

function setup() {
  const metrics = new WeftMetrics();
  const logger = new MemoryLogger();
  const clock = new ManualClock(0);
  const r = new ServiceRegistry({
    trustDomain: "weft.local",
    retries: { attempts: 3, deadline: 5000 },
    outlierDetection: outlier,
    metrics,
    logger,
    clock,
    random: () => 0.3,
  });
  const svc = (addrs: string[], extra: object = {}) =>
    serviceSchema.parse({
      name: "backend",
      ports: [{ port: 80, targetPort: 8080 }],
      vips: ["198.18.100.1"],
      endpoints: addrs.map((a) => ({ address: a })),
      ...extra,
    });
  return { r, svc, metrics, logger, clock };
}

test("lookup by VIP:port and by endpoint address:port; default identity; target port mapping", () => {
  const { r, svc } = setup();
  r.setDeclared("config", [svc(["198.18.0.10", "198.18.0.11"])]);
  const byVip = r.resolve({ address: "198.18.100.1", port: 80 });
  assert.equal(byVip?.service.name, "backend");
  assert.equal(byVip?.targetPort, 8080);
  assert.equal(r.resolve({ address: "::ffff:198.18.0.11", port: 8080 })?.service.name, "backend");
  assert.equal(r.resolve({ address: "198.18.100.1", port: 81 }), undefined);
  assert.equal(r.service("backend")?.identity, "spiffe://weft.local/ns/default/sa/backend");
  assert.deepEqual(r.service("backend")?.retries, { attempts: 3, deadlineMs: 5000 });
});

test("pick honours exclude, counts active connections, and panics over all when all are ejected", async () => {
  const { r, svc, metrics, logger } = setup();
  r.setDeclared("config", [svc(["198.18.0.10", "198.18.0.11"])]);
  const first = r.pick("backend", { clientAddress: "c", exclude: new Set() })!;
  const second = r.pick("backend", { clientAddress: "c", exclude: new Set([first.endpoint.key]) })!;
  assert.notEqual(first.endpoint.key, second.endpoint.key);
  assert.equal(await metrics.value("weft_endpoint_active_connections", { endpoint: first.endpoint.key }), 1);
  first.release();
  first.release();
  assert.equal(
    await metrics.value("weft_endpoint_active_connections", { endpoint: first.endpoint.key }),
    0,
    "release is idempotent",
  );
  for (const key of ["198.18.0.10:8080", "198.18.0.11:8080"]) {
    for (let i = 0; i < 2; i++) {
      const l = r.pick("backend", {
        clientAddress: "c",
        exclude: new Set(["198.18.0.10:8080", "198.18.0.11:8080"].filter((k) => k !== key)),
      })!;
      assert.equal(l.endpoint.key, key);
      l.reportFailure("connect_refused");
      l.release();
    }
  }
  assert.deepEqual(
    r.describe()[0]!.endpoints.map((e) => e.state),
    ["ejected", "ejected"],
  );
  assert.ok(r.pick("backend", { clientAddress: "c", exclude: new Set() }), "panic mode still picks");
  assert.equal(await metrics.value("weft_outlier_ejections_total"), 2);
  assert.equal(logger.records.filter((x) => x.msg === "endpoint ejected").length, 2);
});

test("an update keeps live leases working and ejection state of endpoints that stay", async () => {
  const { r, svc, metrics } = setup();
  r.setDeclared("config", [svc(["198.18.0.10", "198.18.0.11"])]);
  const lease = r.pick("backend", { clientAddress: "c", exclude: new Set(["198.18.0.11:8080"]) })!;
  assert.equal(lease.endpoint.key, "198.18.0.10:8080");
  for (let i = 0; i < 2; i++)
    r.pick("backend", { clientAddress: "c", exclude: new Set(["198.18.0.10:8080"]) })!.reportFailure("x");
  r.setDeclared("config", [svc(["198.18.0.11", "198.18.0.12"])]);
  assert.equal(r.describe()[0]!.endpoints.find((e) => e.key === "198.18.0.11:8080")?.state, "ejected");
  assert.equal(
    r.resolve({ address: "198.18.0.10", port: 8080 }),
    undefined,
    "removed endpoint no longer resolves",
  );
  lease.reportSuccess(1);
  lease.release();
  assert.equal(
    await metrics.value("weft_endpoint_active_connections", { endpoint: "198.18.0.10:8080" }),
    undefined,
    "series of a removed endpoint is gone",
  );
  assert.ok(r.version >= 2);
});

test("endpoints sharing address and app port behind different sidecars stay two, keyed by tunnel port", () => {
  const { r } = setup();
  r.setDeclared("config", [
    serviceSchema.parse({
      name: "backend",
      ports: [8080],
      endpoints: [
        { address: "127.0.0.1", tunnelPort: 15018 },
        { address: "127.0.0.1", tunnelPort: 15028 },
        { address: "127.0.0.2" },
      ],
    }),
  ]);
  assert.deepEqual(
    r.service("backend")?.endpoints.map((e) => [e.key, e.tunnelPort]),
    [
      ["127.0.0.1:8080@15018", 15018],
      ["127.0.0.1:8080@15028", 15028],
      ["127.0.0.2:8080", 15008],
    ],
  );
  const picked = new Set<string>();
  for (let i = 0; i < 6; i++) {
    const lease = r.pick("backend", { clientAddress: "", exclude: new Set() });
    picked.add(lease!.endpoint.key);
    lease!.release();
  }
  assert.equal(picked.size, 3, "all three get connections");
});
