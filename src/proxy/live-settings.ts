/**
 * What a config reload may change in a running sidecar. `LiveSettings` are the objects the handlers
 * hold and read per connection; a reload changes them in place, so new connections see the new values
 * and open ones keep going. `planReload` says which changed keys apply live (`LIVE_KEYS`) and which wait
 * for a restart (trust domain, identity, listener addresses, transport, discovery sources...).
 */
import { deepFreeze } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import type { InboundCaptureOptions } from "./capture/inbound-capture.ts";
import type { Listener } from "./capture/listener.ts";
import type { ConnectionDeps } from "./connection/record.ts";
import type { OutboundOptions } from "./outbound/outbound.ts";
import type { InboundSettings } from "./outbound/route.ts";
import type { TunnelOptions } from "./tunnel/tunnel.ts";

export type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** The settings a reload changes in place; the handlers hold these objects and read them per connection. */
export interface LiveSettings {
  readonly timeouts: Mutable<Config["timeouts"]>;
  readonly inbound: Mutable<InboundSettings>;
  connection?: Mutable<ConnectionDeps>;
  tunnel?: Mutable<TunnelOptions>;
  capture?: Mutable<InboundCaptureOptions>;
  readonly outbound: Mutable<OutboundOptions>[];
  /** By config key: `outbound`, `inbound`, `tunnel`, `explicit[i]`. */
  readonly listeners: Map<string, Listener>;
}

export function liveSettings(config: Config): LiveSettings {
  return {
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
}

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

/**
 * Which keys of `next` differ from `current` and apply live, which need a restart, and the config in
 * effect after the live ones are applied (`current` when none are). `services` is live only when the
 * route table can take config services.
 */
export function planReload(
  current: Config,
  next: Config,
  canSetServices: boolean,
): ReloadOutcome & { effective: Config } {
  const changed = changedKeys(current, next);
  const live = (k: string) => LIVE_KEYS.some((re) => re.test(k)) && (k !== "services" || canSetServices);
  const applied = changed.filter(live);
  const restartNeeded = changed.filter((k) => !live(k));
  if (applied.length === 0) return { applied, restartNeeded, effective: current };
  const effective = structuredClone(current) as unknown as Record<string, unknown>;
  for (const k of applied) setPath(effective, k, structuredClone(getPath(next, k)));
  return { applied, restartNeeded, effective: deepFreeze(effective as unknown as Config) };
}

/** Puts the live keys of `c` into the objects the handlers and listeners hold. */
export function applyLive(live: LiveSettings, c: Config): void {
  Object.assign(live.timeouts, c.timeouts);
  live.inbound.policy = c.policy;
  live.inbound.ports = c.inbound.ports;
  if (live.connection) live.connection.accessLog = c.log.accessLog;
  if (live.tunnel) live.tunnel.appAddress = c.inbound.appAddress;
  if (live.capture) {
    live.capture.mode = c.inbound.mode;
    live.capture.appAddress = c.inbound.appAddress;
  }
  for (const o of live.outbound) o.outboundPolicy = c.outboundPolicy;
  for (const name of ["outbound", "inbound", "tunnel"] as const) {
    live.listeners.get(name)?.setMaxConnections(c.listeners[name].maxConnections);
  }
  c.listeners.explicit.forEach((e, i) => {
    live.listeners.get(`explicit[${i}]`)?.setMaxConnections(e.maxConnections);
  });
}

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
