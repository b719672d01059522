/**
 * A cross-process lock on a file, for the CA's read-modify-write stores (join tokens, issued serials) that
 * `meshca serve` and CLI commands share. It is an advisory `flock(2)` on `<file>.lock`, taken with
 * LOCK_NB and retried: the kernel drops it when its holder exits, however it exits, so a crash (SIGKILL
 * in the middle of a write) leaves no stale lock and there is no "is the owner still alive?" guess that
 * two waiters could both answer and then both hold the lock. The lock file is never deleted (deleting it
 * would let a waiter lock an unlinked inode while another locks the new file); it holds the last
 * holder's PID for humans.
 */
import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { WeftError } from "../core/errors.ts";
import { loadKoffiLibc } from "../runtime/libc.ts";

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
/** EWOULDBLOCK on Linux (11) and on macOS (35). */
const WOULD_BLOCK = new Set([11, 35]);
const RETRY_MS = 10;
/** How long a waiter waits for a live holder (its critical section is a few ms) before giving up. */
export const LOCK_TIMEOUT_MS = 10_000;

type Flock = (fd: number, op: number) => number;
let flockFn: { flock: Flock; errno: () => number } | undefined;
/**
 * The handles of the locks this process holds. A FileHandle that becomes garbage is closed by Node,
 * and closing it drops the flock; a critical section parked on a promise that nothing else references
 * would let that happen while the process still relies on the lock.
 */
const held = new Set<object>();

function libcFlock(): { flock: Flock; errno: () => number } {
  if (!flockFn) {
    const { koffi, lib } = loadKoffiLibc();
    flockFn = { flock: lib.func("int flock(int, int)") as Flock, errno: () => koffi.errno() };
  }
  return flockFn;
}

/**
 * Runs `fn` while holding the lock `<path>` (created 0600 if missing). Waits up to `timeoutMs` for
 * another holder; throws E_IO (reason lock_timeout) after that.
 */
export async function withFileLock<T>(
  path: string,
  fn: () => Promise<T>,
  opts: { timeoutMs?: number } = {},
): Promise<T> {
  const { flock, errno } = libcFlock();
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(path, "a+", 0o600);
  } catch (err) {
    throw new WeftError("E_IO", `cannot open lock ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const deadline = Date.now() + (opts.timeoutMs ?? LOCK_TIMEOUT_MS);
    for (;;) {
      if (flock(fh.fd, LOCK_EX | LOCK_NB) === 0) break;
      const e = errno();
      if (!WOULD_BLOCK.has(e)) {
        throw new WeftError("E_IO", `cannot lock ${path}: flock failed with errno ${e}`, {
          reason: "lock_failed",
        });
      }
      if (Date.now() > deadline) {
        throw new WeftError(
          "E_IO",
          `${path} stays locked by another meshca process (see the PID in it); is a command hung?`,
          { reason: "lock_timeout" },
        );
      }
      await sleep(RETRY_MS);
    }
    held.add(fh);
    try {
      await fh.truncate(0);
      await fh.write(`${process.pid}\n`, 0);
      return await fn();
    } finally {
      flock(fh.fd, LOCK_UN);
      held.delete(fh);
    }
  } finally {
    await fh.close();
  }
}

/**
 * Read-modify-write cycles on one file, one at a time: an in-process queue (so a process never waits
 * on its own flock) and `withFileLock` across processes. What the CA's JSON stores share.
 */
export class LockedUpdates {
  /** Tail of the queue: every cycle runs after the previous one finished (failed or not). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly lockPath: string) {}

  run(cycle: () => Promise<void>): Promise<void> {
    const run = this.queue.then(() => withFileLock(this.lockPath, cycle));
    this.queue = run.catch(() => {});
    return run;
  }
}
