/**
 * The sidecar's wiring: from the config and what the `Sidecar` owns, the pieces `start()` connects (the
 * upstream connector, the route table, the listeners with their handlers). Every handler is handed the
 * same bundle (`Wiring`: clock, metrics, connection record deps, the live timeouts) plus its own logger;
 * the objects a reload changes in place (`LiveSettings`) are the ones the handlers hold.
 */
import type { Socket } from "node:net";
import type { Config } from "../config/schema.ts";
import type { Clock } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { Direction, WeftMetrics } from "../core/metrics.ts";
import type { Probe } from "../discovery/health.ts";
import type { Discovery, RouteTable } from "../discovery/types.ts";
import { reclaimProcessMemory } from "../runtime/idle-reclaim.ts";
import type { ListenAddr } from "./addresses.ts";
import { InboundCaptureHandler, type InboundCaptureOptions } from "./capture/inbound-capture.ts";
import { Listener, type ListenerOptions } from "./capture/listener.ts";
import { LinuxOriginalDst, type OriginalDstResolver } from "./capture/original-dst.ts";
import type { SocketErrors } from "./capture/sockopt.ts";
import { type ConnectionDeps, type ConnectionTracker, countRefused } from "./connection/record.ts";
import type { LiveSettings, Mutable } from "./live-settings.ts";
import { tunnelProbe } from "./outbound/health-probe.ts";
import { OutboundHandler, type OutboundOptions } from "./outbound/outbound.ts";
import { type Connector, MtlsConnector } from "./transport/connector.ts";
import type { SessionCertWatch } from "./transport/h2/cert-watch.ts";
import { PooledConnector } from "./transport/h2/pool.ts";
import type { TunnelTls } from "./transport/tls-context.ts";
import { LocalAddresses } from "./tunnel/local-addresses.ts";
import { PeerLimits } from "./tunnel/peer-limits.ts";
import { TunnelHandler, type TunnelOptions } from "./tunnel/tunnel.ts";

/** What every handler of the sidecar is built from. */
export interface Wiring {
  readonly config: Config;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  readonly tls: TunnelTls;
  readonly live: LiveSettings;
  /** What each ConnectionRecord writes to (also `live.connection`: the access-log switch is live). */
  readonly connection: Mutable<ConnectionDeps>;
  readonly keepalive: { readonly intervalMs: number; readonly timeoutMs: number };
}

export function createWiring(parts: {
  config: Config;
  clock: Clock;
  logger: Logger;
  metrics: WeftMetrics;
  tls: TunnelTls;
  live: LiveSettings;
  tracker: ConnectionTracker;
  socketErrors: SocketErrors;
}): Wiring {
  const { config: c, live } = parts;
  live.connection = {
    metrics: parts.metrics,
    logger: parts.logger.child({ component: "access" }),
    clock: parts.clock,
    accessLog: c.log.accessLog,
    tracker: parts.tracker,
    socketErrors: parts.socketErrors,
  };
  return {
    ...parts,
    connection: live.connection,
    keepalive: {
      intervalMs: c.upstream.sessionKeepalive.interval,
      timeoutMs: c.upstream.sessionKeepalive.timeout,
    },
  };
}

export function isDiscovery(r: RouteTable | Discovery): r is Discovery {
  return typeof (r as Discovery).start === "function" && typeof (r as Discovery).describe === "function";
}

/** The upstream transport `upstream.transport` names: pooled HTTP/2 sessions, or one TLS connection each. */
export function createConnector(w: Wiring, certWatch: SessionCertWatch): Connector {
  const c = w.config;
  if (c.upstream.transport !== "pooled") {
    return new MtlsConnector({ tls: w.tls, clock: w.clock, metrics: w.metrics });
  }
  return new PooledConnector({
    tls: w.tls,
    clock: w.clock,
    metrics: w.metrics,
    maxStreamsPerSession: c.upstream.maxStreamsPerSession,
    sessionIdleTimeoutMs: c.upstream.sessionIdleTimeout,
    connectTimeoutMs: c.timeouts.connect,
    keepalive: w.keepalive,
    logger: w.logger.child({ component: "pool" }),
    certWatch,
  });
}

