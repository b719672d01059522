/**
 * A child process for tokens-lock-crash.test.ts. `hold <dir>`: take the token store's lock, start
 * writing a new tokens file by hand (half of it), print "holding" and hang until killed (SIGKILL: no
 * clean-up of any kind runs). `contend <dir>
 * <rounds>`: `rounds` times, take the lock and prove no one else holds it (an O_EXCL marker file that
 * only a holder creates and removes), and make one token through TokenStore; exit 0, or 3 on overlap.
 */
import { open, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { withFileLock } from "../../src/ca/file-lock.ts";
import { TOKENS_FILE, TokenStore } from "../../src/ca/tokens.ts";
import { systemClock } from "../../src/core/clock.ts";

const [mode, dir, roundsText] = process.argv.slice(2);
const file = join(dir!, TOKENS_FILE);
const lock = `${file}.lock`;
const marker = join(dir!, "holder");

if (mode === "hold") {
  await withFileLock(lock, async () => {
    await writeFile(`${file}.partial.tmp`, '{"version":1,"tokens":[{"hash":"ab');
    setTimeout(() => {
      (globalThis as { gc?: () => void }).gc?.();
      process.stdout.write("holding\n");
    }, 50);
    // Never settles, and nothing references this promise: the parked frame (and the lock's FileHandle
    // in it) is garbage, so the lock must be kept by withFileLock itself, not by this caller.
    await new Promise(() => {
      setInterval(() => {}, 1000);
    });
  });
} else {
  const store = new TokenStore({ file, clock: systemClock, trustDomain: "weft.local" });
  for (let i = 0; i < Number(roundsText); i++) {
    await withFileLock(lock, async () => {
      try {
        await open(marker, "wx").then((h) => h.close());
      } catch {
        process.stderr.write(`overlap: ${marker} exists while this process holds the lock\n`);
        process.exit(3);
      }
      await sleep(1);
      await unlink(marker);
    });
    await store.create({ idPattern: "spiffe://weft.local/ns/default/sa/web" });
  }
}
