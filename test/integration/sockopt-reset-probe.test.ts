/**
 * The kernel probe behind "a reset is carried as a reset" (`wasReset` in splice.ts, `sockopt.ts`): on a
 * real loopback connection whose reader is paused, a peer's RST leaves SO_ERROR = ECONNRESET and the TCP
 * state CLOSE, while a peer's FIN leaves no error and CLOSE_WAIT. Those are what the splice reads when
 * libuv reports EOF for data and RST arriving in one poll.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { test } from "node:test";
import { LinuxSocketErrors, NO_SOCKET_ERRORS } from "../../src/proxy/capture/sockopt.ts";
import { wasReset } from "../../src/proxy/connection/splice.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

/** A connected pair on loopback: `ours` is paused (reads nothing), `theirs` is the peer. */
async function pair(t: import("node:test").TestContext): Promise<{ ours: Socket; theirs: Socket }> {
  const accepted = new Promise<Socket>((resolve) => {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => {
      server.close();
      resolve(s);
    });
    server.listen(0, "127.0.0.1", () => {
      const theirs = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
      theirs.on("error", () => {});
      peer = theirs;
    });
  });
  let peer: Socket | undefined;
  const ours = await accepted;
  ours.on("error", () => {});
  t.after(() => {
    ours.destroy();
    peer?.destroy();
  });
  await new Promise<void>((r) => (peer!.connecting ? peer!.once("connect", () => r()) : r()));
  return { ours, theirs: peer! };
}

/** Polls the kernel until the TCP state is `want`. */
async function untilState(probe: LinuxSocketErrors, s: Socket, want: number): Promise<void> {
  await eventually(
    () => `TCP state ${want} (now ${probe.tcpState(s)})`,
    () => probe.tcpState(s) === want,
    { intervalMs: 5 },
  );
}

test("a peer's RST after data: SO_ERROR is ECONNRESET and the state CLOSE, so wasReset is true", async (t) => {
  if (process.platform !== "linux") return t.skip("SO_ERROR/TCP_INFO probe is Linux-only");
  const probe = new LinuxSocketErrors();
  const { ours, theirs } = await pair(t);
  assert.equal(probe.tcpState(ours), 1, "ESTABLISHED");
  theirs.write(Buffer.alloc(64 * 1024, 1), () => theirs.resetAndDestroy());
  await untilState(probe, ours, 7);
  assert.equal(wasReset(probe, { stream: ours, raw: ours }), true);
  // SO_ERROR is read-and-clear: the TCP state alone still says reset.
  assert.equal(probe.pending(ours), 0);
  assert.equal(wasReset(probe, { stream: ours, raw: ours }), true);
});

test("a peer's FIN after data: no error and CLOSE_WAIT, so wasReset is false", async (t) => {
  if (process.platform !== "linux") return t.skip("SO_ERROR/TCP_INFO probe is Linux-only");
  const probe = new LinuxSocketErrors();
  const { ours, theirs } = await pair(t);
  theirs.end(Buffer.alloc(64 * 1024, 1));
  await untilState(probe, ours, 8);
  assert.equal(probe.pending(ours), 0);
  assert.equal(wasReset(probe, { stream: ours, raw: ours }), false);
  // The probe that never reports (non-Linux) never calls anything a reset.
  assert.equal(wasReset(NO_SOCKET_ERRORS, { stream: ours, raw: ours }), false);
});

test("a reset seen on a fresh RST: SO_ERROR holds ECONNRESET (104) until read", async (t) => {
  if (process.platform !== "linux") return t.skip("SO_ERROR/TCP_INFO probe is Linux-only");
  const probe = new LinuxSocketErrors();
  const { ours, theirs } = await pair(t);
  theirs.resetAndDestroy();
  await untilState(probe, ours, 7);
  assert.equal(probe.pending(ours), 104);
  assert.equal(probe.pending(ours), 0, "read and cleared");
});
