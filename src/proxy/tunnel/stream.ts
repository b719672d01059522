/**
 * One tunnel stream after the peer is verified, whether a whole TLS connection (`weft/1..3`) or one
 * CONNECT stream of a pooled session (`h2`): PROXY header -> policy -> app -> splice, and how the stream
 * answers its client (answer.ts): once, after the app accepted, or with the refusal.
 */
import http2 from "node:http2";
import type { Socket } from "node:net";
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import type { Clock } from "../../core/clock.ts";
import { isWeftError, WeftError } from "../../core/errors.ts";
import { noop } from "../../core/noop.ts";
import { formatAddr } from "../../discovery/types.ts";
import { endpointAddr } from "../addresses.ts";
import { proxyHeaderCloseReason } from "../connection/close-reasons.ts";
import { ConnectionCloser } from "../connection/lifecycle.ts";
import { type CloseReason, type ConnectionRecord, containFailure } from "../connection/record.ts";
import { resetSide, type Splice, type SpliceSide } from "../connection/splice.ts";
import { appTarget, decideAppAddress, decideInbound, type InboundSettings } from "../outbound/route.ts";
import { encodeStatus, type Refusal, refusalHeaders } from "../transport/answer.ts";
import { connectWithDeadline } from "../transport/connector.ts";
import {
  encodeProxyV1,
  encodeProxyV2,
  type ParsedProxyHeader,
  PP2_TYPE_WEFT_SERVICE,
  readProxyHeader,
} from "../transport/proxy-protocol.ts";
import type { TunnelOptions } from "./tunnel.ts";

/** A service name taken from the PROXY TLV only if it looks like one and this sidecar serves it. */
const SERVICE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A PROXY header that names both ends (not LOCAL). */
type AddressedHeader = ParsedProxyHeader & Required<Pick<ParsedProxyHeader, "source" | "destination">>;

/** Where the app is reached, and whether it gets a PROXY header of its own. */
interface AppTarget {
  readonly address: string;
  readonly port: number;
  readonly proxyProtocol: "none" | "v1" | "v2";
}

export class TunnelStream {
  private appSocket: Socket | undefined;
  private splice: Splice | undefined;
  private readonly closer: ConnectionCloser;

  constructor(
    private readonly o: TunnelOptions,
    private readonly rec: ConnectionRecord,
    private readonly down: SpliceSide,
    private readonly peer: SpiffeId,
    private readonly answer: TunnelAnswer,
    /** The peer's header-wait slot, when the caller took it already (pooled streams, see onStream). */
    private readonly headerSlot?: () => void,
  ) {
    this.closer = new ConnectionCloser(rec, (reason) => this.close(reason, "reset"));
  }

  private readonly onEarlyError = (err: NodeJS.ErrnoException): void => {
    if (!this.rec.isFinished) this.close("downstream_reset", "destroy", err);
  };

  private readonly onEarlyClose = (): void => {
    if (this.rec.isFinished || this.splice) return;
    if (this.rec.phase === "proxy_header") this.close("proxy_header_truncated", "destroy");
    else this.close("downstream_reset", "destroy");
  };

  /**
   * Refuse the stream before the app got anything: the record ends with `reason`, the peer gets
   * `refusal` as its answer (and retries elsewhere).
   */
  private refuse(reason: CloseReason, refusal: Refusal, err?: unknown): void {
    this.rec.finish(reason, err);
    this.down.stream.removeListener("error", this.onEarlyError);
    this.down.stream.removeListener("close", this.onEarlyClose);
    this.appSocket?.destroy();
    this.answer.refuse(refusal);
  }

  /** Before the splice: finish the record, close the stream (and the app socket, if any). */
  private close(reason: CloseReason, how: "reset" | "destroy", err?: unknown): void {
    if (this.splice) {
      this.closer.abort(reason);
      return;
    }
    // Record first: resetting a socket can emit its close synchronously, and the record keeps the
    // first reason it is given.
    this.rec.finish(reason, err);
    if (how === "reset") resetSide(this.down);
    else {
      this.down.stream.destroy();
      this.down.raw?.destroy();
    }
    this.appSocket?.destroy();
  }

