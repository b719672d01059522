/**
 * Discovery as the sidecar runs it: the service registry fed by its sources (weft.yaml's static
 * services, an optional watched services file, DNS for services that name one), optional active health
 * checks, and the `Discovery` interface the data plane uses (resolve, pick, describe, start/stop).
 */

import type { HealthCheckConfig, ServiceConfig } from "../config/services-schema.ts";
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import { createResolver, type DnsResolverLike, type DnsSettings, DnsSource } from "./dns-source.ts";
import { FileSource } from "./file-source.ts";
import { HealthChecker, type Probe } from "./health.ts";
import { K8sSource, type K8sSourceOptions } from "./k8s-source.ts";
import type { OutlierSettings } from "./outlier.ts";
import { ServiceRegistry } from "./registry.ts";
import type { Discovery } from "./types.ts";

export interface DiscoveryOptions {
  readonly trustDomain: string;
  readonly services: readonly ServiceConfig[];
  readonly file?: string;
  readonly dns: DnsSettings;
  readonly retries: { readonly attempts: number; readonly deadline: number };
  readonly outlierDetection: OutlierSettings;
  readonly healthCheck?: HealthCheckConfig;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random?: () => number;
  readonly resolver?: DnsResolverLike;
  readonly probe?: Probe;
  /** Debounce for file changes (ms). */
  readonly fileDebounceMs?: number;
  /** Kubernetes discovery: the API client and what to watch (`discovery.kubernetes`). */
  readonly kubernetes?: Pick<
    K8sSourceOptions,
    "api" | "namespaces" | "backoff" | "watchTimeoutSeconds" | "onChange"
  >;
}

export interface DiscoveryHandle extends Discovery {
  readonly registry: ServiceRegistry;
  /** Replace the services declared in weft.yaml (a config reload); the services file still wins by name. */
  setConfigServices(services: readonly ServiceConfig[]): void;
  /** Re-read the services file now (also done on change). */
  reloadFile(): Promise<boolean>;
  /** Re-resolve every DNS service now (also done on TTL). */
  refreshDns(): Promise<void>;
  /** The Kubernetes source, when configured. */
  readonly kubernetes: K8sSource | undefined;
}

/** One DNS source per service that names a DNS query, kept in step with the registry's declarations. */
class DnsSources {
  private readonly sources = new Map<string, { source: DnsSource; fingerprint: string }>();
  private readonly resolver: DnsResolverLike;

  constructor(
    private readonly o: DiscoveryOptions,
    private readonly registry: ServiceRegistry,
    private readonly logger: Logger,
  ) {
    this.resolver = o.resolver ?? createResolver(o.dns);
  }

  /** Start DNS sources for services that need one, stop those no longer declared. */
  sync(): Promise<unknown> {
    const wanted = this.registry.dnsServices();
    const fresh: Promise<boolean>[] = [];
    for (const s of wanted) {
      const fingerprint = JSON.stringify(s.dns);
      const existing = this.sources.get(s.name);
      if (existing?.fingerprint === fingerprint) continue;
      existing?.source.stop();
      const source = new DnsSource({
        serviceName: s.name,
        config: s.dns!,
        settings: this.o.dns,
        resolver: this.resolver,
        onEndpoints: (eps) => this.registry.setDnsEndpoints(s.name, eps),
        metrics: this.o.metrics,
        logger: this.logger,
        clock: this.o.clock,
      });
      this.sources.set(s.name, { source, fingerprint });
      fresh.push(source.refresh());
    }
    for (const [name, { source }] of this.sources) {
      if (!wanted.some((s) => s.name === name)) {
        source.stop();
        this.sources.delete(name);
      }
    }
    return Promise.all(fresh);
  }

  async refreshAll(): Promise<void> {
    await Promise.all([...this.sources.values()].map(({ source }) => source.refresh()));
  }

  stopAll(): void {
    for (const { source } of this.sources.values()) source.stop();
    this.sources.clear();
  }
}

