/**
 * The vocabulary shared by discovery and the data plane: typed addresses, services, endpoints, and the
 * narrow `RouteTable` interface through which the proxy asks "who owns this destination" and "which
 * endpoint gets this connection". Discovery implements it; the proxy only depends on it.
 */
import { isIP } from "node:net";

/** An IP address (v4 dotted or v6 without brackets, never IPv4-mapped) and a port. */
export interface SocketAddr {
  readonly address: string;
  readonly port: number;
}

export type BalancerKind = "round-robin" | "least-connections" | "peak-ewma" | "random" | "source-hash";

/** One ip:port of a service, as discovery last saw it. */
export interface Endpoint {
  /** Stable key `address:port` (IPv6 in brackets): used for metrics labels and outlier state. */
  readonly key: string;
  readonly address: string;
  /** The application port on the endpoint's host (what the PROXY header names as destination). */
  readonly port: number;
  /** Where the endpoint's sidecar accepts mesh tunnels (default 15008); unused when `sidecar` is false. */
  readonly tunnelPort: number;
  readonly weight: number;
  /** The SPIFFE ID its sidecar must present (the service's identity unless overridden). */
  readonly identity: string;
  /** False: the endpoint runs no sidecar and is reached in plaintext (for migrations). */
  readonly sidecar: boolean;
}

export interface ServicePort {
  readonly port: number;
  /** The port on the endpoints, when it differs from the service port (default: the same). */
  readonly targetPort: number;
  readonly name?: string;
}

export interface Service {
  readonly name: string;
  readonly namespace: string;
  readonly identity: string;
  readonly ports: readonly ServicePort[];
  readonly vips: readonly string[];
  readonly balancer: BalancerKind;
  readonly endpoints: readonly Endpoint[];
  /** Connect attempts in all (first included) and the deadline for all of them together. */
  readonly retries: { readonly attempts: number; readonly deadlineMs: number };
}

/** What the outbound path resolved an original destination to. */
export interface RouteTarget {
  readonly service: Service;
  /** The service port the client asked for. */
  readonly servicePort: number;
  /** The port to name on the endpoint (target port). */
  readonly targetPort: number;
}

/**
 * One endpoint handed to one connection attempt. The lease counts the connection as active on the
 * endpoint until `release()`; the outcome of the attempt feeds outlier detection and peak-EWMA.
 */
export interface EndpointLease {
  readonly endpoint: Endpoint;
  /** Connect (and handshake) succeeded after `connectMs`. */
  reportSuccess(connectMs: number): void;
  /** A local-origin failure: connect refused/timed out, TLS handshake failed, wrong peer identity. */
  reportFailure(reason: string): void;
  /** The connection that used this endpoint is over (idempotent). */
  release(): void;
}

export interface PickContext {
  /** The downstream client's address, for source-hash affinity. */
  readonly clientAddress: string;
  /** Endpoint keys already tried by this connection: pick another one if any is left. */
  readonly exclude: ReadonlySet<string>;
}

/** What the data plane needs from discovery. */
export interface RouteTable {
  /** The service that owns a destination (a VIP:port or an endpoint's own address:port), if any. */
  resolve(dst: SocketAddr): RouteTarget | undefined;
  /** The service by name (explicit listeners name their service). */
  service(name: string): Service | undefined;
  /** Choose an endpoint for a new connection, skipping ejected ones (panic mode when all are). */
  pick(serviceName: string, ctx: PickContext): EndpointLease | undefined;
}

/** One endpoint's state as `/endpoints` on the admin port shows it. */
export interface EndpointStatus {
  readonly key: string;
  readonly address: string;
  readonly port: number;
  readonly weight: number;
  readonly identity: string;
  /** healthy | ejected | probation | unhealthy (failing active health checks) */
  readonly state: string;
  readonly ejectedUntil?: string;
  readonly timesEjected: number;
  readonly consecutiveFailures: number;
  readonly activeConnections: number;
  readonly ewmaConnectMs?: number;
}

export interface ServiceStatus {
  readonly name: string;
  readonly identity: string;
  readonly balancer: BalancerKind;
  readonly vips: readonly string[];
  readonly ports: readonly ServicePort[];
  readonly source: string;
  readonly endpoints: readonly EndpointStatus[];
}

/** Discovery as the sidecar runs it: a route table with a life cycle and a status view. */
export interface Discovery extends RouteTable {
  start(): Promise<void>;
  stop(): Promise<void>;
  describe(): ServiceStatus[];
  /** Replace the services weft.yaml declares (config reload); absent = they cannot change live. */
  setConfigServices?(services: readonly import("../config/services-schema.ts").ServiceConfig[]): void;
  /** Re-read the services file now (SIGHUP); absent when there is none to read. */
  reloadFile?(): Promise<boolean>;
}

/**
 * Reads `address:port` with IPv6 in brackets (`198.18.0.10:8080`, `[fd00::1]:8080`): the address must be
 * an IP of the family its form says, the port 0-65535 (a caller that needs 1-65535 checks that). With
 * `localhost: true`, `localhost` reads as 127.0.0.1. Undefined when the text is not that.
 */
export function parseAddrPort(text: string, opts: { localhost?: boolean } = {}): SocketAddr | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+|localhost)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  if (m[1] !== undefined) return isIP(m[1]) === 6 ? { address: m[1], port } : undefined;
  if (m[2] === "localhost") return opts.localhost ? { address: "127.0.0.1", port } : undefined;
  return isIP(m[2]!) === 4 ? { address: m[2]!, port } : undefined;
}

/** `address:port`, with IPv6 in brackets. */
export function formatAddr(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Strips the IPv4-mapped prefix a dual-stack socket reports for IPv4 peers. */
export function normalizeAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}