  /** Start; whatever throws on the way ends in the one internal-error handler, for this stream only. */
  run(): void {
    this.start().catch((err: unknown) =>
      containFailure(this.o.connection, err, {
        rec: this.rec,
        reset: () => {
          if (this.splice) this.splice.abort("aborted");
          resetSide(this.down);
          this.appSocket?.destroy();
        },
        component: "tunnel",
      }),
    );
  }

  private async start(): Promise<void> {
    const stream = this.down.stream;
    stream.on("error", this.onEarlyError);
    stream.once("close", this.onEarlyClose);
    const header = await this.readHeader();
    if (!header) return;
    const allowed = this.authorize(header);
    if (allowed) await this.dialApp(header, allowed);
  }

  /**
   * The PROXY header, within its deadline and the peer's header-wait budget: streams waiting for their
   * header are few per peer, the rest are refused at once, so header-less streams cannot hold buffers
   * until the deadline by the thousand. Undefined once the stream is refused or gone.
   */
  private async readHeader(): Promise<AddressedHeader | undefined> {
    const { o, rec, peer } = this;
    rec.phase = "proxy_header";
    const headerWait = this.headerSlot ?? (o.peerLimits ? o.peerLimits.awaitHeader(peer) : noop);
    if (!headerWait) {
      this.refuse("peer_limit", "over_limit");
      return undefined;
    }
    let header: ParsedProxyHeader;
    try {
      header = await readProxyHeader(this.down.stream, {
        timeoutMs: o.timeouts.proxyHeader,
        clock: o.clock,
        allowV1: false,
      });
    } catch (err) {
      headerWait();
      if (!rec.isFinished) this.close(proxyHeaderCloseReason(err), "reset", err);
      return undefined;
    }
    headerWait();
    if (rec.isFinished) return undefined;
    if (!header.source || !header.destination) {
      const err = new WeftError("E_PROXY_HEADER", "LOCAL header in the tunnel");
      this.close("proxy_header_malformed", "reset", err);
      return undefined;
    }
    rec.src = header.source;
    rec.dst = header.destination;
    const tlv = header.tlvs.find((t) => t.type === PP2_TYPE_WEFT_SERVICE)?.value.toString("utf8") ?? "";
    rec.open(SERVICE_NAME.test(tlv) && o.servesService?.(tlv) ? tlv : "unknown", peer);
    return header as AddressedHeader;
  }

  /** Policy (may this identity reach that port?) and where the app is; undefined after a refusal. */
  private authorize(header: AddressedHeader): AppTarget | undefined {
    const { o, rec, peer } = this;
    rec.phase = "authorizing";
    const port = header.destination.port;
    const decided = decideInbound(peer, port, o.settings);
    const where =
      decided.kind === "deny"
        ? decided
        : decideAppAddress(
            header.destination.address,
            appTarget(o.transparent, o.appAddress, o.localAddresses),
          );
    if (where.kind === "deny") {
      if (where.reason === "policy_denied") {
        o.metrics.policyDenied.inc({
          peer_identity: peer.toString(),
          port: declaredPort(port, o.settings),
          rule: where.rule,
        });
      } else {
        o.metrics.inboundRefused.inc({ direction: "inbound", reason: where.reason });
      }
      const err = new WeftError("E_POLICY_DENIED", where.detail, { reason: where.why });
      o.logger.warn(
        { conn_id: rec.id, peer_identity: peer.toString(), port, rule: where.why, policy_rule: where.rule },
        err.message,
      );
      // On the wire every destination the sidecar will not dial is `port_not_allowed` (answer.ts).
      this.refuse(where.reason, where.reason === "policy_denied" ? "policy_denied" : "port_not_allowed", err);
      return undefined;
    }
    const allowed = decided as Extract<typeof decided, { kind: "allow" }>;
    o.metrics.policyAllowed.inc({
      peer_identity: peer.toString(),
      port: declaredPort(port, o.settings),
      rule: allowed.rule,
    });
    return { address: where.address, port, proxyProtocol: allowed.proxyProtocol };
  }

