/**
 * `npm run demo -- --transparent`: run non-interactively (runDemoTransparent), its output shows the
 * identities from the CA pod, the frontend's requests spread over both nginx pods, the stopped backend
 * ejected while no other request fails, its return with traffic, and where the metrics are; it leaves no
 * namespace, process or directory behind, also when interrupted (Ctrl-C) half-way. Without root the CLI
 * exits 1 with a clear message.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { runDemoTransparent } from "../../src/demo/transparent.ts";
import { namespacesOf, requireRoot } from "../helpers/netns.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

function leftovers(dir: string): string[] {
  return execFileSync("ps", ["-eo", "pid,args"])
    .toString()
    .split("\n")
    .filter((l) => l.includes(dir));
}

const section = (out: string, n: number) => out.split(`== ${n}.`)[1]?.split(`== ${n + 1}.`)[0] ?? "";

test("demo --transparent without root exits 1 and says it needs root", async () => {
  // As root, drop to the proxy UID to see what a user without root sees.
  const asUser =
    process.getuid?.() === 0 ? ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--"] : [];
  const cmd = [...asUser, process.execPath, "--import", "tsx", "src/cli/demo-main.ts", "--transparent"];
  const child = spawn(cmd[0]!, cmd.slice(1), {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  child.stdout.resume();
  const code = await new Promise((r) => child.once("exit", r));
  assert.equal(code, 1, err);
  assert.match(err, /demo: the transparent demo needs root/);
});

test("demo --transparent: identities, spread over two nginx pods, ejection of the stopped one with no failed request, its return, metrics; nothing left behind", async (t) => {
  if (!requireRoot(t)) return;
  const lines: string[] = [];
  await runDemoTransparent({
    out: (l) => lines.push(l),
    interrupted: new Promise(() => {}),
    keepRunning: false,
    answers: 16,
  });
  const out = lines.join("\n");
  t.diagnostic(out);
  const dir = /written to (\/\S+)\/run\//.exec(out)?.[1];
  assert.ok(dir, out);
  const id = /CA pod weft-([0-9a-f]{6})-ca /.exec(out)?.[1];
  assert.ok(id, out);
  assert.deepEqual(await namespacesOf(id), [], "no namespace left behind");
  assert.deepEqual(leftovers(dir), [], "no process left behind");
  assert.ok(!existsSync(dir), "its temp dir is removed");

  assert.match(out, /examples\/pod\/ca\.sh made trust domain weft\.local, serving https:\/\/198\.18\./);
  assert.match(out, /frontend\s+spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend\s+serial [0-9A-F]{12}/);
  assert.match(out, /backend-2\s+spiffe:\/\/weft\.local\/ns\/default\/sa\/backend\s+serial [0-9A-F]{12}/);

  const spread = /answers → backend-1: (\d+), backend-2: (\d+), failed: 0/.exec(section(out, 3));
  assert.ok(spread && Number(spread[1]) >= 4 && Number(spread[2]) >= 4, `spread: ${section(out, 3)}`);

  const down = section(out, 4);
  const failover = /answers → backend-1: (16, failed: 0|15, failed: 1)$/m.exec(down);
  assert.ok(
    failover,
    `with backend-2 down every answer comes from backend-1 (at most the one request in flight when it was killed fails): ${down}`,
  );
  assert.match(down, /backend-2\s+(ejected|unhealthy) \(ejected [1-9]×\)/);

  const back = /answers → backend-1: (\d+), backend-2: (\d+), failed: 0/.exec(section(out, 5));
  assert.ok(back && Number(back[2]) >= 1, `backend-2 gets traffic again: ${section(out, 5)}`);

  assert.match(
    section(out, 6),
    /weft_tcp_connections_closed_total\{direction="inbound",service="backend",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend",reason="closed"\} \d+/,
  );
  assert.match(
    section(out, 6),
    /weft_outlier_ejections_total\{service="backend",endpoint="198\.18\.\d+\.\d+:8080"\} [1-9]/,
  );
  assert.match(out, /ip netns exec weft-\S+-frontend curl -s 127\.0\.0\.1:15000\/metrics/);
  assert.match(out, /Done: stopping every process and deleting every namespace/);
});

test("demo --transparent interrupted (Ctrl-C) half-way: it stops and leaves nothing behind", async (t) => {
  if (!requireRoot(t)) return;
  const lines: string[] = [];
  let interrupt: () => void = () => {};
  const interrupted = new Promise<void>((r) => {
    interrupt = r;
  });
  await runDemoTransparent({
    out: (l) => {
      lines.push(l);
      // Ctrl-C as soon as the second pod is up.
      if (/pod backend-2 /.test(l)) interrupt();
    },
    interrupted,
    keepRunning: true,
  });
  const out = lines.join("\n");
  const dir = /written to (\/\S+)\/run\//.exec(out)?.[1];
  assert.ok(dir, out);
  assert.match(out, /Interrupted: stopping every process and deleting every namespace/);
  assert.doesNotMatch(out, /== 3\./, "it stopped where it was");
  const id = /CA pod weft-([0-9a-f]{6})-ca /.exec(out)?.[1];
  assert.ok(id, out);
  assert.deepEqual(await namespacesOf(id), [], "no namespace left behind");
  assert.deepEqual(leftovers(dir), [], "no process left behind");
  assert.ok(!existsSync(dir), "its temp dir is removed");
});
