/**
 * The composition root of `weft proxy`: from a validated `Config` to a running sidecar. It builds the
 * logger, clock, metrics, identity source, TLS state, route table (discovery), the listeners (tunnel,
 * outbound capture, inbound capture, explicit) and the admin server, and owns the life cycle:
 *
 * - `start()`: identity first (the sidecar is not ready until the first certificate exists), then
 *   discovery, listeners and admin. Resolves with the bound addresses.
 * - `drain()`: what SIGTERM does. Stop accepting, report not-ready, let live connections finish until
 *   `timeouts.drain`, then close the rest (reason `drained`).
 * - `stop()`: close everything now.
 *
 * Nothing here is global: two sidecars can run in one process (the integration tests do).
 */
import type { Config } from "../config/schema.ts";
import { type Clock, systemClock } from "../core/clock.ts";
import { errorMessage, WeftError } from "../core/errors.ts";
import { createLogger, type Logger, logLevel, setLogLevel } from "../core/log.ts";
import { WeftMetrics } from "../core/metrics.ts";
import type { Probe } from "../discovery/health.ts";
import { type Discovery, formatAddr, type RouteTable } from "../discovery/types.ts";
import type { ListenAddr } from "./addresses.ts";
import { AdminServer, type AdminSources, type Readiness } from "./admin.ts";
import type { Listener } from "./capture/listener.ts";
import type { OriginalDstResolver } from "./capture/original-dst.ts";
import { platformSocketErrors, type SocketErrors } from "./capture/sockopt.ts";
import { ConnectionTracker } from "./connection/record.ts";
import { explainQuery } from "./explain.ts";
import { CaIdentitySource } from "./identity/ca-source.ts";
import { ExpiryWatch } from "./identity/expiry-watch.ts";
import { identitySourceFor } from "./identity/from-config.ts";
import type { IdentitySource } from "./identity/source.ts";
import {
  applyLive,
  type LiveSettings,
  liveSettings,
  planReload,
  type ReloadOutcome,
} from "./live-settings.ts";
import type { Connector } from "./transport/connector.ts";
import { SessionCertWatch } from "./transport/h2/cert-watch.ts";
import { TunnelTls } from "./transport/tls-context.ts";
import type { TunnelHandler } from "./tunnel/tunnel.ts";
import {
  createConnector,
  createListeners,
  createRoutes,
  createWiring,
  isDiscovery,
  type SidecarListeners,
} from "./wiring.ts";

export type { ReloadOutcome } from "./live-settings.ts";

const EXPIRY_CHECK_INTERVAL_MS = 60_000;

/** Everything the sidecar would otherwise build itself; tests inject fakes and in-memory sinks. */
export interface SidecarDeps {
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly metrics?: WeftMetrics;
  /** The route table; a `Discovery` is started and stopped with the sidecar. */
  readonly routes?: RouteTable | Discovery;
  /** Builds the route table from config when `routes` is not given (discovery's `createDiscovery`). */
  readonly createRoutes?: (
    config: Config,
    deps: { logger: Logger; clock: Clock; metrics: WeftMetrics; probe: Probe },
  ) => Discovery;
  readonly originalDst?: OriginalDstResolver;
  readonly identity?: IdentitySource;
  readonly connector?: Connector;
  /** SO_ERROR probe for resets that arrive with a peer's last bytes (default: getsockopt on Linux). */
  readonly socketErrors?: SocketErrors;
  /** Environment (for `identity.ca.tokenFile` reading paths relative to nothing); defaults to none. */
  readonly readFile?: (path: string) => string;
}

/** Where the sidecar's listeners are bound. */
export interface SidecarAddresses {
  readonly admin: ListenAddr;
  /** The Prometheus port (`listeners.metrics`), unless disabled. */
  readonly metrics?: ListenAddr;
  readonly tunnel?: ListenAddr;
  readonly outbound?: ListenAddr;
  readonly inbound?: ListenAddr;
  readonly explicit: readonly ListenAddr[];
}

