/**
 * The outbound life of one connection an app opened, top to bottom: the transparent capture port
 * (15001, original destination from SO_ORIGINAL_DST) and explicit listeners (`127.0.0.1:9001 ->
 * backend`) share it after the destination is known.
 *
 *   accept -> destination (original dst, or the explicit listener's service) -> route decision
 *     mesh:        pick an endpoint -> mTLS dial (the server must prove the service's identity)
 *                  -> PROXY v2 header (client address, endpoint address + app port, service TLV) and
 *                  the client's early bytes, in one write -> the peer's answer (it answers after its
 *                  app accepted; connect, handshake and answer share one deadline) -> on a failure or a
 *                  refusal report it, exclude that endpoint and try another with the same bytes, within
 *                  `Service.retries` (attempts and a deadline for all of them) -> splice
 *     passthrough: plain TCP to the original destination (unknown destination, `allow-any`) -> splice
 *     deny:        reset the client (loop, registry-only with no route, unknown service)
 *
 * The dial starts at once, before the client sends anything, so server-speaks-first protocols work.
 * The client's early bytes are read as they come and kept until a peer accepted them (early-data.ts):
 * at most `limits.earlyDataBytes`, beyond which TCP flow control holds the client, so a refused attempt
 * is retried on another endpoint with every byte and the answer adds no round trip.
 */
import { isIP, type Socket } from "node:net";
import type { Clock } from "../../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { Direction, WeftMetrics } from "../../core/metrics.ts";
import { noop } from "../../core/noop.ts";
import type { EndpointLease, RouteTable, RouteTarget } from "../../discovery/types.ts";
import {
  type ClientAddr,
  clientAddr,
  clientOf,
  endpointAddr,
  type ListenAddr,
  type OrigDstAddr,
  origDstAddr,
} from "../addresses.ts";
import { isLoop, type OriginalDstResolver } from "../capture/original-dst.ts";
import { CountedElsewhere, upstreamCloseReason } from "../connection/close-reasons.ts";
import { ConnectionCloser } from "../connection/lifecycle.ts";
import { type ConnectionDeps, ConnectionRecord, containFailure } from "../connection/record.ts";
import { resetSide, type Splice } from "../connection/splice.ts";
import { countsAgainstEndpoint, mayRetry, PEER_REASONS, type PeerReason } from "../transport/answer.ts";
import {
  type Connector,
  connectTcp,
  connectWithDeadline,
  NO_ANSWER,
  type Upstream,
} from "../transport/connector.ts";
import { encodeProxyV2, PP2_TYPE_WEFT_SERVICE } from "../transport/proxy-protocol.ts";
import { EarlyData } from "./early-data.ts";
import { decideOutbound, endpointAppPort, type OutboundRoute } from "./route.ts";

export interface OutboundOptions {
  /** `outbound` for the transparent capture port, `explicit` for a configured listener. */
  readonly kind: "outbound" | "explicit";
  /** Explicit listeners: the service (and port) they lead to. */
  readonly explicit?: { readonly service: string; readonly port?: number };
  /** Transparent capture: how to read the original destination. */
  readonly originalDst?: OriginalDstResolver;
  /** The proxy's own listening addresses, to refuse connections that would loop into it. */
  readonly listenerAddrs: () => readonly ListenAddr[];
  readonly routes: RouteTable;
  readonly connector: Connector;
  readonly outboundPolicy: "allow-any" | "registry-only";
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  readonly connection: ConnectionDeps;
  readonly timeouts: { readonly connect: number; readonly idle: number; readonly halfClose: number };
  /** Client bytes kept while the connection is placed (`limits.earlyDataBytes`). */
  readonly earlyDataBytes: number;
}

/** Handles connections accepted on an outbound or explicit listener; `handle` is `onConnection`. */
export class OutboundHandler {
  /** What its connections (and refusals) are counted as: `outbound` or `explicit`. */
  readonly direction: Direction;

  constructor(private readonly options: OutboundOptions) {
    this.direction = options.kind;
  }

  readonly handle = (client: Socket): void => {
    const o = this.options;
    client.on("error", noop);
    try {
      this.accept(client);
    } catch (err) {
      containFailure(o.connection, err, {
        reset: () => resetSide({ stream: client, raw: client }),
        direction: o.kind,
        component: "outbound",
      });
    }
  };

