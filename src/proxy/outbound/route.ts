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
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import { normalizeAddress, type RouteTable, type RouteTarget } from "../../discovery/types.ts";
import type { OrigDstAddr } from "../addresses.ts";
import type { LocalAddressSet } from "../tunnel/local-addresses.ts";
import { mayReach, type PolicyConfig, type PolicyDenial } from "../tunnel/policy.ts";

export type OutboundDenyReason = "loop" | "no_route" | "unknown_service" | "unknown_port";

export type OutboundRoute =
  | { readonly kind: "mesh"; readonly target: RouteTarget }
  | { readonly kind: "passthrough"; readonly dst: OrigDstAddr }
  | { readonly kind: "deny"; readonly reason: OutboundDenyReason; readonly detail: string };

export interface OutboundRequest {
  /** Transparent capture: the original destination the app connected to. */
  readonly dst?: OrigDstAddr;
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

/** Why a peer's connection was refused on the inbound side (also close reasons). */
export type InboundRefusal =
  | "policy_denied"
  | "forbidden_port"
  | "port_not_allowed"
  | "destination_not_local"
  | "loopback_destination";

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
      readonly reason: InboundRefusal;
      readonly why: PolicyDenial | "proxy_port" | "not_in_inbound_ports" | "not_local" | "loopback";
      readonly detail: string;
      /** The policy rule(s) that denied, or `proxy_port`. */
      readonly rule: string;
    };

export interface InboundSettings {
  readonly trustDomain: string;
  readonly policy: PolicyConfig;
  /**
   * The app's ports. When any are listed, they are an allow-list: a peer (or permissive plaintext) may
   * reach those ports only. Each says whether the app wants a PROXY header.
   */
  readonly ports: readonly { readonly port: number; readonly proxyProtocol: "none" | "v1" | "v2" }[];
  /**
   * The sidecar's own ports (tunnel, admin, both captures, every explicit listener, the CA's port): a
   * peer may never be forwarded to them, whatever the address.
   */
  readonly reservedPorts: readonly number[];
}

/**
 * Decide whether `peer` may reach local `port`, and how to talk to the app there. The sidecar's own
 * ports first (a peer must never borrow the sidecar's listeners, and with them its identity), then the
 * `inbound.ports` allow-list, then policy.
 */
export function decideInbound(peer: SpiffeId, port: number, settings: InboundSettings): InboundDecision {
  if (settings.reservedPorts.includes(port)) {
    return {
      kind: "deny",
      reason: "forbidden_port",
      why: "proxy_port",
      detail: `port ${port} belongs to the proxy itself`,
      rule: "proxy_port",
    };
  }
  const p = settings.ports.find((x) => x.port === port);
  if (settings.ports.length > 0 && !p) {
    return {
      kind: "deny",
      reason: "port_not_allowed",
      why: "not_in_inbound_ports",
      detail: `port ${port} is not one of inbound.ports (${settings.ports.map((x) => x.port).join(", ")})`,
      rule: "inbound_ports",
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
  return { kind: "allow", port, proxyProtocol: p?.proxyProtocol ?? "none", rule: d.rule };
}

/** Where the app is reached: `app-address` (explicit mode) or the original destination (transparent). */
export type AppTarget =
  | { readonly mode: "app-address"; readonly appAddress: string }
  | { readonly mode: "original-destination"; readonly local: LocalAddressSet };

export type AppAddressDecision =
  | { readonly kind: "allow"; readonly address: string }
  | {
      readonly kind: "deny";
      readonly reason: "destination_not_local" | "loopback_destination";
      readonly why: "not_local" | "loopback";
      readonly detail: string;
      readonly rule: "not_local" | "loopback";
    };

/**
 * The address to dial the app at for a connection that was sent to `destination`. In transparent mode
 * (Istio's behaviour since 1.10) that is the original destination, which must be one of this pod's own
 * addresses and not loopback: a service bound to 127.0.0.1 is not reachable through the mesh, and the
 * sidecar never dials elsewhere on a peer's behalf. In explicit mode it is `inbound.appAddress`.
 */
export function decideAppAddress(destination: string, target: AppTarget): AppAddressDecision {
  if (target.mode === "app-address") return { kind: "allow", address: target.appAddress };
  const address = normalizeAddress(destination);
  if (isLoopback(address)) {
    return {
      kind: "deny",
      reason: "loopback_destination",
      why: "loopback",
      rule: "loopback",
      detail: `${address} is loopback: services bound to loopback are not reachable through the mesh`,
    };
  }
  if (!target.local.has(address)) {
    return {
      kind: "deny",
      reason: "destination_not_local",
      why: "not_local",
      rule: "not_local",
      detail: `${address} is not an address of this pod`,
    };
  }
  return { kind: "allow", address };
}

/** The app target of a sidecar: transparent mode dials the original destination, explicit mode appAddress. */
export function appTarget(
  transparent: boolean | undefined,
  appAddress: string,
  local: LocalAddressSet | undefined,
): AppTarget {
  return transparent && local ? { mode: "original-destination", local } : { mode: "app-address", appAddress };
}

function isLoopback(address: string): boolean {
  return address === "::1" || /^127\./.test(address);
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