export class Sidecar {
  readonly logger: Logger;
  readonly clock: Clock;
  readonly metrics: WeftMetrics;
  readonly tracker = new ConnectionTracker();
  readonly tls: TunnelTls;
  readonly identity: IdentitySource;
  private routes: RouteTable | Discovery | undefined;
  private listeners: readonly Listener[] = [];
  private connector: Connector | undefined;
  private tunnelHandler: TunnelHandler | undefined;
  private admin: AdminServer | undefined;
  private metricsServer: AdminServer | undefined;
  private expiry: ExpiryWatch | undefined;
  /** Pooled sessions accepted on the tunnel port / opened by the pool: they follow certificates. */
  private readonly inboundSessions: SessionCertWatch;
  private readonly outboundSessions: SessionCertWatch;
  private addrs: SidecarAddresses | undefined;
  private listenersUp = false;
  private draining = false;
  private stopped = false;
  /** The started-with config plus what reloads applied (`config`). */
  private current: Config;
  /** The objects a reload changes in place; the handlers hold them and read them per connection. */
  private readonly live: LiveSettings;

  constructor(
    config: Config,
    private readonly deps: SidecarDeps = {},
  ) {
    this.current = config;
    this.clock = deps.clock ?? systemClock;
    this.logger = deps.logger ?? createLogger({ level: config.log.level, name: "weft" });
    this.metrics = deps.metrics ?? new WeftMetrics({ processMetrics: true });
    this.live = liveSettings(config);
    this.tls = new TunnelTls({
      trustDomain: config.trustDomain,
      clock: this.clock,
      sessionResumption: config.tls.sessionResumption,
    });
    const watch = (direction: "inbound" | "outbound"): SessionCertWatch =>
      new SessionCertWatch({
        tls: this.tls,
        clock: this.clock,
        logger: this.logger.child({ component: "tunnel" }),
        metrics: this.metrics,
        direction,
      });
    this.inboundSessions = watch("inbound");
    this.outboundSessions = watch("outbound");
    this.tls.onTrustChange(() => this.recheckPeers("the trust bundle or revocation list changed"));
    this.identity =
      deps.identity ??
      identitySourceFor(config, {
        clock: this.clock,
        logger: this.logger,
        metrics: this.metrics,
        ...(deps.readFile ? { readFile: deps.readFile } : {}),
      });
    this.identity.onRevoked?.((serials) => {
      // New handshakes refuse these serials at once; TunnelTls's trust-change hook re-checks the peers
      // of running pooled sessions and ends those that fail.
      this.tls.setRevoked(serials);
      this.logger.info({ revoked: serials.length }, "revocation list applied");
    });
    this.identity.onChange((id) => {
      this.metrics.info.reset();
      this.metrics.info.set({ local_identity: id.id.toString(), trust_domain: config.trustDomain }, 1);
      try {
        this.tls.update(id);
        this.logger.info({ spiffe_id: id.id.toString(), serial: id.serial }, "tunnel TLS context updated");
      } catch (err) {
        this.logger.error({ err: errorMessage(err) }, "cannot build a TLS context from the new identity");
      }
      this.expiry?.check();
      this.publishReady();
    });
  }

  /** The config in effect: the one started with, plus what reloads applied. */
  get config(): Config {
    return this.current;
  }

  /**
   * Apply a new weft.yaml (already validated) to the running sidecar: the keys of `LIVE_KEYS` take
   * effect for new connections (open ones keep going, on the settings they started with); the others
   * keep their running value and are reported as needing a restart.
   */
  reload(next: Config): ReloadOutcome {
    const routes = this.routes;
    const canSetServices = routes !== undefined && isDiscovery(routes) && !!routes.setConfigServices;
    const { applied, restartNeeded, effective: c } = planReload(this.current, next, canSetServices);
    if (applied.length > 0) {
      this.current = c;
      applyLive(this.live, c);
      if (applied.includes("log.level")) setLogLevel(this.logger, c.log.level);
      if (applied.includes("services") && routes && isDiscovery(routes))
        routes.setConfigServices?.(c.services);
    }
    this.metrics.configRestartPending.set(restartNeeded.length > 0 ? 1 : 0);
    return { applied, restartNeeded };
  }

  /** Re-read the identity files and the services file now (SIGHUP), besides their own watches. */
  async reloadSources(): Promise<void> {
    const id = this.identity as { reload?: () => Promise<void> };
    await Promise.all([
      id.reload?.call(this.identity),
      this.routes && isDiscovery(this.routes) ? this.routes.reloadFile?.() : undefined,
    ]);
  }

