/**
 * The weft/3 framing on the wire (src/proxy/connection/frames.ts), against a real server sidecar and a
 * real app, with a hand-made client that holds a valid certificate and does what a sidecar would not:
 * - the clean case: status `57 46 03 00`, then the app's reply in frames and an end frame for its FIN;
 * - a tunnel that ends without the end frame, even with a clean TLS close_notify, between frames or in
 *   the middle of one: the app is reset (`peer_truncated`);
 * - a byte after the end frame: the tunnel and the app are reset (`peer_protocol_error`);
 * - a frame that claims 4 GiB is streamed to the app as it comes: the reader never holds a frame.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { MemoryLogger } from "../../src/core/log.ts";
import { END_FRAME, FrameReader } from "../../src/proxy/connection/frames.ts";
import { encodeProxyV2 } from "../../src/proxy/transport/proxy-protocol.ts";
import { type App, readBytes, readOutcome, startApp } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  accessLines,
  identityDir,
  startSidecar,
  type TestCa,
  testConfig,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

function frame(bytes: Buffer | string): Buffer {
  const b = Buffer.from(bytes);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(b.length, 0);
  return Buffer.concat([h, b]);
}

async function setup(
  t: TestContext,
  script: (s: Socket) => void,
): Promise<{ ca: TestCa; app: App; log: MemoryLogger; tunnelPort: number }> {
  const ca = await createTestCa();
  const app = await startApp(script);
  t.after(() => app.close());
  const files = await identityDir(t, "server");
  await writeIdentity(files, await ca.issue("default/backend"));
  const log = new MemoryLogger();
  const sidecar = await startSidecar(t, testConfig(ca.trustDomain, files), new StaticRouteTable([]), log);
  return { ca, app, log, tunnelPort: sidecar.addresses.tunnel!.port };
}

/** A weft/3 tunnel to `tunnelPort` whose PROXY header names the app's port. */
async function dialWeft3(
  t: TestContext,
  ca: TestCa,
  tunnelPort: number,
  appPort: number,
): Promise<tls.TLSSocket> {
  const creds = await ca.issue("default/frontend");
  const s = tls.connect({
    host: "127.0.0.1",
    port: tunnelPort,
    ALPNProtocols: ["weft/3", "weft/2", "weft/1"],
    rejectUnauthorized: false,
    key: creds.keyPem,
    cert: creds.chainPem,
    allowHalfOpen: true,
  } as tls.ConnectionOptions);
  s.on("error", () => {});
  t.after(() => s.destroy());
  await new Promise((r) => s.once("secureConnect", r));
  assert.equal(s.alpnProtocol, "weft/3", "a new server prefers weft/3");
  s.write(
    encodeProxyV2({
      command: "PROXY",
      source: { address: "127.0.0.1", port: 40000 },
      destination: { address: "127.0.0.1", port: appPort },
      tlvs: [],
    }),
  );
  return s;
}

async function reason(log: MemoryLogger): Promise<string> {
  await eventually("the server sidecar logs the connection", () => accessLines(log, "inbound").length > 0);
  return String(accessLines(log, "inbound")[0]!.reason);
}

test("weft/3: status 57 46 03 00, then the app's bytes in frames; the end frame is the FIN both ways", async (t) => {
  // The app reads the request to its end, then answers and ends: the FIN must cross in both directions.
  const { ca, app, log, tunnelPort } = await setup(t, (s) => {
    let got = 0;
    s.on("data", (d: Buffer) => {
      got += d.length;
    });
    s.once("end", () => s.end(`got ${got}`));
  });
  const s = await dialWeft3(t, ca, tunnelPort, app.port);
  s.write(Buffer.concat([frame("hello"), frame(" world"), END_FRAME]));
  s.end();
  assert.deepEqual([...(await readBytes(s, 4))], [0x57, 0x46, 3, 0]);
  const reader = new FrameReader();
  const reply: Buffer[] = [];
  await new Promise<void>((resolve) => {
    s.on("data", (d: Buffer) => {
      reply.push(...reader.read(d));
    });
    s.once("end", resolve);
    s.resume();
  });
  assert.equal(Buffer.concat(reply).toString(), "got 11");
  assert.ok(reader.ended, "the app's FIN came as an end frame");
  assert.equal(reader.violated, false);
  assert.equal(await reason(log), "closed");
});

for (const where of ["between frames", "inside a frame"] as const) {
  test(`weft/3: a tunnel that ends ${where} without its end frame resets the app (peer_truncated)`, async (t) => {
    const outcomes: Array<Promise<Awaited<ReturnType<typeof readOutcome>>>> = [];
    const { ca, app, log, tunnelPort } = await setup(t, (s) => outcomes.push(readOutcome(s)));
    const s = await dialWeft3(t, ca, tunnelPort, app.port);
    const cut =
      where === "between frames"
        ? frame("complete frame")
        : Buffer.concat([frame("first"), frame("x".repeat(100)).subarray(0, 50)]);
    s.write(cut);
    assert.deepEqual([...(await readBytes(s, 4))], [0x57, 0x46, 3, 0]);
    // A clean TLS end (close_notify, then FIN): still a truncation, as no end frame came first.
    s.end();
    await eventually("the app was connected", () => outcomes.length === 1);
    const outcome = await outcomes[0]!;
    assert.equal(outcome.end, "reset", `the app saw ${outcome.end} after ${outcome.bytes} B`);
    assert.equal(outcome.bytes, where === "between frames" ? 14 : 5 + 46);
    assert.equal(await reason(log), "peer_truncated");
  });
}

test("weft/3: a byte after the end frame resets the tunnel and the app (peer_protocol_error)", async (t) => {
  const { ca, app, log, tunnelPort } = await setup(t, (s) => s.resume());
  const s = await dialWeft3(t, ca, tunnelPort, app.port);
  const closed = readOutcome(s);
  s.write(Buffer.concat([frame("ok"), END_FRAME, Buffer.from("!")]));
  const outcome = await closed;
  assert.equal(outcome.end, "reset", `the client saw ${outcome.end}`);
  assert.equal(await reason(log), "peer_protocol_error");
});

test("weft/3: a frame that claims 4 GiB is streamed to the app as it comes, never held", async (t) => {
  const counted = { bytes: 0 };
  const { ca, app, tunnelPort } = await setup(t, (s) => {
    s.on("data", (d: Buffer) => {
      counted.bytes += d.length;
    });
  });
  const s = await dialWeft3(t, ca, tunnelPort, app.port);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(0xffff_ffff, 0);
  s.write(h);
  const block = Buffer.alloc(64 * 1024, 0x61);
  for (let i = 0; i < 128; i++) {
    if (!s.write(block)) await new Promise((r) => s.once("drain", r));
  }
  await eventually("8 MiB of the frame reached the app", () => counted.bytes === 128 * block.length, {
    timeoutMs: 20_000,
  });
});
