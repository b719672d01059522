/**
 * The routing decisions of the data plane, separate from the I/O that carries them out. Pure functions
 * of their inputs (the route table is read, never changed), tested as tables in test/unit/route.test.ts.
 *
 * - `decideOutbound`: where does a connection that an app opened go? To a mesh service (then the
 *   outbound path picks an endpoint), straight through in plaintext (unknown destination, `allow-any`),
 *   or nowhere, with a reason.
 * - `decideInbound`: may the peer identity that came through the tunnel reach this local port, and does
 *   the app want a PROXY header?
 */
import type { RouteTable, RouteTarget, SocketAddr } from "../../discovery/types.ts";
import { mayReach, type PolicyConfig, type PolicyDenial } from "../tunnel/policy.ts";

export type OutboundDenyReason = "loop" | "no_route" | "unknown_service" | "unknown_port";

export type OutboundRoute =
  | { readonly kind: "mesh"; readonly target: RouteTarget }
  | { readonly kind: "passthrough"; readonly dst: SocketAddr }
  | { readonly kind: "deny"; readonly reason: OutboundDenyReason; readonly detail: string };

export interface OutboundRequest {
  /** Transparent capture: the original destination the app connected to. */
  readonly dst?: SocketAddr;
  /** Explicit listener: the service it names, and which of its ports (default the first). */
  readonly explicit?: { readonly service: string; readonly port?: number };
  /** Whether `dst` points back at one of the proxy's own listeners (computed by the caller). */
  readonly loop?: boolean;
}

export interface OutboundSettings {
  readonly outboundPolicy: "allow-any" | "registry-only";
}

/** Decide where an outbound connection goes. */
export function decideOutbound(
  req: OutboundRequest,
  table: Pick<RouteTable, "resolve" | "service">,
  settings: OutboundSettings,
): OutboundRoute {
  if (req.explicit) {
    const service = table.service(req.explicit.service);
    if (!service) {
      return { kind: "deny", reason: "unknown_service", detail: `no service named ${req.explicit.service}` };
    }
    const sp =
      req.explicit.port === undefined
        ? service.ports[0]
        : service.ports.find((p) => p.port === req.explicit?.port);
    if (!sp) {
      return {
        kind: "deny",
        reason: "unknown_port",
        detail: `service ${service.name} has no port ${req.explicit.port ?? "(none declared)"}`,
      };
    }
    return { kind: "mesh", target: { service, servicePort: sp.port, targetPort: sp.targetPort } };
  }
  const dst = req.dst;
  if (!dst) return { kind: "deny", reason: "no_route", detail: "no destination" };
  if (req.loop) {
    return { kind: "deny", reason: "loop", detail: `${dst.address}:${dst.port} is the proxy itself` };
  }
  const target = table.resolve(dst);
  if (target) return { kind: "mesh", target };
  if (settings.outboundPolicy === "allow-any") return { kind: "passthrough", dst };
  return {
    kind: "deny",
    reason: "no_route",
    detail: `no service owns ${dst.address}:${dst.port} and outboundPolicy is registry-only`,
  };
}

export type InboundDecision =
  | {
      readonly kind: "allow";
      readonly port: number;
      readonly proxyProtocol: "none" | "v1" | "v2";
      /** The policy rule that allowed (see `PolicyDecision`). */
      readonly rule: string;
    }
  | {
      readonly kind: "deny";
      readonly reason: "policy_denied" | "forbidden_port";
      readonly why: PolicyDenial | "proxy_port";
      readonly detail: string;
      /** The policy rule(s) that denied, or `proxy_port`. */
      readonly rule: string;
    };

export interface InboundSettings {
  readonly trustDomain: string;
  readonly policy: PolicyConfig;
  /** Per-port options for the app: which ports want a PROXY header. */
  readonly ports: readonly { readonly port: number; readonly proxyProtocol: "none" | "v1" | "v2" }[];
  /** The proxy's own ports (admin, tunnel, captures): a peer may never be forwarded to them. */
  readonly reservedPorts: readonly number[];
}

/** Decide whether `peer` may reach local `port`, and how to talk to the app there. */
export function decideInbound(peer: string, port: number, settings: InboundSettings): InboundDecision {
  if (settings.reservedPorts.includes(port)) {
    return {
      kind: "deny",
      reason: "forbidden_port",
      why: "proxy_port",
      detail: `port ${port} belongs to the proxy itself`,
      rule: "proxy_port",
    };
  }
  const d = mayReach(settings.policy, settings.trustDomain, peer, port);
  if (!d.allowed) {
    return {
      kind: "deny",
      reason: "policy_denied",
      why: d.why,
      detail: `${peer} may not reach port ${port}`,
      rule: d.rule,
    };
  }
  const p = settings.ports.find((x) => x.port === port);
  return { kind: "allow", port, proxyProtocol: p?.proxyProtocol ?? "none", rule: d.rule };
}

/**
 * The app port to name on a chosen endpoint (the PROXY header's destination port). An endpoint that
 * lists its own port overrides the target port of the service's first port (endpoints of one service
 * may listen on different ports); any other service port maps to its declared target port.
 */
export function endpointAppPort(target: RouteTarget, endpoint: { readonly port: number }): number {
  const first = target.service.ports[0];
  if (first && target.targetPort === first.targetPort) return endpoint.port;
  return target.targetPort;
}