  /**
   * Verify the peer of every pooled session (both directions) again, now, and end (GOAWAY, running
   * streams finish) those whose chain no longer verifies. Called when the trust bundle changes; call it
   * whenever something else changes what verifies (e.g. a revocation list). Returns how many ended.
   */
  recheckPeers(why: string): number {
    return this.inboundSessions.recheck(why) + this.outboundSessions.recheck(why);
  }

  /** The route table in use (after `start()`). */
  get routeTable(): RouteTable {
    if (!this.routes) throw new WeftError("E_NOT_READY", "the sidecar has not started");
    return this.routes;
  }

  /** Bound addresses (after `start()`). */
  get addresses(): SidecarAddresses {
    if (!this.addrs) throw new WeftError("E_NOT_READY", "the sidecar has not started");
    return this.addrs;
  }

  readiness(): Readiness {
    if (this.draining) return { ready: false, reason: "draining" };
    if (!this.tls.ready) return { ready: false, reason: "no_certificate" };
    // Every peer refuses an expired certificate: not ready until renewal (which keeps trying) replaces it.
    const own = this.tls.current();
    if (own && own.notAfter <= this.clock.now()) return { ready: false, reason: "certificate_expired" };
    if (!this.listenersUp) return { ready: false, reason: "listeners_not_up" };
    return { ready: true };
  }

  private publishReady(): void {
    this.metrics.ready.set(this.readiness().ready ? 1 : 0);
  }