/** The given route table, or one built from the config (its health checks probe through `connector`). */
export function createRoutes(
  w: Wiring,
  given: {
    routes?: RouteTable | Discovery;
    createRoutes?: (
      config: Config,
      deps: { logger: Logger; clock: Clock; metrics: WeftMetrics; probe: Probe },
    ) => Discovery;
  },
  connector: Connector,
): RouteTable | Discovery {
  if (given.routes) return given.routes;
  if (!given.createRoutes) {
    throw new WeftError("E_USAGE", "the sidecar needs a route table (routes or createRoutes)");
  }
  return given.createRoutes(w.config, {
    logger: w.logger,
    clock: w.clock,
    metrics: w.metrics,
    probe: tunnelProbe(connector, w.clock),
  });
}

/** What the listeners need beyond the wiring. */
export interface ListenerParts {
  readonly routes: RouteTable;
  readonly connector: Connector;
  /** SO_ORIGINAL_DST (default: getsockopt on Linux, when a capture listener is enabled). */
  readonly originalDst: OriginalDstResolver | undefined;
  /** Pooled sessions accepted on the tunnel port follow certificates. */
  readonly inboundSessions: SessionCertWatch;
  /** `limits.perPeer` as the config says now. */
  readonly perPeerLimits: () => Config["limits"]["perPeer"];
  /** Does this sidecar's identity serve the named service? */
  readonly servesService: (name: string) => boolean;
}

/** The sidecar's listeners, built (not yet listening), in the order they listen. */
export interface SidecarListeners {
  readonly all: readonly Listener[];
  readonly tunnel: Listener | undefined;
  readonly outbound: Listener | undefined;
  readonly inbound: Listener | undefined;
  readonly explicit: readonly Listener[];
  readonly tunnelHandler: TunnelHandler | undefined;
}

/** A listener's connection handler: takes each accepted socket, says how its connections are counted. */
interface Handler {
  readonly direction: Direction;
  readonly handle: (socket: Socket) => void;
}

type ListenAt = Pick<ListenerOptions, "address" | "port" | "maxConnections" | "highWaterMark" | "setting">;

/** Builds every enabled listener with its handler; they listen when the sidecar says so. */
export function createListeners(w: Wiring, parts: ListenerParts): SidecarListeners {
  const c = w.config;
  const all: Listener[] = [];
  const listenerAddrs = (): ListenAddr[] =>
    all.map((l) => l.address).filter((a): a is ListenAddr => a !== undefined);
  const originalDst = parts.originalDst ?? (captures(c) ? linuxOriginalDst() : undefined);
  const localAddresses = new LocalAddresses(w.clock);
  // A refused accept is counted as the connections of the listener's handler are.
  const add = (name: string, at: ListenAt, handler: Handler, key = name): Listener => {
    const l = new Listener({
      name,
      ...at,
      clock: w.clock,
      logger: w.logger.child({ component: "listener", listener: name }),
      onConnection: handler.handle,
      onRefused: () =>
        countRefused(w.connection, { direction: handler.direction, reason: "connection_limit" }),
    });
    all.push(l);
    w.live.listeners.set(key, l);
    return l;
  };

  let tunnelHandler: TunnelHandler | undefined;
  const tunnel = c.listeners.tunnel.enabled
    ? add("tunnel", c.listeners.tunnel, {
        direction: TunnelHandler.direction,
        handle: (s) => tunnelHandler!.handle(s),
      })
    : undefined;
  if (tunnel) {
    w.live.tunnel = tunnelOptions(w, parts, tunnel, localAddresses);
    tunnelHandler = new TunnelHandler(w.live.tunnel);
  }
  const upstream = { routes: parts.routes, connector: parts.connector, listenerAddrs };
  const outbound = c.listeners.outbound.enabled
    ? add(
        "outbound",
        { ...c.listeners.outbound, highWaterMark: c.limits.earlyDataBytes },
        outboundHandler(w, { kind: "outbound", originalDst, ...upstream }),
      )
    : undefined;
  if (c.listeners.inbound.enabled) {
    w.live.capture = captureOptions(w, originalDst!, listenerAddrs, localAddresses);
  }
  const inbound = w.live.capture
    ? add("inbound", c.listeners.inbound, new InboundCaptureHandler(w.live.capture))
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
      outboundHandler(
        w,
        { kind: "explicit", explicit: { service: e.service, port: e.port }, ...upstream },
        { service: e.service },
      ),
      `explicit[${i}]`,
    ),
  );
  return { all, tunnel, outbound, inbound, explicit, tunnelHandler };
}

