/**
 * A loopback TCP relay the test controls, put between a client sidecar and a tunnel port to make the
 * network misbehave on cue:
 *   - `hold()`: accept connections but forward nothing (no upstream dial) until `release()`, so a test can
 *     gather callers behind one pending session opening;
 *   - `blackhole()`: every live relayed connection stops forwarding in both directions, with both
 *     sockets left open (a peer whose host vanished: no FIN, no RST, no bytes); connections accepted
 *     later are relayed normally;
 *   - `destroyAll()`: drop every accepted connection at once.
 * `accepted` counts TCP connections, i.e. session openings when the client pools.
 */
import net, { type Socket } from "node:net";

export interface Relay {
  readonly port: number;
  /** TCP connections accepted so far. */
  readonly accepted: number;
  hold(): void;
  release(): void;
  blackhole(): void;
  destroyAll(): void;
  close(): Promise<void>;
}

interface Pair {
  readonly down: Socket;
  up: Socket | undefined;
  silent: boolean;
}

export async function startRelay(targetPort: number, host = "127.0.0.1"): Promise<Relay> {
  const pairs = new Set<Pair>();
  const waiting: Pair[] = [];
  let held = false;
  let accepted = 0;

  const forward = (from: Socket, to: Socket, pair: Pair): void => {
    from.on("data", (d: Buffer) => {
      if (!pair.silent) to.write(d);
    });
    from.on("end", () => {
      if (!pair.silent) to.end();
    });
  };
  const dial = (pair: Pair): void => {
    const up = net.connect({ port: targetPort, host, allowHalfOpen: true });
    up.on("error", () => pair.down.destroy());
    pair.up = up;
    forward(pair.down, up, pair);
    forward(up, pair.down, pair);
    up.once("close", () => {
      if (!pair.silent) pair.down.destroy();
    });
  };
  const server = net.createServer({ allowHalfOpen: true }, (down) => {
    accepted++;
    down.on("error", () => {});
    const pair: Pair = { down, up: undefined, silent: false };
    pairs.add(pair);
    down.once("close", () => {
      if (!pair.silent) pair.up?.destroy();
      pairs.delete(pair);
    });
    if (held) waiting.push(pair);
    else dial(pair);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get accepted() {
      return accepted;
    },
    hold() {
      held = true;
    },
    release() {
      held = false;
      for (const p of waiting.splice(0)) if (!p.down.destroyed) dial(p);
    },
    blackhole() {
      for (const p of pairs) p.silent = true;
    },
    destroyAll() {
      for (const p of pairs) {
        p.down.destroy();
        p.up?.destroy();
      }
    },
    close() {
      for (const p of pairs) {
        p.down.destroy();
        p.up?.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
