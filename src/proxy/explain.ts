/**
 * What the sidecar would do with a connection, and why, computed from its live state (the admin port's
 * `/explain`, printed by `weft explain`). Outbound: the route decision for a destination (or an explicit
 * listener's service), the service, its endpoints with their outlier/health state, the identity each must
 * prove, the transport, and the recent connections to it that did not end normally. Inbound (this sidecar
 * as the server): the policy decision for a client identity on a port, the rule that made it, where the
 * app is reached, and the recent refusals of that identity. The same functions the data plane uses
 * (`decideOutbound`, `decideInbound`) make the decision, so the answer cannot drift from the behaviour.
 */
import { SpiffeId } from "../ca/spiffe-id.ts";
import type { Config } from "../config/schema.ts";
import {
  type Discovery,
  type Endpoint,
  type EndpointStatus,
  formatAddr,
  parseAddrPort,
  type RouteTable,
} from "../discovery/types.ts";
import { type ListenAddr, type OrigDstAddr, origDstAddr } from "./addresses.ts";
import { isLoop } from "./capture/original-dst.ts";
import type { ConnectionTracker, EndedConnection } from "./connection/record.ts";
import { decideInbound, decideOutbound, type InboundSettings } from "./outbound/route.ts";

export interface ExplainContext {
  readonly config: Config;
  readonly routes: RouteTable | Discovery;
  readonly inbound: InboundSettings;
  readonly listenerAddrs: readonly ListenAddr[];
  readonly localIdentity: string | undefined;
  readonly tracker: ConnectionTracker;
}

export interface ExplainedEndpoint extends Partial<EndpointStatus> {
  readonly key: string;
  readonly address: string;
  /** The app port named on the endpoint (PROXY header destination). */
  readonly port: number;
  readonly tunnelPort: number;
  readonly identity: string;
  readonly sidecar: boolean;
  readonly weight: number;
  readonly state: string;
}

export interface OutboundExplanation {
  readonly kind: "outbound";
  readonly destination: string;
  readonly localIdentity: string | null;
  readonly decision: "mesh" | "passthrough" | "deny";
  /** The close reason a refused connection gets (`no_route`, `loop`, `unknown_service`, ...). */
  readonly reason?: string;
  readonly detail: string;
  readonly service?: {
    readonly name: string;
    readonly port: number;
    readonly targetPort: number;
    readonly identity: string;
    readonly balancer: string;
    readonly source: string | undefined;
    readonly retries: { readonly attempts: number; readonly deadlineMs: number };
  };
  readonly transport: string;
  readonly endpoints: readonly ExplainedEndpoint[];
  readonly recent: readonly EndedConnection[];
}

export interface InboundExplanation {
  readonly kind: "inbound";
  readonly peerIdentity: string;
  readonly port: number;
  readonly localIdentity: string | null;
  readonly decision: "allow" | "deny";
  readonly reason?: string;
  readonly why?: string;
  readonly detail: string;
  /** The rule(s) that decided, as the `rule` label of `weft_policy_*_total` names them. */
  readonly rule: string;
  readonly rules: readonly {
    readonly name: string;
    readonly ports: readonly number[] | "all";
    readonly allow: readonly string[];
  }[];
  readonly policyDefault: string;
  readonly app?: { readonly address: string; readonly port: number; readonly proxyProtocol: string };
  readonly recent: readonly EndedConnection[];
}

function isDiscovery(r: RouteTable | Discovery): r is Discovery {
  return typeof (r as Discovery).describe === "function";
}

/** Outbound: where a connection to `dst` (or through the explicit listener of `service`) would go. */
export function explainOutbound(
  ctx: ExplainContext,
  target: { readonly dst: OrigDstAddr } | { readonly service: string; readonly port?: number },
): OutboundExplanation {
  const c = ctx.config;
  const route =
    "dst" in target
      ? decideOutbound({ dst: target.dst, loop: isLoop(target.dst, ctx.listenerAddrs) }, ctx.routes, {
          outboundPolicy: c.outboundPolicy,
        })
      : decideOutbound({ explicit: { service: target.service, port: target.port } }, ctx.routes, {
          outboundPolicy: c.outboundPolicy,
        });
  const destination =
    "dst" in target
      ? formatAddr(target.dst.address, target.dst.port)
      : `service ${target.service}${target.port === undefined ? "" : ` port ${target.port}`}`;
  const base = { kind: "outbound" as const, destination, localIdentity: ctx.localIdentity ?? null };
  const dstKey = "dst" in target ? destination : undefined;
  if (route.kind === "deny") {
    return {
      ...base,
      decision: "deny",
      reason: route.reason,
      detail: `refused with a reset: ${route.detail}`,
      transport: "none",
      endpoints: [],
      recent: ctx.tracker.recent((e) => e.dst === dstKey && e.reason === route.reason),
    };
  }
  if (route.kind === "passthrough") {
    return {
      ...base,
      decision: "passthrough",
      detail: `no service owns ${destination}; outboundPolicy is allow-any, so it passes through in plaintext (no mTLS, no identity)`,
      transport: "plaintext",
      endpoints: [],
      recent: ctx.tracker.recent((e) => e.dst === dstKey),
    };
  }
  const { service, servicePort, targetPort } = route.target;
  const status = isDiscovery(ctx.routes)
    ? ctx.routes.describe().find((s) => s.name === service.name)
    : undefined;
  const endpoints = explainEndpoints(service.endpoints, status?.endpoints ?? []);
  const usable = endpoints.filter((e) => e.state === "healthy" || e.state === "probation").length;
  const detail =
    endpoints.length === 0
      ? `service ${service.name} has no endpoints: connections are refused (no_endpoint)`
      : usable === 0
        ? `service ${service.name}: every endpoint is ejected or failing health checks; connections are spread over all of them (panic mode)`
        : `service ${service.name}: ${usable} of ${endpoints.length} endpoints take new connections (${service.balancer})`;
  return {
    ...base,
    decision: "mesh",
    detail,
    service: {
      name: service.name,
      port: servicePort,
      targetPort,
      identity: service.identity,
      balancer: service.balancer,
      source: status?.source,
      retries: service.retries,
    },
    transport:
      c.upstream.transport === "pooled"
        ? "mTLS, pooled HTTP/2 session per peer sidecar"
        : "mTLS, one TLS connection per app connection",
    endpoints,
    recent: ctx.tracker.recent(
      (e) =>
        (e.direction === "outbound" || e.direction === "explicit") &&
        (e.dst === dstKey || e.service === service.name),
    ),
  };
}

