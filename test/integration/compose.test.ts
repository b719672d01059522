import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const root = fileURLToPath(new URL("../..", import.meta.url));

function hasDockerCompose(): boolean {
  try {
    execFileSync("docker-compose", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("docker-compose.yml passes `docker-compose config`; every app has a sidecar in its namespace, an init with NET_ADMIN, Prometheus scrapes every sidecar's metrics port and Grafana shows the dashboard", (t) => {
  if (!hasDockerCompose()) {
    if (process.env.CI === "true")
      assert.fail("docker-compose is not installed (apt-get install docker-compose)");
    t.skip("docker-compose is not installed (apt-get install docker-compose)");
    return;
  }
  const resolved = parse(
    execFileSync("docker-compose", ["-f", "docker-compose.yml", "config"], { cwd: root }).toString(),
  ) as {
    services: Record<
      string,
      {
        network_mode?: string;
        cap_add?: string[];
        entrypoint?: string[];
        user?: string;
        healthcheck?: { test?: string[]; disable?: boolean };
        depends_on?: Record<string, { condition: string }>;
        restart?: string;
        volumes?: string[];
        environment?: Record<string, string>;
      }
    >;
  };
  const services = resolved.services;
  const apps = ["client", "backend", "backend-2"];
  for (const app of apps) {
    const sidecar = services[`${app}-sidecar`];
    const init = services[`${app}-init`];
    assert.ok(sidecar && init, `${app} has a sidecar and an init container`);
    assert.equal(sidecar.network_mode, `service:${app}`);
    assert.equal(init.network_mode, `service:${app}`);
    assert.ok(init.cap_add?.includes("NET_ADMIN"));
    assert.deepEqual(init.entrypoint, ["/opt/weft/examples/pod/init.sh"]);
    assert.deepEqual(sidecar.entrypoint, ["/opt/weft/examples/pod/sidecar.sh"]);
  }
  assert.deepEqual(services.ca?.entrypoint, ["/opt/weft/examples/pod/ca.sh"]);
  // Prometheus scrapes each sidecar's metrics port by its pod's own name (not the shared `backend`),
  // and loads the alert rules; Grafana gets the dashboard; admin ports stay on loopback.
  const prom = parse(readFileSync(`${root}/examples/compose/prometheus.yml`, "utf8")) as {
    rule_files: string[];
    scrape_configs: { static_configs: { targets: string[] }[] }[];
  };
  const targets = prom.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets)).sort();
  assert.deepEqual(targets, ["backend-1:15020", "backend-2:15020", "ca:15444", "client:15020"], "and the CA");
  const aliases = (svc: string) =>
    (services[svc] as { networks?: Record<string, { aliases?: string[] } | null> }).networks?.default
      ?.aliases ?? [];
  assert.ok(aliases("backend").includes("backend-1"), "backend-1 names the first replica alone");
  assert.ok(aliases("backend-2").includes("backend"), "both replicas answer to backend");
  assert.deepEqual(prom.rule_files, ["/etc/prometheus/weft-alerts.yml"]);
  // Short-syntax volumes `source:target:ro`.
  const mounts = (svc: string) =>
    ((services[svc] as { volumes?: (string | { target?: string })[] }).volumes ?? []).map((v) =>
      typeof v === "string" ? v.split(":")[1] : v.target,
    );
  assert.ok(
    mounts("prometheus").includes("/etc/prometheus/weft-alerts.yml"),
    "prometheus loads the alert rules",
  );
  assert.ok(
    mounts("grafana").includes("/etc/grafana/dashboards/weft-dashboard.json"),
    "grafana loads the dashboard",
  );
  const sidecarScript = readFileSync(`${root}/examples/pod/sidecar.sh`, "utf8");
  assert.match(sidecarScript, /admin: \{ address: 127\.0\.0\.1, port: 15000 \}/, "admin on loopback");
  assert.match(sidecarScript, /metrics: \{ address: 0\.0\.0\.0, port: 15020 \}/);
  const dockerfile = readFileSync(`${root}/Dockerfile`, "utf8");
  assert.match(dockerfile, /USER 1337/, "the proxy runs as UID 1337");
  assert.match(
    dockerfile,
    /FROM node:24-bookworm-slim AS build[\s\S]*FROM node:24-bookworm-slim\n/,
    "multi-stage, on Node 24 LTS (image.test.ts runs its steps)",
  );
  // Start order and restarts: the CA is healthy once its /healthz answers over TLS (after it wrote every
  // token); sidecars wait for that and for their init; everything long-running restarts.
  const caCheck = services.ca?.healthcheck?.test ?? [];
  assert.equal(caCheck[0], "CMD");
  assert.match(caCheck.join(" "), /\/healthz.*\/var\/lib\/weft-ca\/bundle\.pem/);
  for (const app of apps) {
    const sidecar = services[`${app}-sidecar`]!;
    assert.deepEqual(sidecar.depends_on, {
      [`${app}-init`]: { condition: "service_completed_successfully" },
      ca: { condition: "service_healthy" },
    });
    assert.equal(sidecar.restart, "unless-stopped");
    assert.equal(services[app]!.restart, "unless-stopped");
    // Its own token volume only, read-only; the CA writes each workload's into its own volume.
    const sa = sidecar.environment?.WEFT_SA;
    const tokenMounts = (sidecar.volumes ?? []).filter((v) => v.includes(":/run/weft"));
    assert.deepEqual(tokenMounts, [`weft-tokens-${sa}:/run/weft:ro`]);
    assert.ok(
      services.ca?.volumes?.includes(`weft-tokens-${sa}:/run/weft/${sa}:rw`),
      JSON.stringify(services.ca?.volumes),
    );
  }
  assert.equal(services.ca?.restart, "unless-stopped");
});
