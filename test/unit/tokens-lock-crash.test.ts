// The token store's cross-process lock after a crash: a holder SIGKILLed in the middle of a write leaves
// no stale lock (the kernel drops its flock), a waiter that was blocked on it proceeds, and then several
// processes racing for the lock never hold it at the same time (each proves it with an O_EXCL marker) and
// lose no token. (The holder parks its critical section on a promise nothing references and collects
// garbage: withFileLock must keep its FileHandle alive, or Node closes it and the flock is gone early.) The old lock file (O_EXCL + "is the PID alive?") let two waiters both break a dead
// holder's lock and both hold it.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

const REPO = resolve(import.meta.dirname, "../..");
const SCRIPT = join(REPO, "test/helpers/lock-contender.ts");

function child(...args: string[]): { proc: ChildProcess; exit: Promise<number | null>; err: () => string } {
  // --expose-gc: the holder collects garbage before it reports "holding", so a lock that only a
  // collectable object kept would be dropped now, not at some later and random moment.
  const proc = spawn(process.execPath, ["--expose-gc", "--import", "tsx", SCRIPT, ...args], {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exit = once(proc, "exit").then(([code]) => code as number | null);
  return { proc, exit, err: () => err };
}

test("a lock holder killed mid-write leaves no stale lock and never two holders", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-lock-crash-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const holder = child("hold", dir);
  t.after(() => holder.proc.kill("SIGKILL"));
  const [line] = await once(holder.proc.stdout!, "data");
  assert.match(String(line), /holding/);

  // A waiter blocks while the holder lives...
  const waiter = child("contend", dir, "1");
  let waiterDone: string | undefined;
  void waiter.exit.then((code) => (waiterDone = `exit code ${code}: ${waiter.err()}`));
  await sleep(400); // a fixed wait: the waiter must not finish in it
  assert.equal(waiterDone, undefined, "the waiter must not get the lock while the holder is alive");
  // ...and gets it once the holder dies without any clean-up.
  holder.proc.kill("SIGKILL");
  assert.equal(await waiter.exit, 0, waiter.err());

  const racers = [child("contend", dir, "15"), child("contend", dir, "15"), child("contend", dir, "15")];
  const codes = await Promise.all(racers.map((r) => r.exit));
  assert.deepEqual(codes, [0, 0, 0], racers.map((r) => r.err()).join("\n"));
  const data = JSON.parse(await readFile(join(dir, "tokens.json"), "utf8")) as { tokens: unknown[] };
  assert.equal(data.tokens.length, 1 + 45, "every token made under the lock is kept");
});
