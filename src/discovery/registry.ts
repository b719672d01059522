/**
 * The service table: what the sources (config, a watched file, DNS) say exists, turned into immutable
 * snapshots that are swapped atomically, plus the live state that must outlast snapshots (active
 * connections, connect latency, outlier detection), keyed by service and endpoint key. A lease holds its
 * endpoint's state directly, so a connection to an endpoint that an update removed still finishes and
 * releases cleanly. The registry implements the data plane's `RouteTable`.
 */

import type { ServiceConfig } from "../config/services-schema.ts";
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import {
  type BalancerState,
  type Candidate,
  newBalancerState,
  PeakEwma,
  pickCandidate,
} from "./balancers.ts";
import { OutlierDetector, type OutlierSettings } from "./outlier.ts";
import {
  type Endpoint,
  type EndpointLease,
  formatAddr,
  normalizeAddress,
  type PickContext,
  type RouteTable,
  type RouteTarget,
  type Service,
  type ServiceStatus,
  type SocketAddr,
} from "./types.ts";

/** Endpoint addresses as a source found them (DNS results, or a static list already resolved). */
export interface DiscoveredEndpoint {
  readonly address: string;
  readonly port?: number;
  readonly weight?: number;
}

interface EndpointRuntime {
  active: number;
  readonly ewma: PeakEwma;
}

interface ServiceRuntime {
  readonly detector: OutlierDetector;
  readonly balancer: BalancerState;
  readonly endpoints: Map<string, EndpointRuntime>;
}

interface Snapshot {
  readonly version: number;
  readonly services: ReadonlyMap<string, Service>;
  readonly sources: ReadonlyMap<string, string>;
  /** `address|port` → target, for VIPs and endpoint addresses. */
  readonly byAddress: ReadonlyMap<string, RouteTarget>;
}

export interface RegistryOptions {
  readonly trustDomain: string;
  readonly retries: { readonly attempts: number; readonly deadline: number };
  readonly outlierDetection: OutlierSettings;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random: () => number;
}

const EMPTY: Snapshot = { version: 0, services: new Map(), sources: new Map(), byAddress: new Map() };

/**
 * Endpoint keys (metric label, outlier state, `/endpoints`): `address:port`, or `address:port@tunnelPort`
 * for endpoints of one service that share an address and port behind different sidecars (one host,
 * several sidecars), so that they never collapse into one.
 */
function withKeys(found: readonly Omit<Endpoint, "key">[]): Endpoint[] {
  const count = new Map<string, number>();
  for (const e of found) {
    const k = formatAddr(e.address, e.port);
    count.set(k, (count.get(k) ?? 0) + 1);
  }
  return found.map((e) => {
    const k = formatAddr(e.address, e.port);
    return { key: (count.get(k) ?? 0) > 1 ? `${k}@${e.sidecar ? e.tunnelPort : "plain"}` : k, ...e };
  });
}

export class ServiceRegistry implements RouteTable {
  private snapshot: Snapshot = EMPTY;
  private readonly runtimes = new Map<string, ServiceRuntime>();
  /** Declared services by source (config, file), in that order of precedence (later wins). */
  private readonly declared = new Map<string, readonly ServiceConfig[]>();
  /** Endpoints found by DNS, by service name. */
  private readonly dnsEndpoints = new Map<string, readonly DiscoveredEndpoint[]>();

  constructor(private readonly o: RegistryOptions) {}

  get version(): number {
    return this.snapshot.version;
  }

  /** Replace what one source declares, then rebuild. */
  setDeclared(source: string, services: readonly ServiceConfig[]): void {
    this.declared.set(source, services);
    this.rebuild();
    this.o.metrics.discoveryUpdates.inc({ source });
  }

  /** The declared services after precedence (config, then file and Kubernetes by name). */
  declaredServices(): ServiceConfig[] {
    return [...this.mergedDeclarations().values()].map((d) => d.config);
  }

  /** Services (from any source) whose endpoints come from DNS. */
  dnsServices(): ServiceConfig[] {
    return [...this.mergedDeclarations().values()].map((d) => d.config).filter((s) => s.dns !== undefined);
  }

  setDnsEndpoints(serviceName: string, endpoints: readonly DiscoveredEndpoint[]): void {
    this.dnsEndpoints.set(serviceName, endpoints);
    this.rebuild();
    this.o.metrics.discoveryUpdates.inc({ source: "dns" });
  }

  private mergedDeclarations(): Map<string, { config: ServiceConfig; source: string }> {
    const merged = new Map<string, { config: ServiceConfig; source: string }>();
    for (const [source, services] of this.declared) {
      for (const s of services) merged.set(s.name, { config: s, source });
    }
    return merged;
  }

