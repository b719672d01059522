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
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { deepFreeze } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import { type Clock, systemClock } from "../core/clock.ts";
import { errorMessage, WeftError } from "../core/errors.ts";
import { createLogger, type Logger, logLevel, setLogLevel } from "../core/log.ts";
import { WeftMetrics } from "../core/metrics.ts";
import type { Probe } from "../discovery/health.ts";
import type { Discovery, RouteTable, SocketAddr } from "../discovery/types.ts";
import { reclaimProcessMemory } from "../runtime/idle-reclaim.ts";
import { AdminServer, type AdminSources, type Readiness } from "./admin.ts";
import { InboundCaptureHandler, type InboundCaptureOptions } from "./capture/inbound-capture.ts";
import { Listener } from "./capture/listener.ts";
import { LinuxOriginalDst, type OriginalDstResolver } from "./capture/original-dst.ts";
import { platformSocketErrors, type SocketErrors } from "./capture/sockopt.ts";
import { type ConnectionDeps, ConnectionTracker } from "./connection/record.ts";
import { type ExplainContext, explainInbound, explainOutbound } from "./explain.ts";
import {
  CaIdentitySource,
  ExpiryWatch,
  FileIdentitySource,
  type IdentitySource,
} from "./identity/sources.ts";
import { tunnelProbe } from "./outbound/health-probe.ts";
import { OutboundHandler, type OutboundOptions } from "./outbound/outbound.ts";
import type { InboundSettings } from "./outbound/route.ts";
import { type Connector, MtlsConnector } from "./transport/connector.ts";
import { SessionCertWatch } from "./transport/h2/cert-watch.ts";
import { PooledConnector } from "./transport/h2/pool.ts";
import { TunnelTls } from "./transport/tls-context.ts";
import { LocalAddresses } from "./tunnel/local-addresses.ts";
import { PeerLimits } from "./tunnel/peer-limits.ts";
import { TunnelHandler, type TunnelOptions } from "./tunnel/tunnel.ts";

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
  readonly admin: SocketAddr;
  /** The Prometheus port (`listeners.metrics`), unless disabled. */
  readonly metrics?: SocketAddr;
  readonly tunnel?: SocketAddr;
  readonly outbound?: SocketAddr;
  readonly inbound?: SocketAddr;
  readonly explicit: readonly SocketAddr[];
}

