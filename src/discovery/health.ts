/**
 * Optional active health checks: every `interval`, probe each endpoint within `timeout`. The sidecar's
 * probe tests the app through the endpoint's sidecar (a tunnel stream to the app port that succeeds only
 * when the peer answers that its app accepted, proxy/outbound/health-probe.ts); `tcpProbe`, used for
 * endpoints without a sidecar and when discovery runs on its own, connects to the app port (or, for a
 * sidecar endpoint, only proves its tunnel port is open). After `unhealthyThreshold` failures in a row an
 * endpoint is skipped by the balancer, after `healthyThreshold` successes it is back. A passing check
 * also ends an outlier ejection at once (Envoy's `successful_active_health_check_uneject_host`, setting
 * `outlierDetection.successfulActiveHealthCheckUnejectHost`, default true). The verdict goes into the
 * same outlier table the passive checks use.
 */
import { connect } from "node:net";
import type { HealthCheckConfig } from "../config/services-schema.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import type { OutlierDetector } from "./outlier.ts";
import type { Endpoint, Service } from "./types.ts";

/** What one check probes: an endpoint of a service. */
export interface ProbeTarget {
  readonly service: Service;
  readonly endpoint: Endpoint;
}

/** Resolves true when the endpoint passes one check within `timeoutMs` (never rejects). */
export type Probe = (target: ProbeTarget, timeoutMs: number) => Promise<boolean>;

/** A TCP connect to the app port (the sidecar's tunnel port for endpoints with a sidecar). */
export const tcpProbe: Probe = ({ endpoint }, timeoutMs) =>
  new Promise((resolve) => {
    const port = endpoint.sidecar ? endpoint.tunnelPort : endpoint.port;
    const socket = connect({ host: endpoint.address, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });

interface Streak {
  ok: number;
  failed: number;
  unhealthy: boolean;
}

export interface HealthCheckerOptions {
  readonly defaults?: HealthCheckConfig;
  readonly configFor: (service: string) => HealthCheckConfig | undefined;
  readonly forEachEndpoint: (
    fn: (service: Service, endpoint: Endpoint, detector: OutlierDetector) => void,
  ) => void;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly probe?: Probe;
}

export class HealthChecker {
  private readonly streaks = new Map<string, Streak>();
  private timer: TimerHandle | undefined;
  private stopped = false;

  constructor(private readonly o: HealthCheckerOptions) {}

  start(): void {
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = this.o.clock.setTimeout(() => void this.round(), ms);
  }

  /** One round of checks over every endpoint with a health check configured. */
  async round(): Promise<void> {
    const probe = this.o.probe ?? tcpProbe;
    const checks: Promise<void>[] = [];
    let next = Number.POSITIVE_INFINITY;
    const live = new Set<string>();
    this.o.forEachEndpoint((service, endpoint, detector) => {
      const cfg = this.o.configFor(service.name) ?? this.o.defaults;
      if (!cfg) return;
      next = Math.min(next, cfg.interval);
      const id = `${service.name}|${endpoint.key}`;
      live.add(id);
      checks.push(
        probe({ service, endpoint }, cfg.timeout).then((ok) => {
          const s = this.streaks.get(id) ?? { ok: 0, failed: 0, unhealthy: false };
          this.streaks.set(id, s);
          if (ok) {
            s.ok++;
            s.failed = 0;
            detector.activeCheckPassed(endpoint.key);
            if (s.unhealthy && s.ok >= cfg.healthyThreshold) {
              s.unhealthy = false;
              detector.setUnhealthy(endpoint.key, false);
              this.o.logger.info(
                { service: service.name, endpoint: endpoint.key },
                "endpoint passes health checks again",
              );
            }
          } else {
            s.failed++;
            s.ok = 0;
            this.o.metrics.healthCheckFailures.inc({ service: service.name, endpoint: endpoint.key });
            if (!s.unhealthy && s.failed >= cfg.unhealthyThreshold) {
              s.unhealthy = true;
              detector.setUnhealthy(endpoint.key, true);
              this.o.logger.warn(
                { service: service.name, endpoint: endpoint.key, failures: s.failed },
                "endpoint fails health checks",
              );
            }
          }
        }),
      );
    });
    for (const id of this.streaks.keys()) if (!live.has(id)) this.streaks.delete(id);
    await Promise.all(checks);
    if (Number.isFinite(next)) this.schedule(next);
    else this.schedule(10_000);
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}