  private accept(client: Socket): void {
    const o = this.options;
    if (client.remoteAddress === undefined || client.destroyed) {
      // Reset by the app before we accepted it (health checkers and port scanners close with RST): the
      // kernel no longer knows the peer, and there is nobody to dial for.
      const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), o.kind);
      resetSide({ stream: client, raw: client });
      rec.finish("downstream_reset");
      return;
    }
    const src = clientOf(client);
    let route: OutboundRoute;
    let dst: OrigDstAddr | undefined;
    try {
      if (o.kind === "explicit") {
        route = decideOutbound({ explicit: o.explicit }, o.routes, o);
      } else {
        if (!o.originalDst) throw new WeftError("E_ORIGINAL_DST", "no original-destination resolver");
        dst = o.originalDst.resolve(client);
        route = decideOutbound({ dst, loop: isLoop(dst, o.listenerAddrs()) }, o.routes, o);
      }
    } catch (err) {
      const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), o.kind);
      rec.src = src;
      resetSide({ stream: client, raw: client });
      rec.finish("original_dst_failed", err);
      return;
    }
    const direction = route.kind === "passthrough" ? "passthrough" : o.kind;
    const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), direction);
    rec.src = src;
    rec.dst = dst;
    rec.phase = "routing";
    if (route.kind === "deny") {
      o.logger.debug({ conn_id: rec.id, reason: route.reason, detail: route.detail }, "outbound refused");
      resetSide({ stream: client, raw: client });
      rec.finish(
        route.reason,
        new WeftError(route.reason === "loop" ? "E_LOOP" : "E_NO_ROUTE", route.detail),
      );
      return;
    }
    const conn = new OutboundConnection(o, rec, client);
    const run = route.kind === "passthrough" ? conn.passthrough(route.dst) : conn.mesh(route.target);
    run.catch((err: unknown) =>
      containFailure(o.connection, err, { rec, reset: () => conn.resetAll(), component: "outbound" }),
    );
  }
}

/** The part of one outbound connection's life that waits on the network. */
class OutboundConnection {
  private readonly controller = new AbortController();
  private splice: Splice | undefined;
  private readonly closer: ConnectionCloser;
  private lease: EndpointLease | undefined;
  private upstream: Upstream | undefined;

  constructor(
    private readonly o: OutboundOptions,
    private readonly rec: ConnectionRecord,
    private readonly client: Socket,
  ) {
    this.closer = new ConnectionCloser(rec, (reason) =>
      this.controller.abort(new WeftError("E_CONNECT", `connection ${reason}`)),
    );
    // A client that resets while we dial: stop dialling.
    client.on("error", this.onClientGone);
    client.once("close", this.onClientGone);
  }

  private readonly onClientGone = (): void => {
    if (!this.splice) this.controller.abort(new WeftError("E_CONNECT", "client went away"));
  };

  /** Reset both sides now, whatever state the connection is in (the internal-error path). */
  resetAll(): void {
    this.controller.abort(new WeftError("E_CONNECT", "internal error"));
    if (this.splice) this.splice.abort("aborted");
    resetSide({ stream: this.client, raw: this.client });
    if (this.upstream) resetSide(this.upstream.side);
  }

  async passthrough(dst: OrigDstAddr): Promise<void> {
    const { o, rec } = this;
    rec.open("passthrough");
    rec.endpoint = `${dst.address}:${dst.port}`;
    rec.phase = "connecting";
    const t0 = o.clock.monotonic();
    try {
      // Passing through, the original destination is the endpoint.
      const up = await connectWithDeadline(endpointAddr(dst), {
        clock: o.clock,
        timeoutMs: o.timeouts.connect,
        signal: this.controller.signal,
      });
      rec.connectMs = o.clock.monotonic() - t0;
      this.startSplice({
        side: { stream: up, raw: up },
        peer: undefined,
        connectMs: rec.connectMs,
        handshakeMs: undefined,
        resumed: false,
        tunnel: false,
        answer: NO_ANSWER,
      });
    } catch (err) {
      this.failed(err);
    }
  }