/** Active health checks, started, once any service (or the default) asks for them; else undefined. */
function startHealthChecks(
  o: DiscoveryOptions,
  registry: ServiceRegistry,
  logger: Logger,
): HealthChecker | undefined {
  // Any source may declare a health check: weft.yaml, the services file, Kubernetes.
  if (o.healthCheck === undefined && !registry.declaredServices().some((s) => s.healthCheck !== undefined))
    return undefined;
  const health = new HealthChecker({
    ...(o.healthCheck ? { defaults: o.healthCheck } : {}),
    configFor: (name) => registry.declaredServices().find((s) => s.name === name)?.healthCheck,
    forEachEndpoint: (fn) => registry.forEachEndpoint(fn),
    metrics: o.metrics,
    logger,
    clock: o.clock,
    ...(o.probe ? { probe: o.probe } : {}),
  });
  health.start();
  return health;
}

/** The Kubernetes source feeding the registry's `k8s` declarations; `onChange` runs after each. */
function kubernetesSource(
  o: DiscoveryOptions,
  registry: ServiceRegistry,
  logger: Logger,
  onChange: () => void,
): K8sSource | undefined {
  if (!o.kubernetes) return undefined;
  return new K8sSource({
    ...o.kubernetes,
    trustDomain: o.trustDomain,
    onServices: (services) => {
      registry.setDeclared("k8s", services);
      onChange();
    },
    metrics: o.metrics,
    logger: logger.child({ source: "k8s" }),
    clock: o.clock,
    ...(o.random ? { random: o.random } : {}),
  });
}

/** The watched services file feeding the registry's `file` declarations; `onChange` runs after each. */
function fileSource(
  path: string,
  o: DiscoveryOptions,
  registry: ServiceRegistry,
  logger: Logger,
  onChange: () => void,
): FileSource {
  return new FileSource({
    path,
    onServices: (services) => {
      registry.setDeclared("file", services);
      onChange();
    },
    metrics: o.metrics,
    logger,
    clock: o.clock,
    ...(o.fileDebounceMs !== undefined ? { debounceMs: o.fileDebounceMs } : {}),
  });
}

export function createDiscovery(o: DiscoveryOptions): DiscoveryHandle {
  const logger = o.logger.child({ component: "discovery" });
  const registry = new ServiceRegistry({
    trustDomain: o.trustDomain,
    retries: o.retries,
    outlierDetection: o.outlierDetection,
    metrics: o.metrics,
    logger,
    clock: o.clock,
    random: o.random ?? Math.random,
  });
  const dns = new DnsSources(o, registry, logger);
  let file: FileSource | undefined;
  let health: HealthChecker | undefined;
  let started = false;
  const syncDns = (): Promise<unknown> => (started ? dns.sync() : Promise.resolve());
  const startHealth = (): void => {
    if (!health && started) health = startHealthChecks(o, registry, logger);
  };

  registry.setDeclared("config", o.services);
  const kubernetes = kubernetesSource(o, registry, logger, startHealth);

  return {
    registry,
    kubernetes,
    resolve: (dst) => registry.resolve(dst),
    service: (name) => registry.service(name),
    pick: (name, ctx) => registry.pick(name, ctx),
    describe: () => registry.describe(),
    async start() {
      if (o.file) {
        file = fileSource(o.file, o, registry, logger, () => {
          void syncDns();
          startHealth();
        });
        await file.start();
      }
      started = true;
      if (kubernetes) {
        kubernetes.start();
        // Not ready (and routing nothing from Kubernetes) until every collection was listed once.
        await kubernetes.synced;
      }
      await syncDns();
      startHealth();
    },
    async stop() {
      started = false;
      health?.stop();
      health = undefined;
      dns.stopAll();
      await kubernetes?.stop();
      await file?.stop();
      registry.stop();
    },
    setConfigServices(services) {
      registry.setDeclared("config", services);
      void syncDns();
      startHealth();
    },
    reloadFile: async () => (file ? file.reload() : false),
    refreshDns: () => dns.refreshAll(),
  };
}
