import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const root = fileURLToPath(new URL("../..", import.meta.url));

test("npm run demo (3 endpoints, one killed) shows identities, spread, retries with an ejection, the return, metrics; and leaves nothing running", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-demo-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/demo-main.ts", "--dir", dir], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (d) => {
    out += d;
  });
  child.stderr.on("data", (d) => {
    out += d;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
  const code = await new Promise((r) => child.once("exit", r));
  clearTimeout(timer);
  assert.equal(code, 0, out);
  assert.match(out, /frontend\s+spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend/);
  assert.match(
    out,
    /round-robin over three endpoints → backend-1: 10, backend-2: 10, backend-3: 10, failed: 0/,
  );
  assert.match(
    out,
    /== 4[\s\S]*?30 connections → backend-1: 1\d, backend-2: 1\d, failed: 0/,
    "no client connection fails while backend-3 is down; the other two share the traffic",
  );
  assert.doesNotMatch(
    out.split("== 4")[1]!.split("== 5")[0]!,
    /backend-3: \d/,
    "the dead endpoint gets nothing",
  );
  assert.match(out, /ejected \(ejected 1×\)/);
  assert.match(out, /== 5[\s\S]*?backend-3: \d+, failed: 0/, "backend-3 gets traffic again");
  assert.match(
    out,
    /weft_tcp_connections_closed_total\{direction="inbound",service="backend",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend",reason="closed"\}/,
  );
  // Every sidecar process the demo started is gone: none still has this demo's config open.
  const { execFileSync } = await import("node:child_process");
  const ps = execFileSync("ps", ["-eo", "args"]).toString();
  assert.ok(
    !ps.includes(dir),
    `processes left behind:\n${ps
      .split("\n")
      .filter((l) => l.includes(dir))
      .join("\n")}`,
  );
});
