/**
 * The accept loop of one listening port (tunnel, outbound, inbound capture, explicit): sockets are
 * accepted with `allowHalfOpen: true` (half-close is forwarded by the splice, never answered by Node),
 * concurrency is bounded per listener (connections over the limit are closed at once and reported; the
 * tunnel also counts each pooled stream through `tryAcquire`), and
 * accept errors (EMFILE, ENFILE, ...) back off: the listening socket is closed and reopened on the same
 * address after 10 ms, doubling up to 1 s, instead of spinning. `listen()` resolves once bound, with the
 * real address (port 0 in tests).
 */
import net, { type Socket } from "node:net";
import type { Clock, TimerHandle } from "../../core/clock.ts";
import { listenError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import { noop } from "../../core/noop.ts";
import { normalizeAddress } from "../../discovery/types.ts";
import { type ListenAddr, listenAddr } from "../addresses.ts";

const ACCEPT_BACKOFF_MIN_MS = 10;
const ACCEPT_BACKOFF_MAX_MS = 1_000;

export interface ListenerOptions {
  /** For logs: `tunnel`, `outbound`, `inbound`, `explicit`. */
  readonly name: string;
  readonly address: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  /** The config key that moves it, for errors (default `listeners.<name>.port`). */
  readonly setting?: string;
  readonly maxConnections: number;
  /** Read/write high-water mark of accepted sockets (Node's default when omitted). */
  readonly highWaterMark?: number;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Takes ownership of an accepted socket. Must attach an 'error' handler before returning. */
  readonly onConnection: (socket: Socket) => void;
  /** A socket was refused because the listener is at `maxConnections` (it is already destroyed). */
  readonly onRefused?: (socket: Socket) => void;
  /** An accept error happened (for metrics). */
  readonly onAcceptError?: (err: Error) => void;
}

/** A listener's connection budget, for connections that are not accepted sockets (pooled tunnel streams). */
export interface ConnectionSlots {
  /** Take one slot; false when the listener is at its `maxConnections`. */
  tryAcquire(): boolean;
  /** Give back a slot taken with `tryAcquire`. */
  release(): void;
}

export class Listener implements ConnectionSlots {
  private server: net.Server | undefined;
  private bound: ListenAddr | undefined;
  private activeCount = 0;
  private closing = false;
  private backoffMs = ACCEPT_BACKOFF_MIN_MS;
  private retryTimer: TimerHandle | undefined;
  private maxConnections: number;

  constructor(private readonly options: ListenerOptions) {
    this.maxConnections = options.maxConnections;
  }

  /**
   * A new limit (config reload). Connections over a lowered limit are not closed; new ones are refused
   * until the count is under it.
   */
  setMaxConnections(n: number): void {
    this.maxConnections = n;
  }

  /** Bind and start accepting; resolves with the bound address. */
  async listen(): Promise<ListenAddr> {
    const addr = await this.bind(this.options.port);
    this.bound = addr;
    return addr;
  }

  /** The bound address, once listening. */
  get address(): ListenAddr | undefined {
    return this.bound;
  }

  /** Connections accepted and not yet closed, plus slots taken with `tryAcquire`. */
  get active(): number {
    return this.activeCount;
  }

  /**
   * Count a connection that is not an accepted socket against `maxConnections`: every live stream of a
   * pooled tunnel session is one connection, beside the socket that carries the session.
   */
  tryAcquire(): boolean {
    if (this.activeCount >= this.maxConnections) return false;
    this.activeCount++;
    return true;
  }

  release(): void {
    this.activeCount--;
  }

  get listening(): boolean {
    return this.server?.listening ?? false;
  }

  private createServer(): net.Server {
    // noDelay: a proxy must not add Nagle's delay to the small writes it relays (request/response
    // traffic waits on it otherwise); batching is done per event-loop turn in splice.ts instead.
    const opts: net.ServerOpts = { allowHalfOpen: true, noDelay: true };
    if (this.options.highWaterMark !== undefined) {
      (opts as { highWaterMark?: number }).highWaterMark = this.options.highWaterMark;
    }
    return net.createServer(opts, this.onSocket);
  }

  private bind(port: number): Promise<ListenAddr> {
    const server = this.createServer();
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(
          listenError(
            `the ${this.options.name} listener`,
            this.options.address,
            port,
            this.options.setting ?? `listeners.${this.options.name}.port`,
            err,
          ),
        );
      };
      server.once("error", onError);
      server.listen({ host: this.options.address, port, exclusive: true }, () => {
        server.removeListener("error", onError);
        server.on("error", this.onServerError);
        const a = server.address() as net.AddressInfo;
        resolve(listenAddr({ address: normalizeAddress(a.address), port: a.port }));
      });
    });
  }

  private readonly onSocket = (socket: Socket): void => {
    this.backoffMs = ACCEPT_BACKOFF_MIN_MS;
    if (this.closing || this.activeCount >= this.maxConnections) {
      socket.on("error", noop);
      socket.destroy();
      this.options.onRefused?.(socket);
      return;
    }
    this.activeCount++;
    socket.once("close", this.onSocketClose);
    try {
      this.options.onConnection(socket);
    } catch (err) {
      // A handler bug must not take the process down with it; the socket goes, the error is logged.
      socket.on("error", noop);
      socket.destroy();
      this.options.logger.error({ err, listener: this.options.name }, "connection handler threw");
    }
  };

  private readonly onSocketClose = (): void => {
    this.activeCount--;
  };

  private readonly onServerError = (err: Error): void => {
    const code = (err as { code?: string }).code;
    this.options.onAcceptError?.(err);
    this.options.logger.warn(
      { listener: this.options.name, code, backoff_ms: this.backoffMs },
      "accept failed; pausing the listener",
    );
    const server = this.server;
    if (!server || this.closing || this.retryTimer) return;
    server.close();
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, ACCEPT_BACKOFF_MAX_MS);
    this.retryTimer = this.options.clock.setTimeout(() => {
      this.retryTimer = undefined;
      if (this.closing || !this.bound) return;
      this.bind(this.bound.port).catch((e: unknown) => {
        this.options.logger.error({ err: e, listener: this.options.name }, "listener could not resume");
        this.onServerError(e as Error);
      });
    }, delay);
  };

  /** Stop accepting (live connections carry on). Resolves once the listening socket is closed. */
  close(): Promise<void> {
    this.closing = true;
    this.retryTimer?.cancel();
    this.retryTimer = undefined;
    const server = this.server;
    if (!server?.listening) return Promise.resolve();
    return new Promise((resolve) => {
      // net.Server.close() calls back only when every connection is gone; we only wait for the handle.
      server.close();
      setImmediate(resolve);
    });
  }
}
