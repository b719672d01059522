/**
 * Truncation is a reset (issue 13, point 6): a tunnel that ends without saying that the app ended (a
 * sidecar killed mid-transfer: its kernel closes the process's sockets with a FIN, and Node cannot tell
 * that FIN from a TLS close_notify) must reach the app on the other side as a reset, never as a FIN, or
 * a truncated transfer looks complete to an app that reads to EOF.
 *
 * - Download: the server sidecar (a `weft proxy` child) is SIGKILLed while its app streams to the
 *   client app; the client app must see ECONNRESET.
 * - Upload (the mirror): the client sidecar (a `weft proxy` child) is SIGKILLed while the client app
 *   streams to the server app; the server app must see ECONNRESET.
 *
 * Each on both transports: per-connection (`weft/3`, whose end frame tells the app's FIN from a cut
 * tunnel; the surviving sidecar logs `peer_truncated`) and pooled (HTTP/2: END_STREAM is explicit and
 * a session that dies takes its streams with it as resets). Before each kill, one complete transfer
 * through the same pair must end with a clean FIN and every byte (the framing carries the app's FIN).
 * The test's sockets ask the kernel on EOF, as the splice does: libuv reports EOF when the last bytes
 * and an RST arrive in one poll.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import net, { type Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { MemoryLogger } from "../../src/core/log.ts";
import { startClientFor, startClientProcess, startServerProcess } from "../helpers/adversarial.ts";
import { type ReadOutcome, readOutcome } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import {
  accessLines,
  identityDir,
  startSidecar,
  TRANSPORTS,
  type Transport,
  testConfig,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

/** Bytes of the complete transfer before the kill, each way. */
const COMPLETE_BYTES = 4 * 1024 * 1024;
/** The kill comes once the reading app has this many bytes of the endless transfer. */
const KILL_AFTER = 2 * 1024 * 1024;
/** An endless transfer stops here at the latest, so a test that goes wrong still ends. */
const ENDLESS_CAP = 512 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 0x5a);

/** Write `total` bytes (or until the socket fails) with backpressure; resolves with the sha256 written. */
async function writeBytes(s: Socket, total: number, end: boolean): Promise<string> {
  const hash = createHash("sha256");
  let sent = 0;
  while (sent < total && !s.destroyed && s.writable) {
    const part = total - sent >= CHUNK.length ? CHUNK : CHUNK.subarray(0, total - sent);
    hash.update(part);
    sent += part.length;
    if (!s.write(part)) {
      await new Promise<void>((r) => {
        const go = (): void => {
          s.off("drain", go);
          s.off("close", go);
          r();
        };
        s.on("drain", go);
        s.on("close", go);
      });
    }
  }
  if (end && !s.destroyed) s.end();
  return hash.digest("hex");
}

/**
 * The app behind the server sidecar. A connection's first byte says what it wants: `D` a complete
 * download (COMPLETE_BYTES, then FIN), `E` an endless one, `U` an upload that the app reads to its end
 * (it is added to `uploads`), answered with `ok` and a FIN.
 */
interface Upload {
  readonly outcome: Promise<ReadOutcome>;
  /** Bytes read so far. */
  readonly progress: { bytes: number };
}

async function startApp(t: TestContext): Promise<{ port: number; uploads: Upload[] }> {
  const uploads: Upload[] = [];
  const sockets = new Set<Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    s.on("error", () => {});
    s.once("data", (first: Buffer) => {
      const mode = String.fromCharCode(first[0]!);
      if (mode === "U") {
        s.pause();
        const rest = first.subarray(1);
        const progress = { bytes: 0 };
        const out = readOutcome(s, (n) => {
          progress.bytes = n;
        });
        if (rest.length > 0) s.unshift(rest);
        s.resume();
        uploads.push({ outcome: out, progress });
        void out.then((o) => {
          if (o.end === "eof" && !s.destroyed) s.end("ok");
        });
        return;
      }
      s.resume();
      void writeBytes(s, mode === "D" ? COMPLETE_BYTES : ENDLESS_CAP, true);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, uploads };
}

function dial(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    s.once("connect", () => {
      s.off("error", reject);
      s.on("error", () => {});
      resolve(s);
    });
    s.once("error", reject);
  });
}

/** The reasons the surviving sidecar logged for connections that did not close cleanly. */
function reasons(log: MemoryLogger, direction: string): string[] {
  return accessLines(log, direction)
    .map((l) => String(l.reason))
    .filter((r) => r !== "closed");
}

