/**
 * The half-close timer of a splice with a framed (`weft/3`) tunnel side, on real loopback sockets. The
 * end frame carries the peer app's FIN, but the tunnel's transport is a socket of its own: a peer (with
 * a valid certificate) that sends its end frame and then never closes the transport must not keep the
 * connection, its peer stream slot and its buffers until the idle timer. The half-close timeout reaps
 * it (`half_close_timeout`) after the apps had their FINs; a peer that does close its transport, at
 * once or only after our end frame, still ends as a clean `closed`, byte-exact, with no reset to the app.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { test } from "node:test";
import { systemClock } from "../../src/core/clock.ts";
import { END_FRAME, FrameReader, framedConcat } from "../../src/proxy/connection/frames.ts";
import { Splice, type SpliceEnd } from "../../src/proxy/connection/splice.ts";
import { closeKind, connect } from "../helpers/apps.ts";

/** A bound on every wait here; a healthy run takes well under a second. */
const DEADLINE_MS = 5_000;

/** Two ends of one loopback TCP connection, both half-open capable: [client side, server side]. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  const client = await connect((server.address() as net.AddressInfo).port);
  const other = await accepted;
  server.close();
  return [client, other];
}

function within<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${DEADLINE_MS} ms: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** The app bytes a peer reads out of our frames, and whether our end frame came. */
function readFrames(peer: Socket): { bytes: () => Buffer; endFrame: Promise<void> } {
  const reader = new FrameReader();
  const got: Buffer[] = [];
  let seen: () => void = () => {};
  const endFrame = new Promise<void>((resolve) => {
    seen = resolve;
  });
  peer.on("data", (chunk: Buffer) => {
    for (const part of reader.read(chunk)) got.push(Buffer.from(part));
    if (reader.ended) seen();
  });
  peer.on("error", () => {});
  return { bytes: () => Buffer.concat(got), endFrame };
}

interface Setup {
  readonly peer: Socket;
  readonly tunnel: Socket;
  readonly app: Socket;
  /** What the app read, and how its socket closed (`end` = a FIN, `reset`, ...). */
  readonly appRead: () => Buffer;
  readonly appClose: Promise<string>;
  readonly fromTunnel: ReturnType<typeof readFrames>;
  readonly done: Promise<SpliceEnd>;
}

/**
 * peer <-> tunnel (framed, our side) and ours <-> app; the splice joins tunnel and ours. The app answers
 * the peer's FIN with `reply` and its own FIN.
 */
async function setup(halfCloseTimeoutMs: number, reply: Buffer): Promise<Setup> {
  const [peer, tunnel] = await socketPair();
  const [ours, app] = await socketPair();
  const got: Buffer[] = [];
  app.on("data", (d: Buffer) => got.push(d));
  app.on("end", () => app.end(reply));
  const appClose = closeKind(app);
  const fromTunnel = readFrames(peer);
  const done = new Promise<SpliceEnd>((resolve) => {
    new Splice(
      { stream: tunnel, raw: tunnel, framed: true },
      { stream: ours, raw: ours },
      {
        clock: systemClock,
        idleTimeoutMs: 0,
        halfCloseTimeoutMs,
        bytes: { addReceived() {}, addSent() {} },
        onDone: (end) => resolve(end),
      },
    );
  });
  return { peer, tunnel, app, appRead: () => Buffer.concat(got), appClose, fromTunnel, done };
}

const REQUEST = Buffer.from("GET / HTTP/1.0\r\n\r\n");
const REPLY = Buffer.from("HTTP/1.0 200 OK\r\n\r\nbye");

test("a framed tunnel that keeps its transport open after its end frame is reaped by the half-close timeout", async (t) => {
  const s = await setup(200, REPLY);
  t.after(() => {
    s.peer.destroy();
    s.app.destroy();
  });
  // The end frame, and then nothing: no close_notify, no FIN.
  s.peer.write(Buffer.concat([framedConcat(undefined, [REQUEST]), END_FRAME]));
  assert.equal(await within(s.done, "the splice ends"), "half_close_timeout");
  assert.equal(s.tunnel.destroyed, true, "the tunnel socket is closed");
  // Both apps had their FINs before the reap: the app got the request and a FIN, not a reset...
  assert.equal(await within(s.appClose, "the app's socket closes"), "end");
  assert.deepEqual(s.appRead(), REQUEST);
  // ...and the peer got the reply and our end frame.
  await within(s.fromTunnel.endFrame, "our end frame reaches the peer");
  assert.deepEqual(s.fromTunnel.bytes(), REPLY);
});

test("a framed tunnel that ends with its end frame and FIN closes cleanly, byte-exact", async (t) => {
  const s = await setup(200, REPLY);
  t.after(() => {
    s.peer.destroy();
    s.app.destroy();
  });
  const peerClose = closeKind(s.peer);
  s.peer.end(Buffer.concat([framedConcat(undefined, [REQUEST]), END_FRAME]));
  assert.equal(await within(s.done, "the splice ends"), "closed");
  assert.equal(await within(s.appClose, "the app's socket closes"), "end");
  assert.deepEqual(s.appRead(), REQUEST);
  await within(s.fromTunnel.endFrame, "our end frame reaches the peer");
  assert.deepEqual(s.fromTunnel.bytes(), REPLY);
  assert.equal(await within(peerClose, "the peer's socket closes"), "end");
});

test("a framed tunnel whose transport ends only after both directions are done still closes cleanly", async (t) => {
  // A long half-close timeout: the peer closes its transport once it has our end frame, well before it.
  const s = await setup(60_000, REPLY);
  t.after(() => {
    s.peer.destroy();
    s.app.destroy();
  });
  s.peer.write(Buffer.concat([framedConcat(undefined, [REQUEST]), END_FRAME]));
  await within(s.fromTunnel.endFrame, "our end frame reaches the peer");
  s.peer.end();
  assert.equal(await within(s.done, "the splice ends"), "closed");
  assert.equal(await within(s.appClose, "the app's socket closes"), "end");
  assert.deepEqual(s.appRead(), REQUEST);
  assert.deepEqual(s.fromTunnel.bytes(), REPLY);
});