  private buildService(s: ServiceConfig): Service {
    const identity = s.identity ?? `spiffe://${this.o.trustDomain}/ns/${s.namespace}/sa/${s.name}`;
    const ports = s.ports.map((p) => {
      const name = "name" in p ? p.name : undefined;
      return { port: p.port, targetPort: p.targetPort, ...(name ? { name } : {}) };
    });
    const defaultPort = ports[0]!.targetPort;
    const found: Omit<Endpoint, "key">[] = [];
    const seen = new Set<string>();
    // Identical endpoints are refused by the schema (static lists); DNS may still repeat a record.
    const add = (e: Omit<Endpoint, "key">) => {
      const id = `${e.address}|${e.port}|${e.sidecar ? e.tunnelPort : "none"}`;
      if (seen.has(id)) return;
      seen.add(id);
      found.push(e);
    };
    if (s.endpoints) {
      for (const e of s.endpoints) {
        add({
          address: normalizeAddress(e.address),
          port: e.port ?? defaultPort,
          tunnelPort: e.tunnelPort,
          weight: e.weight,
          identity: e.identity ?? identity,
          sidecar: e.sidecar,
        });
      }
    } else if (s.dns) {
      for (const e of this.dnsEndpoints.get(s.name) ?? []) {
        add({
          address: normalizeAddress(e.address),
          port: e.port ?? defaultPort,
          tunnelPort: s.dns.tunnelPort,
          weight: Math.max(1, e.weight ?? 1),
          identity,
          sidecar: s.dns.sidecar,
        });
      }
    }
    const endpoints = withKeys(found);
    const retries = s.retries ?? this.o.retries;
    return {
      name: s.name,
      namespace: s.namespace,
      identity,
      ports,
      vips: s.vips.map(normalizeAddress),
      balancer: s.balancer,
      endpoints,
      retries: { attempts: retries.attempts, deadlineMs: retries.deadline },
    };
  }

  private runtimeFor(s: ServiceConfig): ServiceRuntime {
    const settings = s.outlierDetection ?? this.o.outlierDetection;
    let rt = this.runtimes.get(s.name);
    if (!rt) {
      const name = s.name;
      const detector = new OutlierDetector(settings, this.o.clock, {
        onEject: (key, until, times, failures) => {
          this.o.metrics.outlierEjections.inc({ service: name, endpoint: key });
          this.o.metrics.endpointEjected.set({ service: name, endpoint: key }, 1);
          this.o.logger.warn(
            {
              service: name,
              endpoint: key,
              ejected_until: new Date(until).toISOString(),
              times_ejected: times,
              consecutive_failures: failures,
            },
            "endpoint ejected",
          );
        },
        onReturn: (key, via) => {
          this.o.metrics.endpointEjected.set({ service: name, endpoint: key }, 0);
          this.o.logger.info(
            { service: name, endpoint: key, via },
            via === "health_check"
              ? "endpoint returned from ejection: an active health check passed (probation)"
              : "endpoint returned from ejection (probation)",
          );
        },
      });
      rt = { detector, balancer: newBalancerState(), endpoints: new Map() };
      this.runtimes.set(s.name, rt);
    } else {
      rt.detector.setSettings(settings);
    }
    return rt;
  }

  private rebuild(): void {
    const merged = this.mergedDeclarations();
    const services = new Map<string, Service>();
    const sources = new Map<string, string>();
    const byAddress = new Map<string, RouteTarget>();
    for (const [name, { config, source }] of merged) {
      const service = this.buildService(config);
      services.set(name, service);
      sources.set(name, config.dns ? `${source}+dns` : source);
      const rt = this.runtimeFor(config);
      const keys = service.endpoints.map((e) => e.key);
      rt.detector.sync(keys);
      for (const key of keys) {
        if (!rt.endpoints.has(key)) rt.endpoints.set(key, { active: 0, ewma: new PeakEwma() });
        this.o.metrics.endpointEjected.set(
          { service: name, endpoint: key },
          rt.detector.state(key).state === "ejected" ? 1 : 0,
        );
      }
      for (const key of [...rt.endpoints.keys()]) {
        if (!keys.includes(key)) {
          rt.endpoints.delete(key);
          rt.balancer.currentWeights.delete(key);
          this.o.metrics.forgetEndpoint(name, key);
        }
      }
      for (const p of service.ports) {
        for (const vip of service.vips)
          byAddress.set(`${vip}|${p.port}`, { service, servicePort: p.port, targetPort: p.targetPort });
      }
      for (const e of service.endpoints) {
        const sp = service.ports.find((p) => p.targetPort === e.port) ?? service.ports[0]!;
        const k = `${e.address}|${e.port}`;
        if (!byAddress.has(k)) byAddress.set(k, { service, servicePort: sp.port, targetPort: e.port });
      }
    }
    for (const [name, rt] of this.runtimes) {
      if (!services.has(name)) {
        rt.detector.stop();
        for (const key of rt.endpoints.keys()) this.o.metrics.forgetEndpoint(name, key);
        this.runtimes.delete(name);
      }
    }
    this.snapshot = { version: this.snapshot.version + 1, services, sources, byAddress };
  }

