/**
 * The leak check at the end of an integration test file: once every test of the file and its `after`
 * hooks are done, nothing the file started may still keep the process alive: no socket, server, timer,
 * child process or file watcher (Node's active resources). Handles that are closing get a moment to go.
 * Call `checkLeaksAtEnd()` once at the top level of the file.
 */
import assert from "node:assert/strict";
import { after } from "node:test";

/** Resource kinds a finished test file must not hold (the runner's own pipes and fs requests are not). */
const LEAK_KINDS = new Set([
  "TCPSocketWrap",
  "TCPServerWrap",
  "TCPWRAP",
  "TLSWrap",
  "UDPWrap",
  "ProcessWrap",
  "Timeout",
  "FSEventWrap",
  "StatWatcher",
  "Http2Session",
]);

/** The leaking resources now, by kind, e.g. `{ TCPSocketWrap: 2 }`. */
export function liveResources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) {
    if (LEAK_KINDS.has(kind)) out[kind] = (out[kind] ?? 0) + 1;
  }
  return out;
}

/** After the file's tests: wait up to `graceMs` for closing handles, then assert that none is left. */
export function checkLeaksAtEnd(graceMs = 3000): void {
  after(async () => {
    const deadline = Date.now() + graceMs;
    let live = liveResources();
    while (Object.keys(live).length > 0 && Date.now() < deadline) {
      // Unreferenced: the wait itself is not a live timer.
      await new Promise((resolve) => setTimeout(resolve, 50).unref());
      live = liveResources();
    }
    assert.deepEqual(live, {}, "the test file left sockets, servers, timers or child processes alive");
  });
}