  /** Connect to the app; once it accepted, answer the peer and splice (a refusal is the peer's answer). */
  private async dialApp(header: AddressedHeader, target: AppTarget): Promise<void> {
    const { o, rec, down } = this;
    const stream = down.stream;
    rec.phase = "connecting";
    let app: Socket;
    try {
      // While connecting to the app, a peer that goes away aborts the connect.
      app = await connectWithDeadline(endpointAddr({ address: target.address, port: target.port }), {
        clock: o.clock,
        timeoutMs: o.timeouts.connect,
        other: stream,
      });
    } catch (err) {
      if (rec.isFinished) return;
      if (isWeftError(err) && err.reason === "connect_reset") {
        // The app accepted and reset before our connect completed (connector.ts): it saw
        // this connection and answered it with a reset, so the client sees that reset, as it would
        // connecting directly. A refusal would be retried on another endpoint: one client connection,
        // several app connections.
        this.answer.accept();
        this.close("upstream_reset", "reset", err);
        return;
      }
      // The app refused or did not answer: so does the peer, and the client retries elsewhere.
      const refused = isWeftError(err) && err.reason === "connect_refused";
      this.refuse("app_connect_failed", refused ? "app_refused" : "app_unreachable", err);
      return;
    }
    this.appSocket = app;
    if (rec.isFinished || stream.destroyed) {
      app.destroy();
      if (!rec.isFinished) this.close("downstream_reset", "destroy");
      return;
    }
    rec.endpoint = formatAddr(target.address, target.port);
    if (target.proxyProtocol === "v1") app.write(encodeProxyV1(header));
    else if (target.proxyProtocol === "v2") app.write(encodeProxyV2({ ...header, tlvs: [] }));

    rec.phase = "streaming";
    stream.removeListener("error", this.onEarlyError);
    stream.removeListener("close", this.onEarlyClose);
    // The app accepted: so does the peer, and only now (answer.ts).
    this.answer.accept();
    this.splice = this.closer.splice(down, { stream: app, raw: app }, o);
  }
}

/** How a tunnel stream answers its client (answer.ts): once, after the app accepted or with a refusal. */
export interface TunnelAnswer {
  accept(): void;
  /** The record is finished already; end the stream so that the client learns `refusal`. */
  refuse(refusal: Refusal): void;
}

/** weft/1: no answer; a refusal is a reset, as a client connecting to a closed port would see. */
export function legacyAnswer(side: SpliceSide): TunnelAnswer {
  return { accept: noop, refuse: () => resetSide(side) };
}

/**
 * weft/2 and weft/3: the status message before the app's first byte. A refusal ends the TLS stream after it; what
 * the client already sent is read and dropped until it closes, so our close is a FIN, never a reset that
 * could overtake the status (bounded by `lingerMs`, then destroyed).
 */
export function statusAnswer(side: SpliceSide, version: 2 | 3, clock: Clock, lingerMs: number): TunnelAnswer {
  return {
    accept: () => side.stream.write(encodeStatus(undefined, version)),
    refuse: (refusal) => {
      const s = side.stream;
      if (s.destroyed) return;
      const timer = clock.setTimeout(() => {
        s.destroy();
        side.raw?.destroy();
      }, lingerMs);
      s.once("close", () => timer.cancel());
      s.on("error", noop);
      s.end(encodeStatus(refusal, version));
      s.resume();
    },
  };
}

/** h2: the CONNECT response, 200 once the app accepted. */
export function connectAnswer(stream: http2.ServerHttp2Stream): TunnelAnswer {
  return {
    accept: () => {
      if (!stream.destroyed && !stream.headersSent) stream.respond({ ":status": 200 });
    },
    refuse: (refusal) => refuseConnect(stream, refusal),
  };
}

/**
 * Refuse a CONNECT: the refusal as the response (END_STREAM), then RST_STREAM NO_ERROR (RFC 9113 §8.1:
 * the response is complete, the request body is not wanted), which frees the stream at once and makes
 * an older client that does not wait for the answer see a reset, as it used to.
 */
function refuseConnect(stream: http2.ServerHttp2Stream, refusal: Refusal): void {
  if (stream.destroyed) return;
  try {
    if (!stream.headersSent) stream.respond(refusalHeaders(refusal), { endStream: true });
  } catch {
    // The stream or its session is going away; the close below still ends it.
  }
  stream.close(http2.constants.NGHTTP2_NO_ERROR);
}

/** A port as a metric label: only a port the config declares (inbound.ports, policy rules), else `unknown`. */
function declaredPort(port: number, s: InboundSettings): string {
  const declared =
    s.ports.some((p) => p.port === port) || s.policy.rules.some((r) => r.ports?.includes(port) ?? false);
  return declared ? String(port) : "unknown";
}
