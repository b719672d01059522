/**
 * Signals as an operator expects (issue 13, case 9): SIGHUP reloads and never ends the process (it used
 * to exit 129 at once), SIGUSR1 opens no inspector (Node's default would listen on 127.0.0.1:9229
 * inside a security component), SIGUSR2 does not end it (exit 140 before). Each is sent to a running
 * `weft proxy`; afterwards it is still ready, and SIGTERM still drains and exits 0.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createTestCa } from "../helpers/ca.ts";
import { identityDir, writeIdentity } from "../helpers/sidecar.ts";
import { startWeftProcess } from "../helpers/weft-child.ts";

test("SIGHUP reloads, SIGUSR1 and SIGUSR2 are ignored (no inspector, no exit); SIGTERM still drains", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const files = await identityDir(t, "signals");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const weft = await startWeftProcess(t, {
    trustDomain: ca.trustDomain,
    identity: { files: { cert: files.cert, key: files.key, bundle: files.bundle } },
    listeners: {
      outbound: { enabled: false },
      inbound: { enabled: false },
      tunnel: { address: "127.0.0.1", port: 0 },
      metrics: { address: "127.0.0.1", port: 0 },
      admin: { address: "127.0.0.1", port: 0 },
    },
  });
  weft.child.kill("SIGHUP");
  await weft.waitLog((r) => r.signal === "SIGHUP");
  for (const signal of ["SIGUSR1", "SIGUSR2"] as const) {
    weft.child.kill(signal);
    await weft.waitLog((r) => r.signal === signal && /ignored/.test(String(r.msg)));
  }
  assert.ok(weft.alive(), "still running");
  assert.equal((await weft.admin_get("/ready")).status, 200);
  assert.ok(!weft.text.some((l) => /Debugger listening|inspector/i.test(l)), weft.text.join("\n"));
  weft.child.kill("SIGTERM");
  assert.deepEqual(await weft.exited, { code: 0, signal: null });
});
