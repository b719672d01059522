/**
 * `ExpiryWatch` publishes the expiry gauge of the identity in use and logs loudly when the certificate
 * is near its end without a replacement (whatever the source).
 */
import type { Clock, TimerHandle } from "../../core/clock.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import type { Identity } from "../transport/tls-context.ts";

/**
 * Publishes `weft_cert_expiry_timestamp_seconds` for the identity in use and checks it every
 * `intervalMs`: past three quarters of its life without a replacement it logs an error (renewal is
 * failing), once expired it logs that peers will refuse this workload.
 */
export class ExpiryWatch {
  private timer: TimerHandle | undefined;
  private lastId: string | undefined;

  constructor(
    private readonly options: {
      readonly clock: Clock;
      readonly logger: Logger;
      readonly metrics: WeftMetrics;
      readonly intervalMs: number;
      readonly current: () => Identity | undefined;
      /** Extra work at each check (e.g. count CA renewal failures). */
      readonly onCheck?: () => void;
    },
  ) {}

  start(): void {
    this.check();
  }

  /** Publish the gauge and log if the certificate is near its end; re-arms itself. */
  check(): void {
    this.timer?.cancel();
    const o = this.options;
    o.onCheck?.();
    const id = o.current();
    if (id) {
      const identity = id.id.toString();
      if (this.lastId !== undefined && this.lastId !== identity)
        o.metrics.certExpiry.remove({ identity: this.lastId });
      this.lastId = identity;
      o.metrics.certExpiry.set({ identity }, Math.floor(id.notAfter / 1000));
      const now = o.clock.now();
      const life = Math.max(1, id.notAfter - id.notBefore);
      const left = id.notAfter - now;
      const fields = {
        spiffe_id: identity,
        serial: id.serial,
        not_after: new Date(id.notAfter).toISOString(),
        seconds_left: Math.round(left / 1000),
      };
      if (left <= 0) {
        o.logger.error(fields, "workload certificate has EXPIRED and was not replaced; peers will refuse it");
      } else if (left < life / 4) {
        o.logger.error(fields, "workload certificate expires soon and has not been renewed");
      }
    }
    // Also wake at the certificate's expiry, so readiness and the logs turn the moment it runs out.
    const untilExpiry = id ? id.notAfter - o.clock.now() : 0;
    const next = untilExpiry > 0 ? Math.min(o.intervalMs, untilExpiry + 1) : o.intervalMs;
    this.timer = o.clock.setTimeout(() => this.check(), next);
  }

  stop(): void {
    this.timer?.cancel();
  }
}
