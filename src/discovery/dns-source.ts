/**
 * Endpoints from DNS, as docker-compose service names, Kubernetes headless services and Consul DNS give
 * them: A/AAAA names re-resolved when their TTL runs out (clamped to [minTtl, maxTtl]), or SRV records
 * (target resolved to addresses, port and weight from the record). A failed lookup keeps the last good
 * endpoints, is counted, and is retried at the minimum TTL.
 */
import { Resolver } from "node:dns/promises";
import type { DnsEndpointsConfig } from "../config/services-schema.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import type { DiscoveredEndpoint } from "./registry.ts";

/** The part of node's DNS resolver this source uses (a seam for tests). */
export interface DnsResolverLike {
  resolve4(name: string, opts: { ttl: true }): Promise<Array<{ address: string; ttl: number }>>;
  resolve6(name: string, opts: { ttl: true }): Promise<Array<{ address: string; ttl: number }>>;
  resolveSrv(name: string): Promise<Array<{ name: string; port: number; priority: number; weight: number }>>;
}

export interface DnsSettings {
  readonly servers?: readonly string[];
  readonly minTtl: number;
  readonly maxTtl: number;
  readonly timeout: number;
}

export function createResolver(settings: DnsSettings): DnsResolverLike {
  const r = new Resolver({ timeout: settings.timeout, tries: 2 });
  if (settings.servers && settings.servers.length > 0) r.setServers([...settings.servers]);
  return r as unknown as DnsResolverLike;
}

const NO_DATA = new Set(["ENODATA", "ENOTFOUND"]);

/** One lookup: the endpoints and the TTL (seconds) to wait before the next. */
export async function lookup(
  resolver: DnsResolverLike,
  cfg: DnsEndpointsConfig,
  fallbackTtlS: number,
): Promise<{ endpoints: DiscoveredEndpoint[]; ttlS: number }> {
  const addresses = async (name: string, type: DnsEndpointsConfig["type"]) => {
    const want4 = type !== "AAAA";
    const want6 = type === "AAAA" || type === "A+AAAA" || type === "SRV";
    const results = await Promise.allSettled([
      want4 ? resolver.resolve4(name, { ttl: true }) : Promise.resolve([]),
      want6 ? resolver.resolve6(name, { ttl: true }) : Promise.resolve([]),
    ]);
    const found = results.flatMap((r) => (r.status === "fulfilled" ? r.value : []));
    // One family failing while the other answers is normal (servers that refuse AAAA for names they
    // only hold A records for); only when nothing answered is the lookup a failure.
    const failure = results.find(
      (r): r is PromiseRejectedResult =>
        r.status === "rejected" && !NO_DATA.has((r.reason as { code?: string }).code ?? ""),
    );
    if (found.length === 0 && failure) throw failure.reason;
    return found;
  };
  if (cfg.type === "SRV") {
    const records = await resolver.resolveSrv(cfg.name);
    // Only the best (lowest) priority is used, as SRV clients do; weights become endpoint weights.
    const best = Math.min(...records.map((r) => r.priority));
    const endpoints: DiscoveredEndpoint[] = [];
    let ttlS = fallbackTtlS;
    for (const r of records.filter((x) => x.priority === best)) {
      for (const a of await addresses(r.name, "SRV")) {
        endpoints.push({ address: a.address, port: r.port, weight: Math.max(1, r.weight) });
        ttlS = Math.min(ttlS, a.ttl);
      }
    }
    return { endpoints, ttlS };
  }
  const found = await addresses(cfg.name, cfg.type);
  if (found.length === 0) {
    throw Object.assign(new Error(`no ${cfg.type} records for ${cfg.name}`), { code: "ENODATA" });
  }
  return {
    endpoints: found.map((a) => ({ address: a.address })),
    ttlS: Math.min(...found.map((a) => a.ttl)),
  };
}

export interface DnsSourceOptions {
  readonly serviceName: string;
  readonly config: DnsEndpointsConfig;
  readonly settings: DnsSettings;
  readonly resolver: DnsResolverLike;
  readonly onEndpoints: (endpoints: DiscoveredEndpoint[]) => void;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
}

/** Keeps one service's endpoints in step with DNS. */
export class DnsSource {
  private timer: TimerHandle | undefined;
  private stopped = false;
  private last: string | undefined;

  constructor(private readonly o: DnsSourceOptions) {}

  private clamp(ms: number): number {
    const min = Math.max(this.o.config.minTtl, this.o.settings.minTtl);
    const max = Math.min(this.o.config.maxTtl, this.o.settings.maxTtl);
    return Math.min(Math.max(ms, min), Math.max(min, max));
  }

  /** Resolve now; later refreshes follow the TTL. Never rejects. */
  async refresh(): Promise<boolean> {
    if (this.stopped) return false;
    let delay: number;
    let ok = false;
    try {
      const { endpoints, ttlS } = await lookup(this.o.resolver, this.o.config, this.o.settings.maxTtl / 1000);
      if (this.stopped) return false;
      const fingerprint = JSON.stringify(endpoints);
      if (fingerprint !== this.last) {
        this.last = fingerprint;
        this.o.onEndpoints(endpoints);
        this.o.logger.info(
          { service: this.o.serviceName, name: this.o.config.name, endpoints: endpoints.length },
          "dns endpoints changed",
        );
      }
      delay = this.clamp(ttlS * 1000);
      ok = true;
    } catch (err) {
      const code = (err as { code?: string }).code ?? "error";
      this.o.metrics.discoveryErrors.inc({ source: "dns", reason: code.toLowerCase() });
      this.o.logger.warn(
        { service: this.o.serviceName, name: this.o.config.name, code, err: (err as Error).message },
        "dns lookup failed; keeping the last good endpoints",
      );
      delay = this.clamp(0);
    }
    if (!this.stopped) {
      this.timer?.cancel();
      this.timer = this.o.clock.setTimeout(() => void this.refresh(), delay);
    }
    return ok;
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}