function captures(c: Config): boolean {
  return c.listeners.outbound.enabled || c.listeners.inbound.enabled;
}

function linuxOriginalDst(): OriginalDstResolver {
  if (process.platform !== "linux") {
    throw new WeftError(
      "E_CONFIG",
      "listeners.outbound and listeners.inbound need Linux (SO_ORIGINAL_DST); set their enabled: false and use listeners.explicit",
    );
  }
  return new LinuxOriginalDst();
}

function tunnelOptions(
  w: Wiring,
  parts: ListenerParts,
  slots: Listener,
  localAddresses: LocalAddresses,
): Mutable<TunnelOptions> {
  const c = w.config;
  const logger = w.logger.child({ component: "tunnel" });
  return {
    tls: w.tls,
    clock: w.clock,
    logger,
    metrics: w.metrics,
    connection: w.connection,
    settings: w.live.inbound,
    appAddress: c.inbound.appAddress,
    timeouts: w.live.timeouts,
    keepalive: w.keepalive,
    slots,
    certWatch: parts.inboundSessions,
    // Transparent mode: a peer reaches the app at the address it was sent to (the pod's own).
    transparent: c.listeners.inbound.enabled,
    localAddresses,
    peerLimits: new PeerLimits({
      settings: parts.perPeerLimits,
      clock: w.clock,
      metrics: w.metrics,
      logger,
      giveBack: () => reclaimProcessMemory({ lastResort: true }),
    }),
    servesService: parts.servesService,
  };
}

/** An outbound or explicit listener's handler; its options join the live ones (`outboundPolicy`). */
function outboundHandler(
  w: Wiring,
  which: Pick<
    OutboundOptions,
    "kind" | "explicit" | "originalDst" | "routes" | "connector" | "listenerAddrs"
  >,
  logBindings: Record<string, string> = {},
): Handler {
  const c = w.config;
  const options: Mutable<OutboundOptions> = {
    ...which,
    outboundPolicy: c.outboundPolicy,
    clock: w.clock,
    logger: w.logger.child({ component: "outbound", ...logBindings }),
    metrics: w.metrics,
    connection: w.connection,
    timeouts: w.live.timeouts,
    earlyDataBytes: c.limits.earlyDataBytes,
  };
  w.live.outbound.push(options);
  return new OutboundHandler(options);
}

function captureOptions(
  w: Wiring,
  originalDst: OriginalDstResolver,
  listenerAddrs: () => ListenAddr[],
  localAddresses: LocalAddresses,
): Mutable<InboundCaptureOptions> {
  const c = w.config;
  return {
    mode: c.inbound.mode,
    originalDst,
    appAddress: c.inbound.appAddress,
    listenerAddrs,
    reservedPorts: w.live.inbound.reservedPorts,
    ports: () => w.live.inbound.ports,
    localAddresses,
    clock: w.clock,
    logger: w.logger.child({ component: "inbound" }),
    metrics: w.metrics,
    connection: w.connection,
    timeouts: w.live.timeouts,
  };
}