/** What the surviving sidecar must log for the cut connection. */
function expectedReasons(transport: Transport, direction: "upstream" | "downstream"): string[] {
  // Per-connection: the tunnel ended without its end frame (or, if the dying kernel had unread bytes,
  // with a reset). Pooled: the session died under the stream.
  return transport === "per-connection"
    ? ["peer_truncated", `${direction}_reset`]
    : [`${direction}_reset`, `${direction}_error`];
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a server sidecar killed mid-download reaches the client app as a reset, not a FIN`, async (t) => {
    const app = await startApp(t);
    const ca = await createTestCa({ trustDomain: "weft.local" });
    const server = await startServerProcess(t, ca);
    const client = await startClientFor(t, ca, server, app.port, transport);

    // A complete download first: every byte, then a clean FIN.
    const ok = await dial(client.port);
    ok.write("D");
    ok.end();
    const complete = await readOutcome(ok);
    assert.equal(complete.end, "eof", "a complete download ends with a FIN");
    assert.equal(complete.bytes, COMPLETE_BYTES);
    ok.destroy();

    const s = await dial(client.port);
    s.write("E");
    let killed = false;
    const outcome = await readOutcome(s, (bytes) => {
      if (!killed && bytes >= KILL_AFTER) {
        killed = true;
        server.weft.child.kill("SIGKILL");
      }
    });
    s.destroy();
    assert.ok(killed, `the server sidecar was killed mid-download (${outcome.bytes} B, ${outcome.end})`);
    assert.equal(outcome.end, "reset", `the client app saw ${outcome.end} after ${outcome.bytes} B`);
    assert.ok(outcome.bytes < ENDLESS_CAP);
    await eventually(
      () => `the client sidecar logs the cut connection: ${JSON.stringify(reasons(client.log, "explicit"))}`,
      () => reasons(client.log, "explicit").length > 0,
    );
    const logged = reasons(client.log, "explicit");
    assert.ok(
      logged.every((r) => expectedReasons(transport, "upstream").includes(r)),
      `client sidecar reasons: ${logged.join(", ")}`,
    );
    if (transport === "per-connection") assert.ok(logged.includes("peer_truncated"), logged.join(", "));
  });

  test(`${transport}: a client sidecar killed mid-upload reaches the server app as a reset, not a FIN`, async (t) => {
    const app = await startApp(t);
    const ca = await createTestCa({ trustDomain: "weft.local" });
    const serverFiles = await identityDir(t, "server");
    const serverIssued = await ca.issue("default/backend");
    await writeIdentity(serverFiles, serverIssued);
    const serverLog = new MemoryLogger();
    const server = await startSidecar(
      t,
      testConfig(ca.trustDomain, serverFiles),
      new StaticRouteTable([]),
      serverLog,
    );
    const { weft, port } = await startClientProcess(
      t,
      ca,
      { issued: serverIssued, tunnelPort: server.addresses.tunnel!.port },
      app.port,
      transport,
    );

    // A complete upload first: the app gets every byte and a clean FIN, and answers after it.
    const ok = await dial(port);
    const answer = readOutcome(ok);
    ok.write("U");
    const sent = await writeBytes(ok, COMPLETE_BYTES, true);
    const replied = await answer;
    assert.equal(replied.end, "eof");
    assert.equal(replied.bytes, 2, "the app answered `ok` after the upload's FIN");
    const complete = await app.uploads[0]!.outcome;
    assert.equal(complete.end, "eof", "a complete upload ends with a FIN");
    assert.equal(complete.bytes, COMPLETE_BYTES);
    assert.equal(complete.sha256, sent);
    ok.destroy();

    const s = await dial(port);
    s.write("U");
    const writing = writeBytes(s, ENDLESS_CAP, false);
    await eventually(
      () => "the second upload reaches the app",
      () => app.uploads.length === 2,
    );
    // The app's reader counts as it goes: kill once it has KILL_AFTER bytes (polled; bounded).
    const upload = app.uploads[1]!;
    await eventually(
      () => `the app received ${KILL_AFTER} B of the upload (has ${upload.progress.bytes} B)`,
      () => upload.progress.bytes >= KILL_AFTER,
      { timeoutMs: 30_000 },
    );
    weft.child.kill("SIGKILL");
    const outcome = await upload.outcome;
    s.destroy();
    await writing;
    assert.equal(outcome.end, "reset", `the server app saw ${outcome.end} after ${outcome.bytes} B`);
    await eventually(
      () => `the server sidecar logs the cut connection: ${JSON.stringify(reasons(serverLog, "inbound"))}`,
      () => reasons(serverLog, "inbound").length > 0,
    );
    const logged = reasons(serverLog, "inbound");
    assert.ok(
      logged.every((r) => expectedReasons(transport, "downstream").includes(r)),
      `server sidecar reasons: ${logged.join(", ")}`,
    );
    if (transport === "per-connection") assert.ok(logged.includes("peer_truncated"), logged.join(", "));
  });
}
