// A process started in a test namespace: waitFor() answers as soon as the process has said what was
// awaited, and fails at once (not after its timeout) when the process ends without saying it.
import assert from "node:assert/strict";
import { test } from "node:test";
import { isWeftError } from "../../src/core/errors.ts";
import { requireRoot, testNetwork } from "../helpers/netns.ts";

test("waitFor resolves on the output and fails with reason exited once the process is gone", async (t) => {
  if (!requireRoot(t)) return;
  const net = await testNetwork(t);
  const host = await net.addHost("h");

  const talker = host.spawn("sh", ["-c", "echo ready-42; sleep 30"]);
  t.after(() => talker.kill("SIGKILL"));
  const m = await talker.waitFor(/ready-(\d+)/);
  assert.equal(m[1], "42");

  // A timeout far beyond the suite's patience: the rejection must come from the exit, not the timer.
  const quitter = host.spawn("sh", ["-c", "echo something-else; exit 3"]);
  await assert.rejects(quitter.waitFor(/never-printed/, 60_000), (err: unknown) => {
    assert.ok(isWeftError(err, "E_NOT_READY"), `expected E_NOT_READY, got ${String(err)}`);
    assert.equal(err.reason, "exited");
    assert.match(err.message, /something-else/);
    return true;
  });
  assert.equal(await quitter.exited, 3);

  // Waiting on a process that is already gone fails the same way.
  await assert.rejects(quitter.waitFor(/never-printed/, 60_000), /exited before printing/);
});