function isDiscovery(r: RouteTable | Discovery): r is Discovery {
  return typeof (r as Discovery).start === "function" && typeof (r as Discovery).describe === "function";
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** What a config reload did: keys applied live, and keys whose change waits for a restart. */
export interface ReloadOutcome {
  readonly applied: readonly string[];
  readonly restartNeeded: readonly string[];
}

/**
 * Keys a reload applies to the running sidecar (new connections see them; open ones keep going). Every
 * other key (trust domain, identity, listener addresses, transport, discovery sources...) needs a restart.
 */
const LIVE_KEYS: readonly RegExp[] = [
  /^policy(\.|$)/,
  /^services$/,
  /^outboundPolicy$/,
  /^timeouts\./,
  /^log\./,
  /^inbound\.(mode|appAddress|ports)$/,
  /^listeners\.(outbound|inbound|tunnel)\.maxConnections$/,
  /^listeners\.explicit\[\d+\]\.maxConnections$/,
  /^limits\.perPeer\./,
];

/** Paths (`timeouts.idle`, `listeners.explicit[0].maxConnections`) whose values differ between a and b. */
export function changedKeys(a: unknown, b: unknown, path = ""): string[] {
  const isObj = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (isObj(a) && isObj(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => changedKeys(a[k], b[k], path ? `${path}.${k}` : k));
  }
  // Explicit listeners are compared one by one (so a limit change stays live); other lists as a whole.
  if (path === "listeners.explicit" && Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
    return a.flatMap((x, i) => changedKeys(x, b[i], `${path}[${i}]`));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [path];
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(/\.|(?=\[)/).map((p) => (p.startsWith("[") ? Number(p.slice(1, -1)) : p));
  let holder = target as Record<string | number, unknown>;
  for (const p of parts.slice(0, -1)) holder = holder[p] as Record<string | number, unknown>;
  holder[parts.at(-1)!] = value;
}

function getPath(source: unknown, path: string): unknown {
  const parts = path.split(/\.|(?=\[)/).map((p) => (p.startsWith("[") ? Number(p.slice(1, -1)) : p));
  let v = source as Record<string | number, unknown> | undefined;
  for (const p of parts) v = v?.[p] as Record<string | number, unknown> | undefined;
  return v;
}

export class Sidecar {
  readonly logger: Logger;
  readonly clock: Clock;
  readonly metrics: WeftMetrics;
  readonly tracker = new ConnectionTracker();
  readonly tls: TunnelTls;
  readonly identity: IdentitySource;
  private routes: RouteTable | Discovery | undefined;
  private readonly listeners: Listener[] = [];
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
  /** The settings a reload changes in place; the handlers hold these objects and read them per connection. */
  private current: Config;
  private readonly live: {
    readonly timeouts: Mutable<Config["timeouts"]>;
    readonly inbound: Mutable<InboundSettings>;
    connection?: Mutable<ConnectionDeps>;
    tunnel?: Mutable<TunnelOptions>;
    capture?: Mutable<InboundCaptureOptions>;
    readonly outbound: Mutable<OutboundOptions>[];
    readonly listeners: Map<string, Listener>;
  };

  constructor(
    config: Config,
    private readonly deps: SidecarDeps = {},
  ) {
    this.current = config;
    this.clock = deps.clock ?? systemClock;
    this.logger = deps.logger ?? createLogger({ level: config.log.level, name: "weft" });
    this.metrics = deps.metrics ?? new WeftMetrics({ processMetrics: true });
    this.live = {
      timeouts: { ...config.timeouts },
      inbound: {
        trustDomain: config.trustDomain,
        policy: config.policy,
        ports: config.inbound.ports,
        reservedPorts: [],
      },
      outbound: [],
      listeners: new Map(),
    };
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
    this.identity = deps.identity ?? this.buildIdentity();
    this.identity.onRevoked?.((serials) => {
      // New handshakes refuse these serials at once; TunnelTls's trust-change hook re-checks the peers
      // of running pooled sessions and ends those that fail.
      this.tls.setRevoked(serials);
      this.logger.info({ revoked: serials.length }, "revocation list applied");
    });
    this.identity.onChange((id) => {
      this.metrics.info.reset();
      this.metrics.info.set({ local_identity: id.id, trust_domain: config.trustDomain }, 1);
      try {
        this.tls.update(id);
        this.logger.info({ spiffe_id: id.id, serial: id.serial }, "tunnel TLS context updated");
      } catch (err) {
        this.logger.error({ err: errorMessage(err) }, "cannot build a TLS context from the new identity");
      }
      this.expiry?.check();
      this.publishReady();
    });
  }

  private buildIdentity(): IdentitySource {
    const c = this.config;
    const read = this.deps.readFile ?? ((p: string) => readFileSync(p, "utf8"));
    if (c.identity.files) {
      return new FileIdentitySource({
        cert: c.identity.files.cert,
        key: c.identity.files.key,
        bundle: c.identity.files.bundle,
        trustDomain: c.trustDomain,
        clock: this.clock,
        logger: this.logger.child({ component: "identity" }),
        pollIntervalMs: c.identity.files.reloadInterval,
      });
    }
    const ca = c.identity.ca!;
    // The token file is read at each attempt: it may appear, or be replaced, while the sidecar waits.
    const tokenFile = ca.tokenFile;
    const token =
      ca.token ??
      (tokenFile === undefined
        ? undefined
        : () => {
            try {
              return read(tokenFile).trim();
            } catch (err) {
              throw new WeftError(
                "E_IO",
                `identity.ca.tokenFile ${tokenFile} cannot be read: ${errorMessage(err)}`,
                { reason: "token_file" },
              );
            }
          });
    let caBundlePem: string;
    try {
      caBundlePem = read(ca.bundle);
    } catch (err) {
      throw new WeftError("E_IO", `identity.ca.bundle ${ca.bundle} cannot be read: ${errorMessage(err)}`);
    }
    return new CaIdentitySource({
      url: ca.url,
      caBundlePem,
      id: ca.id,
      token,
      ...(ca.kubernetesTokenFile !== undefined
        ? {
            kubernetesToken: () => {
              const path = ca.kubernetesTokenFile!;
              try {
                return read(path).trim();
              } catch (err) {
                throw new WeftError(
                  "E_IO",
                  `identity.ca.kubernetesTokenFile ${path} cannot be read: ${errorMessage(err)}`,
                );
              }
            },
          }
        : {}),
      keyAlgorithm: ca.keyAlgorithm,
      stateDir: ca.stateDir,
      revocationRefreshMs: ca.revocationRefresh,
      retryMaxMs: ca.retryMax,
      trustDomain: c.trustDomain,
      clock: this.clock,
      logger: this.logger.child({ component: "identity" }),
      metrics: this.metrics,
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
    const changed = changedKeys(this.current, next);
    const canSetServices =
      this.routes !== undefined && isDiscovery(this.routes) && !!this.routes.setConfigServices;
    const live = (k: string) => LIVE_KEYS.some((re) => re.test(k)) && (k !== "services" || canSetServices);
    const applied = changed.filter(live);
    const restartNeeded = changed.filter((k) => !live(k));
    if (applied.length > 0) {
      const effective = structuredClone(this.current) as unknown as Record<string, unknown>;
      for (const k of applied) setPath(effective, k, structuredClone(getPath(next, k)));
      const c = deepFreeze(effective as unknown as Config);
      this.current = c;
      Object.assign(this.live.timeouts, c.timeouts);
      this.live.inbound.policy = c.policy;
      this.live.inbound.ports = c.inbound.ports;
      if (this.live.connection) this.live.connection.accessLog = c.log.accessLog;
      if (this.live.tunnel) this.live.tunnel.appAddress = c.inbound.appAddress;
      if (this.live.capture) {
        this.live.capture.mode = c.inbound.mode;
        this.live.capture.appAddress = c.inbound.appAddress;
      }
      for (const o of this.live.outbound) o.outboundPolicy = c.outboundPolicy;
      for (const name of ["outbound", "inbound", "tunnel"] as const) {
        this.live.listeners.get(name)?.setMaxConnections(c.listeners[name].maxConnections);
      }
      c.listeners.explicit.forEach((e, i) => {
        this.live.listeners.get(`explicit[${i}]`)?.setMaxConnections(e.maxConnections);
      });
      if (applied.includes("log.level")) setLogLevel(this.logger, c.log.level);
      if (applied.includes("services") && this.routes && isDiscovery(this.routes)) {
        this.routes.setConfigServices?.(c.services);
      }
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

  async start(): Promise<SidecarAddresses> {
    const c = this.config;
    this.publishReady();
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

    const connDeps: Mutable<ConnectionDeps> = {
      metrics: this.metrics,
      logger: this.logger.child({ component: "access" }),
      clock: this.clock,
      accessLog: c.log.accessLog,
      tracker: this.tracker,
      socketErrors: this.deps.socketErrors ?? platformSocketErrors(),
    };
    this.live.connection = connDeps;
    const keepalive = {
      intervalMs: c.upstream.sessionKeepalive.interval,
      timeoutMs: c.upstream.sessionKeepalive.timeout,
    };
    const connector =
      this.deps.connector ??
      (c.upstream.transport === "pooled"
        ? new PooledConnector({
            tls: this.tls,
            clock: this.clock,
            metrics: this.metrics,
            maxStreamsPerSession: c.upstream.maxStreamsPerSession,
            sessionIdleTimeoutMs: c.upstream.sessionIdleTimeout,
            connectTimeoutMs: c.timeouts.connect,
            keepalive,
            logger: this.logger.child({ component: "pool" }),
            certWatch: this.outboundSessions,
          })
        : new MtlsConnector({ tls: this.tls, clock: this.clock, metrics: this.metrics }));
    this.connector = connector;

    // Discovery after the connector: its active health checks test apps through their sidecars with it.
    if (this.deps.routes) this.routes = this.deps.routes;
    else if (this.deps.createRoutes) {
      this.routes = this.deps.createRoutes(c, {
        logger: this.logger,
        clock: this.clock,
        metrics: this.metrics,
        probe: tunnelProbe(connector, this.clock),
      });
    } else {
      throw new WeftError("E_USAGE", "the sidecar needs a route table (routes or createRoutes)");
    }
    if (isDiscovery(this.routes)) await this.routes.start();
    const listenerAddrs = (): SocketAddr[] =>
      this.listeners.map((l) => l.address).filter((a): a is SocketAddr => a !== undefined);
    const timeouts = this.live.timeouts;
    const wantsOriginalDst = c.listeners.outbound.enabled || c.listeners.inbound.enabled;
    let originalDst = this.deps.originalDst;
    if (!originalDst && wantsOriginalDst) {
      if (process.platform !== "linux") {
        throw new WeftError(
          "E_CONFIG",
          "listeners.outbound and listeners.inbound need Linux (SO_ORIGINAL_DST); set their enabled: false and use listeners.explicit",
        );
      }
      originalDst = new LinuxOriginalDst();
    }
    const reserved = this.live.inbound.reservedPorts as number[];
    const localAddresses = new LocalAddresses(this.clock);
    const add = (
      name: string,
      opts: {
        address: string;
        port: number;
        maxConnections: number;
        highWaterMark?: number;
        setting?: string;
      },
      onConnection: (s: import("node:net").Socket) => void,
      key = name,
    ): Listener => {
      const l = new Listener({
        name,
        ...opts,
        clock: this.clock,
        logger: this.logger.child({ component: "listener", listener: name }),
        onConnection,
        onRefused: () => {
          this.metrics.connectionsClosed.inc({
            direction: name === "tunnel" ? "inbound" : name,
            service: "unknown",
            peer_identity: "none",
            reason: "connection_limit",
          });
        },
      });
      this.listeners.push(l);
      this.live.listeners.set(key, l);
      return l;
    };

    const tunnel = c.listeners.tunnel.enabled
      ? add("tunnel", c.listeners.tunnel, (s) => this.tunnelHandler!.handle(s))
      : undefined;
    if (tunnel) {
      this.live.tunnel = {
        tls: this.tls,
        clock: this.clock,
        logger: this.logger.child({ component: "tunnel" }),
        metrics: this.metrics,
        connection: connDeps,
        settings: this.live.inbound,
        appAddress: c.inbound.appAddress,
        timeouts,
        keepalive,
        slots: tunnel,
        certWatch: this.inboundSessions,
        // Transparent mode: a peer reaches the app at the address it was sent to (the pod's own).
        transparent: c.listeners.inbound.enabled,
        localAddresses,
        peerLimits: new PeerLimits({
          settings: () => this.config.limits.perPeer,
          clock: this.clock,
          metrics: this.metrics,
          logger: this.logger.child({ component: "tunnel" }),
          giveBack: () => reclaimProcessMemory({ lastResort: true }),
        }),
        servesService: (name) => {
          const me = this.tls.current()?.id;
          return me !== undefined && this.routes?.service(name)?.identity === me;
        },
      };
      this.tunnelHandler = new TunnelHandler(this.live.tunnel);
    }
    const outboundOptions = (o: Mutable<OutboundOptions>): OutboundOptions => {
      this.live.outbound.push(o);
      return o;
    };
    const outbound = c.listeners.outbound.enabled
      ? add(
          "outbound",
          { ...c.listeners.outbound, highWaterMark: c.limits.earlyDataBytes },
          new OutboundHandler(
            outboundOptions({
              kind: "outbound",
              originalDst,
              listenerAddrs,
              routes: this.routes,
              connector,
              outboundPolicy: c.outboundPolicy,
              clock: this.clock,
              logger: this.logger.child({ component: "outbound" }),
              metrics: this.metrics,
              connection: connDeps,
              timeouts,
              earlyDataBytes: c.limits.earlyDataBytes,
            }),
          ).handle,
        )
      : undefined;
    if (c.listeners.inbound.enabled) {
      this.live.capture = {
        mode: c.inbound.mode,
        originalDst: originalDst!,
        appAddress: c.inbound.appAddress,
        listenerAddrs,
        reservedPorts: reserved,
        ports: () => this.live.inbound.ports,
        localAddresses,
        clock: this.clock,
        logger: this.logger.child({ component: "inbound" }),
        metrics: this.metrics,
        connection: connDeps,
        timeouts,
      };
    }
    const inbound = this.live.capture
      ? add("inbound", c.listeners.inbound, new InboundCaptureHandler(this.live.capture).handle)
      : undefined;
    const explicit = c.listeners.explicit.map((e, i) =>
      add(
        "explicit",
        {
          address: e.listen.address,
          port: e.listen.port,
          setting: `listeners.explicit[${i}].listen`,
          maxConnections: e.maxConnections,
          highWaterMark: c.limits.earlyDataBytes,
        },
        new OutboundHandler(
          outboundOptions({
            kind: "explicit",
            explicit: { service: e.service, port: e.port },
            listenerAddrs,
            routes: this.routes!,
            connector,
            outboundPolicy: c.outboundPolicy,
            clock: this.clock,
            logger: this.logger.child({ component: "outbound", service: e.service }),
            metrics: this.metrics,
            connection: connDeps,
            timeouts,
            earlyDataBytes: c.limits.earlyDataBytes,
          }),
        ).handle,
        `explicit[${i}]`,
      ),
    );

    try {
      const tunnelAddr = tunnel ? await tunnel.listen() : undefined;
      const outboundAddr = outbound ? await outbound.listen() : undefined;
      const inboundAddr = inbound ? await inbound.listen() : undefined;
      const explicitAddrs: SocketAddr[] = [];
      for (const l of explicit) explicitAddrs.push(await l.listen());
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
      this.admin = new AdminServer({
        address: c.listeners.admin.address,
        port: c.listeners.admin.port,
        logger: this.logger.child({ component: "admin" }),
        sources,
      });
      const adminAddr = await this.admin.listen();
      if (c.listeners.metrics.enabled) {
        this.metricsServer = new AdminServer({
          address: c.listeners.metrics.address,
          port: c.listeners.metrics.port,
          logger: this.logger.child({ component: "metrics" }),
          sources,
          role: "metrics",
        });
      }
      const metricsAddr = await this.metricsServer?.listen();
      // A peer may never be forwarded to any port of the sidecar itself (nor the CA's, when it is here).
      for (const a of [tunnelAddr, outboundAddr, inboundAddr, adminAddr, metricsAddr, ...explicitAddrs]) {
        if (a) reserved.push(a.port);
      }
      if (c.identity.ca) reserved.push(caPort(c.identity.ca.url));
      this.addrs = {
        admin: adminAddr,
        metrics: metricsAddr,
        tunnel: tunnelAddr,
        outbound: outboundAddr,
        inbound: inboundAddr,
        explicit: explicitAddrs,
      };
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.listenersUp = true;
    this.publishReady();
    this.logger.info(
      {
        admin: fmt(this.addrs.admin),
        metrics: fmt(this.addrs.metrics),
        tunnel: fmt(this.addrs.tunnel),
        outbound: fmt(this.addrs.outbound),
        inbound: fmt(this.addrs.inbound),
        explicit: this.addrs.explicit.map(fmt),
        ready: this.readiness().ready,
      },
      "sidecar listening",
    );
    return this.addrs;
  }

  /** `/explain` on the admin port: see explain.ts. Bad queries get 400 with what to ask instead. */
  explain(q: URLSearchParams): { status: number; body: unknown } {
    const bad = (message: string) => ({ status: 400, body: { error: message } });
    if (!this.routes) return { status: 503, body: { error: "the sidecar has not started" } };
    const ctx: ExplainContext = {
      config: this.current,
      routes: this.routes,
      inbound: this.live.inbound,
      listenerAddrs: this.listeners.map((l) => l.address).filter((a): a is SocketAddr => a !== undefined),
      localIdentity: this.identity.current()?.id,
      tracker: this.tracker,
    };
    const portParam = q.get("port");
    // Decimal digits only: Number() would also take "1e3", "0x50" and " 80".
    const port =
      portParam === null ? undefined : /^\d{1,5}$/.test(portParam) ? Number(portParam) : Number.NaN;
    if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
      return bad(`port "${portParam}" is not a port (1-65535)`);
    }
    const peer = q.get("peer");
    if (peer !== null) {
      if (!/^spiffe:\/\/[^/\s]+(\/\S*)?$/.test(peer)) return bad(`peer "${peer}" is not a SPIFFE ID`);
      if (port === undefined) return bad("peer needs port: /explain?peer=spiffe://...&port=8080");
      return { status: 200, body: explainInbound(ctx, peer, port) };
    }
    const service = q.get("service");
    if (service !== null)
      return { status: 200, body: explainOutbound(ctx, { service, ...(port ? { port } : {}) }) };
    const dst = q.get("dst");
    if (dst !== null) {
      const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(dst);
      const p = m ? Number(m[3]) : 0;
      const address = m ? (m[1] ?? m[2]!) : "";
      if (!m || p < 1 || p > 65535 || isIP(address) === 0) {
        return bad(`dst "${dst}" is not address:port (198.18.0.10:8080 or [fd00::1]:8080)`);
      }
      return { status: 200, body: explainOutbound(ctx, { dst: { address, port: p } }) };
    }
    return bad("ask /explain?dst=address:port, ?service=name[&port=n] or ?peer=spiffe://...&port=n");
  }

  /** The identity in use, for `/certs`. */
  certs(): Record<string, unknown> {
    const id = this.identity.current();
    const source = this.identity.describe();
    if (!id) return { ready: false, ...source };
    return {
      ready: true,
      spiffeId: id.id,
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

function fmt(a: SocketAddr | undefined): string | undefined {
  return a ? (a.address.includes(":") ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : undefined;
}