  async mesh(target: RouteTarget): Promise<void> {
    const { o, rec, client } = this;
    const service = target.service;
    rec.open(service.name, { expected: service.identity });
    rec.phase = "connecting";
    const overall = o.clock.setTimeout(
      () => this.controller.abort(new WeftError("E_TIMEOUT", "retry deadline")),
      service.retries.deadlineMs,
    );
    // The client's first bytes go with the first attempt and are kept until a peer accepts them.
    const early = new EarlyData(client, o.earlyDataBytes);
    early.start();
    const exclude = new Set<string>();
    let lastErr: unknown;
    let upstream: Upstream | undefined;
    try {
      for (
        let attempt = 1;
        attempt <= service.retries.attempts && !this.controller.signal.aborted;
        attempt++
      ) {
        const lease = o.routes.pick(service.name, { clientAddress: rec.src?.address ?? "", exclude });
        if (!lease) {
          if (attempt === 1)
            lastErr = new WeftError("E_NO_ROUTE", `service ${service.name} has no endpoint`, {
              reason: "no_endpoint",
            });
          break;
        }
        if (attempt > 1) o.metrics.upstreamConnectRetries.inc({ service: service.name });
        const attemptCtl = new AbortController();
        const onOuter = (): void => attemptCtl.abort(this.controller.signal.reason);
        this.controller.signal.addEventListener("abort", onOuter, { once: true });
        // One deadline for the connect, the handshake and the peer's answer.
        const timer = o.clock.setTimeout(
          () => attemptCtl.abort(new WeftError("E_TIMEOUT", "connect deadline")),
          o.timeouts.connect,
        );
        try {
          upstream = await this.attempt(target, lease, early, attemptCtl.signal);
          this.lease = lease;
          break;
        } catch (err) {
          lastErr = err;
          early.detach();
          const reason = this.attemptFailed(err, lease, service.name, { attempt, earlyBytes: early.bytes });
          exclude.add(lease.endpoint.key);
          if (!mayRetry(reason)) break;
        } finally {
          timer.cancel();
          this.controller.signal.removeEventListener("abort", onOuter);
        }
      }
    } finally {
      overall.cancel();
    }
    if (!upstream) {
      early.release();
      this.failed(lastErr ?? this.controller.signal.reason);
      return;
    }
    // The early bytes count as received from the client, under the peer that accepted them.
    rec.setPeer(upstream.peer);
    early.release(rec);
    if (client.destroyed || this.controller.signal.aborted) {
      resetSide(upstream.side);
      this.failed(this.controller.signal.reason ?? new WeftError("E_CONNECT", "client went away"));
      return;
    }
    this.upstream = upstream;
    this.startSplice(upstream);
  }

  /**
   * A failed attempt: counted against its endpoint (once, however many connections shared it; not at
   * all when the client gave up), logged, its lease released. Returns the failure's reason.
   */
  private attemptFailed(
    err: unknown,
    lease: EndpointLease,
    service: string,
    at: { attempt: number; earlyBytes: number },
  ): string {
    const reason = isWeftError(err) ? err.reason : "connect_failed";
    if (reason !== "aborted") {
      // Many connections may share one failure (a pooled session opening): it is counted once.
      const alreadyCounted = err instanceof CountedElsewhere;
      if (!alreadyCounted) countFailure(this.o, lease, service, reason);
      this.o.logger.debug(
        {
          conn_id: this.rec.id,
          endpoint: lease.endpoint.key,
          attempt: at.attempt,
          reason,
          already_counted: alreadyCounted,
          early_bytes: at.earlyBytes,
          err: errorMessage(err),
        },
        "upstream attempt failed",
      );
    }
    lease.release();
    return reason;
  }