  resolve(dst: SocketAddr): RouteTarget | undefined {
    return this.snapshot.byAddress.get(`${normalizeAddress(dst.address)}|${dst.port}`);
  }

  service(name: string): Service | undefined {
    return this.snapshot.services.get(name);
  }

  pick(serviceName: string, ctx: PickContext): EndpointLease | undefined {
    const service = this.snapshot.services.get(serviceName);
    const rt = this.runtimes.get(serviceName);
    if (!service || !rt || service.endpoints.length === 0) return undefined;
    const candidate = (e: Endpoint): Candidate => {
      const r = rt.endpoints.get(e.key);
      return { endpoint: e, active: r?.active ?? 0, latencyMs: r?.ewma.get() ?? 0 };
    };
    const untried = service.endpoints.filter((e) => !ctx.exclude.has(e.key));
    const pool = untried.length > 0 ? untried : service.endpoints;
    const available = pool.filter((e) => rt.detector.isAvailable(e.key));
    // Panic mode: when every endpoint left is ejected or failing checks, spread over all of them.
    const chosen = pickCandidate({
      kind: service.balancer,
      candidates: (available.length > 0 ? available : pool).map(candidate),
      state: rt.balancer,
      random: this.o.random,
      clientAddress: ctx.clientAddress,
    });
    if (!chosen) return undefined;
    return this.lease(service, rt, chosen.endpoint);
  }

  private lease(service: Service, rt: ServiceRuntime, endpoint: Endpoint): EndpointLease {
    const state = rt.endpoints.get(endpoint.key)!;
    const labels = { service: service.name, endpoint: endpoint.key };
    state.active++;
    this.o.metrics.endpointActive.inc(labels);
    let released = false;
    const clock = this.o.clock;
    const current = () => this.runtimes.get(service.name) === rt && rt.endpoints.get(endpoint.key) === state;
    return {
      endpoint,
      reportSuccess(connectMs: number) {
        state.ewma.observe(connectMs, clock.monotonic());
        rt.detector.success(endpoint.key);
      },
      reportFailure() {
        rt.detector.failure(endpoint.key);
      },
      release: () => {
        if (released) return;
        released = true;
        state.active--;
        if (current()) this.o.metrics.endpointActive.dec(labels);
      },
    };
  }

  describe(): ServiceStatus[] {
    const out: ServiceStatus[] = [];
    for (const service of this.snapshot.services.values()) {
      const rt = this.runtimes.get(service.name);
      out.push({
        name: service.name,
        identity: service.identity,
        balancer: service.balancer,
        vips: service.vips,
        ports: service.ports,
        source: this.snapshot.sources.get(service.name) ?? "unknown",
        endpoints: service.endpoints.map((e) => {
          const s = rt?.detector.state(e.key);
          const r = rt?.endpoints.get(e.key);
          const ewma = r?.ewma.get() ?? 0;
          return {
            key: e.key,
            address: e.address,
            port: e.port,
            weight: e.weight,
            identity: e.identity,
            state: s?.state ?? "healthy",
            ...(s?.ejectedUntil ? { ejectedUntil: new Date(s.ejectedUntil).toISOString() } : {}),
            timesEjected: s?.timesEjected ?? 0,
            consecutiveFailures: s?.consecutiveFailures ?? 0,
            activeConnections: r?.active ?? 0,
            ...(ewma > 0 ? { ewmaConnectMs: Math.round(ewma * 1000) / 1000 } : {}),
          };
        }),
      });
    }
    return out;
  }

  /** For health checks: the endpoints of every service with their detector. */
  forEachEndpoint(fn: (service: Service, endpoint: Endpoint, detector: OutlierDetector) => void): void {
    for (const service of this.snapshot.services.values()) {
      const rt = this.runtimes.get(service.name);
      if (!rt) continue;
      for (const e of service.endpoints) fn(service, e, rt.detector);
    }
  }

  stop(): void {
    for (const rt of this.runtimes.values()) rt.detector.stop();
  }
}
