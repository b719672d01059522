/**
 * Small loopback apps and traffic tools for data-plane tests: an app server that hands each accepted
 * socket to a script (echo, server-speaks-first banner, sink with an optional slow reader), and a
 * writer that streams N bytes of varied data with backpressure while hashing what it sent, so 256 MiB or
 * 1 GiB never sits in memory.
 */
import { createHash, randomBytes } from "node:crypto";
import net, { type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { platformSocketErrors } from "../../src/proxy/capture/sockopt.ts";
import { wasReset } from "../../src/proxy/connection/splice.ts";

export interface App {
  readonly address: string;
  readonly port: number;
  /** Every socket the app accepted, in order. */
  readonly accepted: Socket[];
  /** Resolves with the next accepted socket (or one already accepted and not yet taken). */
  nextConnection(): Promise<Socket>;
  close(): Promise<void>;
}

/** A loopback TCP server (allowHalfOpen) that runs `script` on every connection. */
export async function startApp(script: (socket: Socket) => void, host = "127.0.0.1"): Promise<App> {
  const accepted: Socket[] = [];
  let taken = 0;
  const waiters: Array<(s: Socket) => void> = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {});
    accepted.push(socket);
    script(socket);
    const w = waiters.shift();
    if (w) {
      taken++;
      w(socket);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    address: host,
    port,
    accepted,
    nextConnection() {
      if (taken < accepted.length) return Promise.resolve(accepted[taken++]!);
      return new Promise((resolve) => waiters.push(resolve));
    },
    close() {
      for (const s of accepted) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Echoes every byte; answers the client's FIN with its own after the echo. */
export function startEchoServer(): Promise<App> {
  return startApp((s) => {
    s.pipe(s);
  });
}

/** Speaks first: writes `banner` on accept, then echoes. */
export function startBannerServer(banner: string): Promise<App> {
  return startApp((s) => {
    s.write(banner);
    s.pipe(s);
  });
}

/** Data both ends hash: a 4 MiB random block read at a moving offset, so reordering or loss shows. */
export class PatternSource {
  private static readonly block = randomBytes(4 * 1024 * 1024 + 65_536);
  private offset = 0;

  /** The next `n` bytes (n <= 64 KiB); the returned buffer is a view, valid until written. */
  next(n: number): Buffer {
    const b = PatternSource.block.subarray(this.offset, this.offset + n);
    this.offset = (this.offset + 7919) % (4 * 1024 * 1024);
    return b;
  }
}

/** Write `total` bytes of pattern data to `stream` with backpressure; resolves with their sha256. */
export async function writePattern(
  stream: Duplex,
  total: number,
  options: { chunk?: number; end?: boolean; onProgress?: (written: number) => void } = {},
): Promise<string> {
  const chunk = options.chunk ?? 65_536;
  const hash = createHash("sha256");
  const src = new PatternSource();
  let written = 0;
  while (written < total) {
    const n = Math.min(chunk, total - written);
    const b = src.next(n);
    hash.update(b);
    written += n;
    options.onProgress?.(written);
    if (!stream.write(b)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => {
          stream.off("close", onClose);
          resolve();
        };
        const onClose = (): void => {
          stream.off("drain", onDrain);
          reject(new Error(`stream closed after ${written} of ${total} bytes`));
        };
        stream.once("drain", onDrain);
        stream.once("close", onClose);
      });
    }
  }
  if (options.end !== false) stream.end();
  return hash.digest("hex");
}

/** Read `stream` to its end, hashing and counting; resolves with both. */
export function hashUntilEnd(stream: Duplex): Promise<{ sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    let bytes = 0;
    stream.on("data", (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
    });
    stream.once("end", () => resolve({ sha256: hash.digest("hex"), bytes }));
    stream.once("error", reject);
  });
}

/** How a read to the end went: `eof` (a FIN), `reset`, `error:<code>`, or `close without end`. */
export interface ReadOutcome {
  readonly end: string;
  readonly bytes: number;
  readonly sha256: string;
}

