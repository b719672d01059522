/**
 * What a dashboard needs, on a live sidecar pair scraped on the metrics port (15020's listener, port 0
 * here): the metric names and labels (local identity, peer identity on opened as on closed, policy
 * decisions by rule, standard process_/nodejs_ names, dropped log lines), the metrics port serving
 * nothing else; the shipped Grafana dashboard parses and every metric its queries use exists in the live
 * sidecar's /metrics; the shipped alert rules pass `promtool check rules`.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { Sidecar } from "../../src/proxy/sidecar.ts";
import { connect, readBytes, startEchoServer } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { accessLines, startSidecarPair, waitForLog } from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const root = fileURLToPath(new URL("../..", import.meta.url));
const DASHBOARD = `${root}/examples/monitoring/grafana/weft-dashboard.json`;
const ALERTS = `${root}/examples/monitoring/weft-alerts.yml`;
const FRONTEND = "spiffe://weft.local/ns/default/sa/frontend";
const BACKEND = "spiffe://weft.local/ns/default/sa/backend";

async function scrape(sidecar: Sidecar, path = "/metrics"): Promise<{ status: number; body: string }> {
  const a = sidecar.addresses.metrics!;
  const res = await fetch(`http://${a.address}:${a.port}${path}`);
  return { status: res.status, body: await res.text() };
}

async function livePair(t: TestContext) {
  const app = await startEchoServer();
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    serverConfig: { policy: { rules: [{ name: "web-clients", ports: [app.port], allow: [FRONTEND] }] } },
  });
  const s = await connect(pair.explicitPort);
  s.write("ping");
  assert.equal((await readBytes(s, 4)).toString(), "ping");
  s.end();
  await waitForLog(pair.serverLog, () => accessLines(pair.serverLog, "inbound").length === 1);
  await waitForLog(pair.clientLog, () => accessLines(pair.clientLog).length === 1);
  return { app, pair };
}

/** Every series name in Prometheus text (sample lines and # TYPE lines). */
function names(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split("\n")) {
    const typed = /^# TYPE (\S+) /.exec(line);
    if (typed) out.add(typed[1]!);
    else if (line && !line.startsWith("#")) out.add(line.split(/[{ ]/)[0]!);
  }
  return out;
}

test("metric names and labels a dashboard can use, on the metrics port", async (t) => {
  const { app, pair } = await livePair(t);
  const server = await scrape(pair.server);
  const client = await scrape(pair.client);
  assert.equal(server.status, 200);
  // The sidecar's own identity, to label or join any series with.
  assert.match(
    server.body,
    new RegExp(`^weft_info\\{local_identity="${BACKEND}",trust_domain="weft.local"\\} 1$`, "m"),
  );
  assert.match(
    client.body,
    new RegExp(`^weft_info\\{local_identity="${FRONTEND}",trust_domain="weft.local"\\} 1$`, "m"),
  );
  // Opened carries peer_identity as closed does: they join per peer, on both sides.
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  assert.match(
    server.body,
    new RegExp(
      `^weft_tcp_connections_opened_total\\{direction="inbound",service="backend",peer_identity="${esc(FRONTEND)}"\\} 1$`,
      "m",
    ),
  );
  assert.match(
    server.body,
    new RegExp(
      `^weft_tcp_connections_closed_total\\{direction="inbound",service="backend",peer_identity="${esc(FRONTEND)}",reason="closed"\\} 1$`,
      "m",
    ),
  );
  assert.match(
    client.body,
    new RegExp(
      `^weft_tcp_connections_opened_total\\{direction="explicit",service="backend",peer_identity="${esc(BACKEND)}"\\} 1$`,
      "m",
    ),
  );
  // Policy allow counted by the rule that allowed.
  assert.match(
    server.body,
    new RegExp(
      `^weft_policy_allowed_total\\{peer_identity="${esc(FRONTEND)}",port="${app.port}",rule="web-clients"\\} 1$`,
      "m",
    ),
  );
  const all = names(server.body);
  for (const n of [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "nodejs_heap_size_used_bytes",
    "nodejs_eventloop_lag_seconds",
    "nodejs_eventloop_lag_p99_seconds",
    "weft_log_lines_dropped_total",
    "weft_policy_denied_total",
    "weft_config_reloads_total",
  ]) {
    assert.ok(all.has(n), `${n} is exported`);
  }
  assert.ok(![...all].some((n) => n.startsWith("weft_process_")), "no weft_process_ prefix");
  // The metrics port serves metrics (and readiness for probes), never the admin endpoints.
  assert.equal((await scrape(pair.server, "/config")).status, 404);
  assert.equal((await scrape(pair.server, "/ready")).status, 200);
});

test("the Grafana dashboard parses and every metric its queries use exists in a live sidecar's /metrics", async (t) => {
  const { pair } = await livePair(t);
  const live = new Set([
    ...names((await scrape(pair.server)).body),
    ...names((await scrape(pair.client)).body),
  ]);
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
    uid: string;
    panels: { type: string; title: string; targets?: { expr: string }[] }[];
    templating: { list: { name: string; query?: unknown }[] };
  };
  assert.equal(dash.uid, "weft-mesh");
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((q) => ({ panel: p.title, expr: q.expr })));
  assert.ok(exprs.length >= 20, `${exprs.length} queries`);
  const used = new Set<string>();
  for (const { panel, expr } of exprs) {
    const metrics = expr.match(/\b(?:weft|process|nodejs)_[a-z0-9_]+/g) ?? [];
    assert.ok(metrics.length > 0, `${panel}: a query names a metric`);
    for (const m of metrics) {
      used.add(m);
      assert.ok(live.has(m), `${panel}: ${m} is not in a live sidecar's /metrics`);
    }
  }
  for (const v of dash.templating.list) {
    for (const m of JSON.stringify(v.query ?? "").match(/\b(?:weft|process|nodejs)_[a-z0-9_]+/g) ?? []) {
      assert.ok(live.has(m), `variable ${v.name}: ${m}`);
    }
  }
  // The alert rules use live metrics too.
  for (const m of readFileSync(ALERTS, "utf8").match(/\b(?:weft|nodejs)_[a-z0-9_]+/g) ?? []) {
    assert.ok(live.has(m), `alert rules: ${m} is not in a live sidecar's /metrics`);
  }
  assert.ok(used.has("weft_policy_denied_total") && used.has("weft_endpoint_ejected"));
});

test("the alert rules pass promtool check rules", (t) => {
  let promtool: string | undefined;
  for (const p of ["/usr/bin/promtool", "/usr/local/bin/promtool"]) {
    try {
      execFileSync(p, ["--version"], { stdio: "ignore" });
      promtool = p;
      break;
    } catch {
      // not there
    }
  }
  if (!promtool) {
    if (process.env.CI === "true") assert.fail("promtool is missing (apt-get install prometheus)");
    t.skip("promtool is not installed (Debian: apt-get install prometheus)");
    return;
  }
  const out = execFileSync(promtool, ["check", "rules", ALERTS]).toString();
  assert.match(out, /SUCCESS: 10 rules found/);
  for (const alert of [
    "WeftCertificateExpiringSoon",
    "WeftEndpointsEjected",
    "WeftTlsHandshakeFailures",
    "WeftPolicyDenials",
    "WeftConnectionsDropped",
    "WeftLogLinesDropped",
  ]) {
    assert.match(readFileSync(ALERTS, "utf8"), new RegExp(`alert: ${alert}$`, "m"));
  }
});
