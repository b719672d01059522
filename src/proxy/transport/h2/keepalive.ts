/**
 * Liveness of one pooled tunnel session (HTTP/2 over mutual TLS), on both ends. A peer that vanishes
 * without a FIN or a reset (host gone, a firewall dropping packets) leaves a session that looks open
 * until TCP gives up retransmitting, minutes later; the pool would keep handing out streams that go
 * nowhere. So every `intervalMs` the session's TCP socket is checked for received bytes; a session that
 * received nothing for a whole interval gets an HTTP/2 PING (RFC 9113 §6.7), and with no ACK within
 * `timeoutMs` it is declared dead: `onDead` runs once and the owner destroys the session (its streams
 * end as resets). While a PING is outstanding the session is `suspect`: the pool opens no new stream
 * on it. A dead peer is found within 2 × interval + timeout; a busy session costs no PING at all.
 * Timers run on the injected clock.
 */
import type http2 from "node:http2";
import type { Clock, TimerHandle } from "../../../core/clock.ts";
import { WeftError } from "../../../core/errors.ts";

export interface KeepaliveSettings {
  /** Silence before a PING (0 = no keepalive). */
  readonly intervalMs: number;
  /** How long the PING's ACK may take. */
  readonly timeoutMs: number;
}

export class SessionKeepalive {
  private timer: TimerHandle | undefined;
  private lastRead = 0;
  private stopped = false;
  private pinging = false;

  /**
   * @param bytesRead the TCP socket under the session (its counter moves whatever TLS and HTTP/2 do
   *   with the bytes natively)
   */
  constructor(
    private readonly session: http2.Http2Session,
    private readonly bytesRead: { readonly bytesRead: number },
    private readonly clock: Clock,
    private readonly settings: KeepaliveSettings,
    private readonly onDead: (err: WeftError) => void,
  ) {}

  /** A PING is outstanding: the peer may be gone. */
  get suspect(): boolean {
    return this.pinging;
  }

  start(): void {
    if (this.settings.intervalMs <= 0) return;
    this.lastRead = this.bytesRead.bytesRead;
    this.arm();
    this.session.once("close", () => this.stop());
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
  }

  private arm(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(this.tick, this.settings.intervalMs);
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    if (this.stopped || this.session.destroyed) return;
    const read = this.bytesRead.bytesRead;
    if (read !== this.lastRead) {
      this.lastRead = read;
      this.arm();
      return;
    }
    this.ping();
  };

  private ping(): void {
    this.pinging = true;
    let settled = false;
    const deadline = this.clock.setTimeout(() => {
      if (settled || this.stopped) return;
      settled = true;
      this.stop();
      this.onDead(
        new WeftError("E_TIMEOUT", `no HTTP/2 PING acknowledgement within ${this.settings.timeoutMs} ms`, {
          reason: "keepalive_timeout",
        }),
      );
    }, this.settings.timeoutMs);
    const acked = (err: Error | null): void => {
      if (settled) return;
      settled = true;
      deadline.cancel();
      this.pinging = false;
      // An error means the session is closing anyway (its 'close' stops us).
      if (err) return;
      this.lastRead = this.bytesRead.bytesRead;
      this.arm();
    };
    try {
      this.session.ping(acked);
    } catch (err) {
      // Destroyed between the check and the PING.
      acked(err as Error);
    }
  }
}
