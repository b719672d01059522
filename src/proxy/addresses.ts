/**
 * The roles an address plays in the proxy, as types (linkerd2-proxy's `addrs.rs`): one `SocketAddr`
 * shape, branded per role, so the compiler refuses one role where another is meant (an endpoint where
 * the original destination is expected). Each role has one constructor, called where the role is born;
 * reading an address (`.address`, `.port`, `formatAddr`) needs no conversion.
 *
 * - `ClientAddr`: the downstream client: an accepted socket's peer, or a PROXY header's source.
 * - `OrigDstAddr`: where the client was going: SO_ORIGINAL_DST, a PROXY header's destination, the
 *   destination an `/explain?dst=` asks about.
 * - `EndpointAddr`: what a connection is dialled to and its record names as `endpoint`: a chosen
 *   endpoint's app address and port, the local app, or a passthrough's original destination.
 * - `ListenAddr`: where one of the proxy's own listeners is bound.
 */
import type { Socket } from "node:net";
import { normalizeAddress, type SocketAddr } from "../discovery/types.ts";

declare const role: unique symbol;
type Role<R extends string> = SocketAddr & { readonly [role]: R };

export type ClientAddr = Role<"client">;
export type OrigDstAddr = Role<"origDst">;
export type EndpointAddr = Role<"endpoint">;
export type ListenAddr = Role<"listen">;

export function clientAddr(a: SocketAddr): ClientAddr {
  return a as ClientAddr;
}

export function origDstAddr(a: SocketAddr): OrigDstAddr {
  return a as OrigDstAddr;
}

export function endpointAddr(a: SocketAddr): EndpointAddr {
  return a as EndpointAddr;
}

export function listenAddr(a: SocketAddr): ListenAddr {
  return a as ListenAddr;
}

/** The client of an accepted socket (a dual-stack listener's IPv4-mapped prefix stripped). */
export function clientOf(socket: Socket): ClientAddr {
  return clientAddr({ address: normalizeAddress(socket.remoteAddress ?? ""), port: socket.remotePort ?? 0 });
}