const kernel = platformSocketErrors();

/**
 * How an EOF on `s` ended: `reset` when the kernel says the connection was reset (libuv reports EOF
 * when the last bytes and an RST arrive in one poll; the splice asks the kernel the same way), else `eof`.
 */
export function eofEnd(s: Socket): string {
  return wasReset(kernel, { stream: s, raw: s }) ? "reset" : "eof";
}

/** How a socket error ended a read: `reset` for ECONNRESET, else `error:<code>`. */
export function errorEnd(err: NodeJS.ErrnoException): string {
  return err.code === "ECONNRESET" ? "reset" : `error:${err.code ?? err.message}`;
}

/**
 * Read `s` to its end, counting and hashing (`onProgress` sees the count grow); never rejects. An EOF is
 * checked against the kernel before it counts as a FIN (`eofEnd`). A socket that has already errored or
 * ended answers at once.
 */
export function readOutcome(s: Socket, onProgress: (bytes: number) => void = () => {}): Promise<ReadOutcome> {
  return new Promise((resolve) => {
    const hash = createHash("sha256");
    let bytes = 0;
    let done = false;
    const finish = (end: string): void => {
      if (done) return;
      done = true;
      resolve({ end, bytes, sha256: hash.digest("hex") });
    };
    if (s.errored) return finish(errorEnd(s.errored as NodeJS.ErrnoException));
    if (s.readableEnded) return finish("eof");
    s.on("data", (d: Buffer) => {
      bytes += d.length;
      hash.update(d);
      onProgress(bytes);
    });
    s.once("end", () => finish(eofEnd(s)));
    s.on("error", (err: NodeJS.ErrnoException) => finish(errorEnd(err)));
    s.once("close", () => finish("close without end"));
  });
}

/**
 * A slow reader: reads `burst` bytes, pauses for `pauseMs`, repeats, until the end; hashes what it read.
 * The pauses are the point of the test (backpressure must hold the writer), not a wait for correctness.
 */
export function slowRead(
  stream: Duplex,
  options: { burst: number; pauseMs: number },
): Promise<{ sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    let bytes = 0;
    let inBurst = 0;
    stream.on("data", (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
      inBurst += d.length;
      if (inBurst >= options.burst) {
        inBurst = 0;
        stream.pause();
        setTimeout(() => stream.resume(), options.pauseMs);
      }
    });
    stream.once("end", () => resolve({ sha256: hash.digest("hex"), bytes }));
    stream.once("error", reject);
  });
}

/** Read until `n` bytes arrived; resolves with them (for small protocol exchanges). */
export function readBytes(stream: Duplex, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (d: Buffer): void => {
      parts.push(d);
      got += d.length;
      if (got >= n) {
        cleanup();
        const all = Buffer.concat(parts);
        if (all.length > n) stream.unshift(all.subarray(n));
        resolve(all.subarray(0, n));
      }
    };
    const onEnd = (): void => {
      cleanup();
      reject(new Error(`stream ended after ${got} of ${n} bytes`));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const cleanup = (): void => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onError);
      stream.pause();
    };
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("error", onError);
    stream.resume();
  });
}

/** Resolves with how the stream closed: `end` (FIN read), `reset` (ECONNRESET) or `error:<code>`. */
export function closeKind(stream: Duplex): Promise<string> {
  return new Promise((resolve) => {
    let kind = "close";
    stream.on("end", () => {
      if (kind === "close") kind = "end";
    });
    stream.on("error", (err: NodeJS.ErrnoException) => {
      kind = err.code === "ECONNRESET" ? "reset" : `error:${err.code}`;
    });
    stream.on("close", () => resolve(kind));
    stream.resume();
  });
}

/** Connect to a TCP port with allowHalfOpen. */
export function connect(port: number, host = "127.0.0.1"): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host, allowHalfOpen: true });
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}
