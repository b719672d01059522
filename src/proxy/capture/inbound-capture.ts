/**
 * The inbound capture port (15006): plaintext that reached one of the app's ports from outside the mesh
 * (iptables PREROUTING redirects it here). In `strict` mode it is refused with a reset; in `permissive`
 * mode (for migrations) it is passed to the app at its original destination (address and port) under
 * the same rules as a peer's connection: never a port of the sidecar, only `inbound.ports` when listed,
 * only an address of this pod and never loopback. Counted either way in
 * `weft_inbound_plaintext_total{mode,decision}`, and each connection gets its access-log line.
 */
import type { Socket } from "node:net";
import type { Clock } from "../../core/clock.ts";
import { isWeftError, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { Direction, WeftMetrics } from "../../core/metrics.ts";
import { noop } from "../../core/noop.ts";
import { formatAddr } from "../../discovery/types.ts";
import {
  clientOf,
  type EndpointAddr,
  endpointAddr,
  type ListenAddr,
  type OrigDstAddr,
} from "../addresses.ts";
import { ConnectionCloser } from "../connection/lifecycle.ts";
import {
  type CloseReason,
  type ConnectionDeps,
  ConnectionRecord,
  containFailure,
} from "../connection/record.ts";
import { resetSide } from "../connection/splice.ts";
import { decideAppAddress } from "../outbound/route.ts";
import { connectWithDeadline } from "../transport/connector.ts";
import type { LocalAddressSet } from "../tunnel/local-addresses.ts";
import { isLoop, type OriginalDstResolver } from "./original-dst.ts";

export interface InboundCaptureOptions {
  readonly mode: "strict" | "permissive";
  readonly originalDst: OriginalDstResolver;
  readonly appAddress: string;
  readonly listenerAddrs: () => readonly ListenAddr[];
  readonly reservedPorts: readonly number[];
  /** `inbound.ports`: when any are listed, plaintext reaches those ports only (as peers do). */
  readonly ports: () => readonly { readonly port: number }[];
  /** This pod's addresses: plaintext is passed to its original destination only if it is one of them. */
  readonly localAddresses: LocalAddressSet;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  readonly connection: ConnectionDeps;
  readonly timeouts: { readonly connect: number; readonly idle: number; readonly halfClose: number };
}

export class InboundCaptureHandler {
  /** What its connections (and refusals) are counted as. */
  readonly direction: Direction = "inbound_plaintext";

  constructor(private readonly options: InboundCaptureOptions) {}

  readonly handle = (client: Socket): void => {
    const o = this.options;
    client.on("error", noop);
    const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), this.direction);
    rec.src = clientOf(client);
    let dst: OrigDstAddr;
    try {
      dst = o.originalDst.resolve(client);
    } catch (err) {
      resetSide({ stream: client, raw: client });
      rec.finish("original_dst_failed", err);
      return;
    }
    rec.dst = dst;
    rec.open("plaintext");
    if (o.reservedPorts.includes(dst.port) || isLoop(dst, o.listenerAddrs())) {
      resetSide({ stream: client, raw: client });
      rec.finish("loop", new WeftError("E_LOOP", `${dst.address}:${dst.port} is the proxy itself`));
      return;
    }
    if (o.mode === "strict") {
      o.metrics.inboundPlaintext.inc({ mode: "strict", decision: "refused" });
      o.logger.debug({ conn_id: rec.id, src: rec.src, port: dst.port }, "plaintext refused (strict mode)");
      resetSide({ stream: client, raw: client });
      rec.finish("plaintext_refused");
      return;
    }
    // The same rules as for a peer: the inbound.ports allow-list, and the app is reached at the address
    // the connection was sent to (never 127.0.0.1: a service bound to loopback is not exposed).
    const ports = o.ports();
    const refusal: { reason: CloseReason; detail: string } | undefined =
      ports.length > 0 && !ports.some((p) => p.port === dst.port)
        ? { reason: "port_not_allowed", detail: `port ${dst.port} is not one of inbound.ports` }
        : undefined;
    const where = refusal
      ? undefined
      : decideAppAddress(dst.address, { mode: "original-destination", local: o.localAddresses });
    const denied = refusal ?? (where?.kind === "deny" ? where : undefined);
    if (denied || !where || where.kind === "deny") {
      const d = denied ?? { reason: "destination_not_local" as const, detail: "" };
      o.metrics.inboundPlaintext.inc({ mode: "permissive", decision: "refused" });
      o.metrics.inboundRefused.inc({ direction: "inbound_plaintext", reason: d.reason });
      o.logger.debug({ conn_id: rec.id, src: rec.src, port: dst.port, reason: d.reason }, d.detail);
      resetSide({ stream: client, raw: client });
      rec.finish(d.reason, new WeftError("E_POLICY_DENIED", d.detail));
      return;
    }
    o.metrics.inboundPlaintext.inc({ mode: "permissive", decision: "passed" });
    this.pass(rec, client, endpointAddr({ address: where.address, port: dst.port })).catch((err: unknown) =>
      containFailure(o.connection, err, {
        rec,
        reset: () => resetSide({ stream: client, raw: client }),
        component: "inbound",
      }),
    );
  };

  private async pass(rec: ConnectionRecord, client: Socket, target: EndpointAddr): Promise<void> {
    const o = this.options;
    const ctl = new AbortController();
    const closer = new ConnectionCloser(rec, (reason) => ctl.abort(new WeftError("E_CONNECT", reason)));
    rec.phase = "connecting";
    let app: Socket;
    try {
      app = await connectWithDeadline(target, {
        clock: o.clock,
        timeoutMs: o.timeouts.connect,
        signal: ctl.signal,
        other: client,
      });
    } catch (err) {
      resetSide({ stream: client, raw: client });
      const appReset = isWeftError(err) && err.reason === "connect_reset";
      rec.finish(
        closer.forced ??
          (client.destroyed ? "downstream_reset" : appReset ? "upstream_reset" : "app_connect_failed"),
        err,
      );
      return;
    }
    rec.endpoint = formatAddr(target.address, target.port);
    rec.phase = "streaming";
    closer.splice({ stream: client, raw: client }, { stream: app, raw: app }, o);
  }
}
