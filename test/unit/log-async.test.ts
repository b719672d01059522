/**
 * Logging never stalls the event loop: lines go to stderr asynchronously through a bounded buffer, and
 * when the reader stops reading (a stuck log shipper on the other end of a pipe) the lines beyond the
 * bound are dropped and counted, while logging calls keep returning at once.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { constants, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { childOf, createLogger, logDestination, MemoryLogger } from "../../src/core/log.ts";

test("a stalled log reader: logging returns at once, lines past the buffer are dropped and counted", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "weft-log-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, "stderr.fifo");
  assert.equal(spawnSync("mkfifo", [fifo]).status, 0, "mkfifo");
  // Read-write open: no reader needed to open it, and nobody reads: the pipe fills (64 KiB) and stalls.
  const fd = openSync(fifo, constants.O_RDWR);
  let dropped = 0;
  const dest = logDestination({ fd, maxBytes: 256 * 1024, onDropped: (n) => (dropped += n) });
  const logger = createLogger({ level: "info", name: "weft", destination: dest });
  const line = "x".repeat(200);
  const lines = 5_000; // ~1.2 MB of log lines: far past the pipe and the buffer
  const started = process.hrtime.bigint();
  for (let i = 0; i < lines; i++) logger.info({ i, line }, "connection closed");
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
  assert.ok(dropped > 0, "lines past the bound were dropped");
  assert.ok(dropped < lines, "the buffer held some");
  // Not a timing assertion of speed, a bound on blocking: a synchronous write would wait forever here.
  assert.ok(elapsedMs < 60_000, `logging returned (${elapsedMs} ms)`);

  // A reader comes back: what was kept is written, then the destination closes.
  const cat = spawn("cat", [fifo], { stdio: ["ignore", "pipe", "ignore"] });
  let got = 0;
  cat.stdout.on("data", (d: Buffer) => {
    got += d.length;
  });
  const catDone = new Promise((resolve) => cat.once("close", resolve));
  const closed = new Promise((resolve) => (dest as unknown as NodeJS.EventEmitter).once("close", resolve));
  (dest as unknown as { end(): void }).end();
  await closed;
  await catDone;
  assert.ok(got > 256 * 1024 - 64 * 1024, `what was kept is written once the reader reads (${got} bytes)`);
});

test("childOf adds only keys the parent does not bind (no repeated component key)", () => {
  const root = new MemoryLogger();
  const identity = root.child({ component: "identity" });
  const client = childOf(identity, { component: "ca-client", spiffe_id: "spiffe://weft.local/ns/a/sa/b" });
  client.info({}, "x");
  assert.equal(root.records[0]?.component, "identity");
  assert.equal(root.records[0]?.spiffe_id, "spiffe://weft.local/ns/a/sa/b");
  // pino: the serialized line has the key once.
  const lines: string[] = [];
  const sink = { write: (s: string) => lines.push(s) };
  const p = createLogger({ name: "weft", destination: sink as never });
  childOf(p.child({ component: "identity" }), { component: "ca-client" }).info({}, "y");
  assert.equal(lines[0]?.match(/"component"/g)?.length, 1, lines[0]);
});