/** A service's endpoints with the state discovery holds for each (healthy when it holds none). */
function explainEndpoints(
  endpoints: readonly Endpoint[],
  states: readonly EndpointStatus[],
): ExplainedEndpoint[] {
  const byKey = new Map(states.map((e) => [e.key, e]));
  return endpoints.map((e) => ({
    ...byKey.get(e.key),
    key: e.key,
    address: e.address,
    port: e.port,
    tunnelPort: e.tunnelPort,
    identity: e.identity,
    sidecar: e.sidecar,
    weight: e.weight,
    state: byKey.get(e.key)?.state ?? "healthy",
  }));
}

/** Inbound: would `peer` be let through to local `port`, by which rule, and to where. */
export function explainInbound(ctx: ExplainContext, peer: SpiffeId, port: number): InboundExplanation {
  const d = decideInbound(peer, port, ctx.inbound);
  const peerIdentity = peer.toString();
  const policy = ctx.inbound.policy;
  const rules = policy.rules.map((r, i) => ({
    name: r.name ?? `rules[${i}]`,
    ports: r.ports ?? ("all" as const),
    allow: r.allow,
  }));
  const base = {
    kind: "inbound" as const,
    peerIdentity,
    port,
    localIdentity: ctx.localIdentity ?? null,
    rule: d.rule,
    rules,
    policyDefault: policy.default,
    recent: ctx.tracker.recent(
      (e) =>
        e.direction === "inbound" &&
        e.peerIdentity === peerIdentity &&
        (e.dst?.endsWith(`:${port}`) ?? false),
    ),
  };
  if (d.kind === "deny") {
    return { ...base, decision: "deny", reason: d.reason, why: d.why, detail: d.detail };
  }
  const address = ctx.config.inbound.appAddress;
  return {
    ...base,
    decision: "allow",
    detail: `${peer} may reach port ${port}`,
    app: { address, port, proxyProtocol: d.proxyProtocol },
  };
}

/** `/explain` on the admin port: the query's question answered, or 400 with what to ask instead. */
export function explainQuery(ctx: ExplainContext, q: URLSearchParams): { status: number; body: unknown } {
  const bad = (message: string) => ({ status: 400, body: { error: message } });
  const portParam = q.get("port");
  // Decimal digits only: Number() would also take "1e3", "0x50" and " 80".
  const port = portParam === null ? undefined : /^\d{1,5}$/.test(portParam) ? Number(portParam) : Number.NaN;
  if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
    return bad(`port "${portParam}" is not a port (1-65535)`);
  }
  const peerParam = q.get("peer");
  if (peerParam !== null) {
    const peer = parsePeer(peerParam);
    if (!peer) return bad(`peer "${peerParam}" is not a SPIFFE ID`);
    if (port === undefined) return bad("peer needs port: /explain?peer=spiffe://...&port=8080");
    return { status: 200, body: explainInbound(ctx, peer, port) };
  }
  const service = q.get("service");
  if (service !== null)
    return { status: 200, body: explainOutbound(ctx, { service, ...(port ? { port } : {}) }) };
  const dst = q.get("dst");
  if (dst !== null) {
    const at = parseAddrPort(dst);
    if (!at || at.port < 1) {
      return bad(`dst "${dst}" is not address:port (198.18.0.10:8080 or [fd00::1]:8080)`);
    }
    return { status: 200, body: explainOutbound(ctx, { dst: origDstAddr(at) }) };
  }
  return bad("ask /explain?dst=address:port, ?service=name[&port=n] or ?peer=spiffe://...&port=n");
}

/** The SPIFFE ID a `peer` query names, or undefined when it is not one. */
function parsePeer(text: string): SpiffeId | undefined {
  try {
    return SpiffeId.parse(text);
  } catch {
    return undefined;
  }
}