  /**
   * One attempt on one endpoint: connect (mTLS to its sidecar, or plain TCP to an endpoint without
   * one), send the PROXY header and the early bytes in one write, and wait for the peer's answer.
   * Resolves with the accepted upstream; on a failure after the connect, what was opened is reset.
   */
  private async attempt(
    target: RouteTarget,
    lease: EndpointLease,
    early: EarlyData,
    signal: AbortSignal,
  ): Promise<Upstream> {
    const { o, rec } = this;
    const ep = lease.endpoint;
    const service = target.service;
    // The access log names the endpoint of the last attempt, also when it failed.
    rec.endpoint = ep.key;
    const t0 = o.clock.monotonic();
    const app = endpointAddr({ address: ep.address, port: endpointAppPort(target, ep) });
    let upstream: Upstream;
    if (ep.sidecar) {
      upstream = await o.connector.connect(
        { endpoint: ep, expectedIdentity: ep.identity, reportLost: lostReporter(o, lease, service.name) },
        signal,
      );
    } else {
      const s = await connectTcp(app, signal);
      upstream = {
        side: { stream: s, raw: s },
        peer: undefined,
        connectMs: o.clock.monotonic() - t0,
        handshakeMs: undefined,
        resumed: false,
        tunnel: false,
        answer: NO_ANSWER,
      };
    }
    try {
      // Only sidecars get a PROXY header; an endpoint without one gets the app's bytes alone.
      const preamble = upstream.tunnel
        ? encodeProxyV2({
            command: "PROXY",
            source: sourceFor(rec.src, ep.address),
            // For the peer, the endpoint chosen here is where the client was going.
            destination: origDstAddr(app),
            tlvs: [{ type: PP2_TYPE_WEFT_SERVICE, value: Buffer.from(service.name, "utf8") }],
          })
        : undefined;
      early.attach(upstream.side.stream, preamble, upstream.side.framed);
      await upstream.answer(signal);
    } catch (err) {
      resetSide(upstream.side);
      throw err;
    }
    const ms = o.clock.monotonic() - t0;
    lease.reportSuccess(ms);
    o.metrics.upstreamConnectDuration.observe({ service: service.name }, ms / 1000);
    rec.connectMs = upstream.connectMs;
    rec.handshakeMs = upstream.handshakeMs;
    rec.tlsResumed = upstream.handshakeMs === undefined ? undefined : upstream.resumed;
    return upstream;
  }

  private startSplice(up: Upstream): void {
    const { o, rec, client } = this;
    client.removeListener("error", this.onClientGone);
    client.removeListener("close", this.onClientGone);
    rec.setPeer(up.peer);
    rec.phase = "streaming";
    this.splice = this.closer.splice({ stream: client, raw: client }, up.side, o, () =>
      this.lease?.release(),
    );
  }

  private failed(err: unknown): void {
    const { rec, client } = this;
    resetSide({ stream: client, raw: client });
    rec.finish(this.closer.forced ?? upstreamCloseReason(err, client.destroyed), err);
  }
}

/**
 * One failed attempt on the lease's endpoint: `weft_upstream_connect_failures_total`, and a failure for
 * outlier detection unless the peer refused by policy (answer.ts `countsAgainstEndpoint`).
 */
function countFailure(o: OutboundOptions, lease: EndpointLease, service: string, reason: string): void {
  const peer = (PEER_REASONS as readonly string[]).includes(reason);
  if (!peer || countsAgainstEndpoint(reason as PeerReason)) lease.reportFailure(reason);
  o.metrics.upstreamConnectFailures.inc({ service, endpoint: lease.endpoint.key, reason });
}

/**
 * For a pooled session this connection may open: its later death (keepalive) is one failure of the
 * endpoint. Built here, outside the connection's closures, so a session keeps nothing else alive.
 */
function lostReporter(o: OutboundOptions, lease: EndpointLease, service: string): (err: WeftError) => void {
  return (err) => countFailure(o, lease, service, err.reason);
}

/**
 * The client address for the tunnel's PROXY header. A PROXY header names one address family for both
 * ends: a client whose family differs from the endpoint's (an IPv6 client of an explicit listener in
 * front of an IPv4 endpoint) is named by the unspecified address of the endpoint's family, its port kept.
 */
export function sourceFor(src: ClientAddr | undefined, endpointAddress: string): ClientAddr {
  const want = isIP(endpointAddress) === 6 ? 6 : 4;
  const unspecified = clientAddr({ address: want === 6 ? "::" : "0.0.0.0", port: src?.port ?? 0 });
  if (!src || isIP(src.address) !== want) return unspecified;
  return src;
}
