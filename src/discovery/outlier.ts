/**
 * Outlier detection for one service, with Envoy's semantics for local-origin failures (connect refused
 * or timed out, TLS handshake failed, wrong peer identity):
 *
 *   healthy ──N consecutive failures──▶ ejected ──ejection time passes──▶ probation
 *   probation ──one success──▶ healthy          probation ──one failure──▶ ejected (again)
 *
 * Ejection time = base × times ejected, capped at max. At most max-ejection-percent of the service's
 * endpoints are ejected at once, but one always may be (so a two-endpoint service can still shed a dead
 * one). The times-ejected multiplier decays by one for every base ejection time an endpoint stays
 * healthy, as Envoy's does per interval. A passing active health check ends an ejection at once
 * (ejected -> probation, Envoy's `successful_active_health_check_uneject_host`, on by default), so an
 * endpoint whose app is back serves again within one check interval, not after its ejection time.
 * Active health checks mark endpoints unhealthy/healthy in the same table; both ejected and unhealthy endpoints are skipped by the balancer, and when nothing is left
 * the caller spreads over all endpoints (panic mode) rather than failing everything.
 */
import type { Clock, TimerHandle } from "../core/clock.ts";

export interface OutlierSettings {
  readonly enabled: boolean;
  readonly consecutiveFailures: number;
  readonly baseEjectionTime: number;
  readonly maxEjectionTime: number;
  readonly maxEjectionPercent: number;
  /** A passing active health check ends an ejection (Envoy's successful_active_health_check_uneject_host). */
  readonly successfulActiveHealthCheckUnejectHost?: boolean;
}

export type OutlierState = "healthy" | "ejected" | "probation";

interface EndpointHealth {
  state: OutlierState;
  consecutiveFailures: number;
  timesEjected: number;
  ejectedUntil: number;
  /** Since when the multiplier last decayed (or the endpoint last returned). */
  decayFrom: number;
  timer: TimerHandle | undefined;
  /** Failing active health checks (independent of ejection). */
  unhealthy: boolean;
}

export interface OutlierEvents {
  onEject(key: string, until: number, timesEjected: number, consecutiveFailures: number): void;
  /** An ejection ended: its time passed, or an active health check passed. */
  onReturn(key: string, via: "ejection_time" | "health_check"): void;
}

export class OutlierDetector {
  private readonly hosts = new Map<string, EndpointHealth>();

  constructor(
    private settings: OutlierSettings,
    private readonly clock: Clock,
    private readonly events: OutlierEvents,
  ) {}

  setSettings(settings: OutlierSettings): void {
    this.settings = settings;
  }

  /** Track exactly these endpoint keys: new ones start healthy, state of kept ones carries over. */
  sync(keys: readonly string[]): void {
    const wanted = new Set(keys);
    for (const [key, h] of this.hosts) {
      if (!wanted.has(key)) {
        h.timer?.cancel();
        this.hosts.delete(key);
      }
    }
    for (const key of keys) {
      if (!this.hosts.has(key)) {
        this.hosts.set(key, {
          state: "healthy",
          consecutiveFailures: 0,
          timesEjected: 0,
          ejectedUntil: 0,
          decayFrom: this.clock.now(),
          timer: undefined,
          unhealthy: false,
        });
      }
    }
  }

  /** True when the balancer may pick the endpoint (not ejected, not failing health checks). */
  isAvailable(key: string): boolean {
    const h = this.hosts.get(key);
    return h !== undefined && h.state !== "ejected" && !h.unhealthy;
  }

  state(key: string): {
    state: OutlierState | "unhealthy";
    consecutiveFailures: number;
    timesEjected: number;
    ejectedUntil?: number;
  } {
    const h = this.hosts.get(key);
    if (!h) return { state: "healthy", consecutiveFailures: 0, timesEjected: 0 };
    return {
      state: h.state === "ejected" ? "ejected" : h.unhealthy ? "unhealthy" : h.state,
      consecutiveFailures: h.consecutiveFailures,
      timesEjected: h.timesEjected,
      ...(h.state === "ejected" ? { ejectedUntil: h.ejectedUntil } : {}),
    };
  }

  ejectedCount(): number {
    let n = 0;
    for (const h of this.hosts.values()) if (h.state === "ejected") n++;
    return n;
  }

  /** How many endpoints may be ejected at once: max-ejection-percent of them, but at least one. */
  maxEjected(): number {
    return Math.max(1, Math.floor((this.hosts.size * this.settings.maxEjectionPercent) / 100));
  }

  success(key: string): void {
    const h = this.hosts.get(key);
    if (!h) return;
    h.consecutiveFailures = 0;
    const now = this.clock.now();
    if (h.state === "probation") {
      h.state = "healthy";
      h.decayFrom = now;
    } else if (h.state === "healthy" && h.timesEjected > 0) {
      const steps = Math.floor((now - h.decayFrom) / this.settings.baseEjectionTime);
      if (steps > 0) {
        h.timesEjected = Math.max(0, h.timesEjected - steps);
        h.decayFrom = now;
      }
    }
  }

  failure(key: string): void {
    const h = this.hosts.get(key);
    if (!h || h.state === "ejected") return;
    h.consecutiveFailures++;
    if (!this.settings.enabled) return;
    const due = h.state === "probation" || h.consecutiveFailures >= this.settings.consecutiveFailures;
    if (due && this.ejectedCount() < this.maxEjected()) this.eject(key, h);
  }

  /** An active health check passed: an ejected endpoint returns now (on probation) unless turned off. */
  activeCheckPassed(key: string): void {
    const h = this.hosts.get(key);
    if (!h) return;
    if (h.state !== "ejected" || this.settings.successfulActiveHealthCheckUnejectHost === false) return;
    h.timer?.cancel();
    h.timer = undefined;
    h.state = "probation";
    h.decayFrom = this.clock.now();
    this.events.onReturn(key, "health_check");
  }

  /** Active health checks: mark an endpoint failing (skipped) or passing again. */
  setUnhealthy(key: string, unhealthy: boolean): void {
    const h = this.hosts.get(key);
    if (h) h.unhealthy = unhealthy;
  }

  private eject(key: string, h: EndpointHealth): void {
    const now = this.clock.now();
    h.timesEjected++;
    const duration = Math.min(this.settings.baseEjectionTime * h.timesEjected, this.settings.maxEjectionTime);
    h.state = "ejected";
    h.ejectedUntil = now + duration;
    const failures = h.consecutiveFailures;
    h.consecutiveFailures = 0;
    h.timer?.cancel();
    h.timer = this.clock.setTimeout(() => {
      h.timer = undefined;
      if (h.state !== "ejected") return;
      h.state = "probation";
      h.decayFrom = this.clock.now();
      this.events.onReturn(key, "ejection_time");
    }, duration);
    this.events.onEject(key, h.ejectedUntil, h.timesEjected, failures);
  }

  stop(): void {
    for (const h of this.hosts.values()) h.timer?.cancel();
  }
}