  /** Identity first (not ready until a certificate exists), then connector, routes, listeners, admin. */
  async start(): Promise<SidecarAddresses> {
    this.publishReady();
    await this.startIdentity();
    const w = createWiring({
      config: this.config,
      clock: this.clock,
      logger: this.logger,
      metrics: this.metrics,
      tls: this.tls,
      live: this.live,
      tracker: this.tracker,
      socketErrors: this.deps.socketErrors ?? platformSocketErrors(),
    });
    const connector = this.deps.connector ?? createConnector(w, this.outboundSessions);
    this.connector = connector;
    // Discovery after the connector: its active health checks test apps through their sidecars with it.
    const routes = createRoutes(w, this.deps, connector);
    this.routes = routes;
    if (isDiscovery(routes)) await routes.start();
    const set = createListeners(w, {
      routes,
      connector,
      originalDst: this.deps.originalDst,
      inboundSessions: this.inboundSessions,
      perPeerLimits: () => this.config.limits.perPeer,
      servesService: (name) => {
        const me = this.tls.current()?.id;
        const identity = this.routes?.service(name)?.identity;
        return me !== undefined && identity !== undefined && me.equals(identity);
      },
    });
    this.listeners = set.all;
    this.tunnelHandler = set.tunnelHandler;
    let addrs: SidecarAddresses;
    try {
      addrs = await this.listen(set);
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.addrs = addrs;
    this.listenersUp = true;
    this.publishReady();
    this.logger.info(
      {
        admin: fmt(addrs.admin),
        metrics: fmt(addrs.metrics),
        tunnel: fmt(addrs.tunnel),
        outbound: fmt(addrs.outbound),
        inbound: fmt(addrs.inbound),
        explicit: addrs.explicit.map(fmt),
        ready: this.readiness().ready,
      },
      "sidecar listening",
    );
    return addrs;
  }

  /** The first identity (or none yet: then not ready), and the watch on its expiry. */
  private async startIdentity(): Promise<void> {
    await this.identity.start();
    const current = this.identity.current();
    if (current && !this.tls.ready) this.tls.update(current);
    this.expiry = new ExpiryWatch({
      clock: this.clock,
      logger: this.logger.child({ component: "identity" }),
      metrics: this.metrics,
      intervalMs: EXPIRY_CHECK_INTERVAL_MS,
      current: () => this.identity.current(),
      onCheck: () => {
        if (this.identity instanceof CaIdentitySource) this.identity.pollFailures();
        this.publishReady();
      },
    });
    this.expiry.start();
  }

  /** Binds the listeners in order, then the admin and metrics ports; their ports become reserved. */
  private async listen(set: SidecarListeners): Promise<SidecarAddresses> {
    const c = this.config;
    const tunnel = await set.tunnel?.listen();
    const outbound = await set.outbound?.listen();
    const inbound = await set.inbound?.listen();
    const explicit: ListenAddr[] = [];
    for (const l of set.explicit) explicit.push(await l.listen());
    const sources: AdminSources = {
      metrics: this.metrics,
      readiness: () => this.readiness(),
      config: () => this.config,
      certs: () => this.certs(),
      endpoints: () => (this.routes && isDiscovery(this.routes) ? this.routes.describe() : []),
      explain: (q) => this.explain(q),
      logLevel: () => logLevel(this.logger),
      setLogLevel: (level) => setLogLevel(this.logger, level),
    };
    const server = (at: { address: string; port: number }, role: "admin" | "metrics") =>
      new AdminServer({
        address: at.address,
        port: at.port,
        logger: this.logger.child({ component: role }),
        sources,
        ...(role === "metrics" ? { role } : {}),
      });
    this.admin = server(c.listeners.admin, "admin");
    const admin = await this.admin.listen();
    if (c.listeners.metrics.enabled) this.metricsServer = server(c.listeners.metrics, "metrics");
    const metrics = await this.metricsServer?.listen();
    // A peer may never be forwarded to any port of the sidecar itself (nor the CA's, when it is here).
    const reserved = this.live.inbound.reservedPorts as number[];
    for (const a of [tunnel, outbound, inbound, admin, metrics, ...explicit]) if (a) reserved.push(a.port);
    if (c.identity.ca) reserved.push(caPort(c.identity.ca.url));
    return { admin, metrics, tunnel, outbound, inbound, explicit };
  }

  /** `/explain` on the admin port: see explain.ts. Bad queries get 400 with what to ask instead. */
  explain(q: URLSearchParams): { status: number; body: unknown } {
    if (!this.routes) return { status: 503, body: { error: "the sidecar has not started" } };
    return explainQuery(
      {
        config: this.current,
        routes: this.routes,
        inbound: this.live.inbound,
        listenerAddrs: this.listeners.map((l) => l.address).filter((a): a is ListenAddr => a !== undefined),
        localIdentity: this.identity.current()?.id.toString(),
        tracker: this.tracker,
      },
      q,
    );
  }

  /** The identity in use, for `/certs`. */
  certs(): Record<string, unknown> {
    const id = this.identity.current();
    const source = this.identity.describe();
    if (!id) return { ready: false, ...source };
    return {
      ready: true,
      spiffeId: id.id.toString(),
      serial: id.serial,
      notBefore: new Date(id.notBefore).toISOString(),
      notAfter: new Date(id.notAfter).toISOString(),
      secondsLeft: Math.round((id.notAfter - this.clock.now()) / 1000),
      ...source,
    };
  }

  /**
   * Stop accepting, report not-ready, wait for live connections up to `deadlineMs`, then close the
   * rest. Resolves with how many had to be closed.
   */
  async drain(deadlineMs = this.config.timeouts.drain): Promise<{ forced: number }> {
    this.draining = true;
    this.publishReady();
    this.logger.info({ live: this.tracker.size, deadline_ms: deadlineMs }, "draining");
    await Promise.all(this.listeners.map((l) => l.close()));
    // Pooled sessions from peers get GOAWAY: their live streams finish, new ones go elsewhere.
    this.tunnelHandler?.closeSessions(false);
    const idle = await this.tracker.waitIdle(this.clock, deadlineMs);
    const forced = idle ? 0 : this.tracker.size;
    if (!idle) {
      this.logger.warn({ live: forced }, "drain deadline passed; closing the remaining connections");
      this.tracker.abortAll("drained");
    }
    return { forced };
  }

  /** Close everything now: listeners, live connections, admin, identity and discovery. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.draining = true;
    await Promise.all(this.listeners.map((l) => l.close()));
    this.tracker.abortAll("shutdown");
    this.tunnelHandler?.closeSessions(true);
    this.connector?.close?.();
    await this.admin?.close();
    await this.metricsServer?.close();
    if (!this.deps.metrics) this.metrics.close();
    this.expiry?.stop();
    this.identity.stop();
    if (this.routes && isDiscovery(this.routes) && !this.deps.routes) await this.routes.stop();
  }
}

/** The port of the CA server's URL (default 443 for https). */
function caPort(url: string): number {
  const u = new URL(url);
  return u.port ? Number(u.port) : u.protocol === "http:" ? 80 : 443;
}

function fmt(a: ListenAddr | undefined): string | undefined {
  return a ? formatAddr(a.address, a.port) : undefined;
}
