/**
 * The inbound capture port (15006): plaintext that reached one of the app's ports from outside the mesh
 * (iptables PREROUTING redirects it here). In `strict` mode it is refused with a reset; in `permissive`
 * mode (for migrations) it is passed to the app on its original port. Counted either way in
 * `weft_inbound_plaintext_total{mode,decision}`, and each connection gets its access-log line.
 */
import type { Socket } from "node:net";
import type { Clock } from "../../core/clock.ts";
import { WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import { normalizeAddress, type SocketAddr } from "../../discovery/types.ts";
import {
  type CloseReason,
  type ConnectionDeps,
  ConnectionRecord,
  spliceConnection,
} from "../connection/record.ts";
import { resetSide } from "../connection/splice.ts";
import { connectTcp } from "../transport/connector.ts";
import { isLoop, type OriginalDstResolver } from "./original-dst.ts";

export interface InboundCaptureOptions {
  readonly mode: "strict" | "permissive";
  readonly originalDst: OriginalDstResolver;
  readonly appAddress: string;
  readonly listenerAddrs: () => readonly SocketAddr[];
  readonly reservedPorts: readonly number[];
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  readonly connection: ConnectionDeps;
  readonly timeouts: { readonly connect: number; readonly idle: number; readonly halfClose: number };
}

export class InboundCaptureHandler {
  constructor(private readonly options: InboundCaptureOptions) {}

  readonly handle = (client: Socket): void => {
    const o = this.options;
    client.on("error", noop);
    const rec = new ConnectionRecord(o.connection, o.connection.tracker.nextId(), "inbound_plaintext");
    rec.src = { address: normalizeAddress(client.remoteAddress ?? ""), port: client.remotePort ?? 0 };
    let dst: SocketAddr;
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
    o.metrics.inboundPlaintext.inc({ mode: "permissive", decision: "passed" });
    void this.pass(rec, client, dst.port);
  };

  private async pass(rec: ConnectionRecord, client: Socket, port: number): Promise<void> {
    const o = this.options;
    const ctl = new AbortController();
    let forced: CloseReason | undefined;
    rec.closer = (reason) => {
      forced = reason;
      ctl.abort(new WeftError("E_CONNECT", reason));
    };
    const timer = o.clock.setTimeout(
      () => ctl.abort(new WeftError("E_TIMEOUT", "connect deadline")),
      o.timeouts.connect,
    );
    const onGone = (): void => ctl.abort(new WeftError("E_CONNECT", "client went away"));
    client.once("close", onGone);
    rec.phase = "connecting";
    let app: Socket;
    try {
      app = await connectTcp({ address: o.appAddress, port }, ctl.signal);
    } catch (err) {
      resetSide({ stream: client, raw: client });
      rec.finish(forced ?? (client.destroyed ? "downstream_reset" : "app_connect_failed"), err);
      return;
    } finally {
      timer.cancel();
      client.removeListener("close", onGone);
    }
    rec.endpoint = `${o.appAddress}:${port}`;
    rec.phase = "streaming";
    const splice = spliceConnection(
      rec,
      { stream: client, raw: client },
      { stream: app, raw: app },
      o,
      () => forced,
    );
    rec.closer = (reason) => {
      forced = reason;
      splice.abort("aborted");
    };
  }
}

function noop(): void {}
