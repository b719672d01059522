/**
 * The sidecar's active health check (discovery/health.ts `Probe`): it tests the app through the
 * endpoint's sidecar, the way a connection gets there. One tunnel (per-connection or a pooled stream,
 * whichever the sidecar uses, with the same mTLS identity check) to the endpoint's tunnel port, a PROXY
 * header naming the endpoint's app port, and the peer's answer (answer.ts): the check passes only when
 * the peer says its app accepted. A live sidecar in front of a dead app fails it, which a TCP connect to
 * the tunnel port never did. The tunnel is then ended (FIN to the app, as a TCP check that closes; on
 * weft/3 the end frame, so the peer does not read it as a truncation),
 * and reset if it is still open after the check's timeout. Endpoints without a sidecar get a TCP connect
 * to the app port.
 */
import { isIPv6 } from "node:net";
import type { Clock } from "../../core/clock.ts";
import { WeftError } from "../../core/errors.ts";
import { noop } from "../../core/noop.ts";
import { type Probe, tcpProbe } from "../../discovery/health.ts";
import { END_FRAME } from "../connection/frames.ts";
import { resetSide } from "../connection/splice.ts";
import type { Connector, Upstream } from "../transport/connector.ts";
import { encodeProxyV2, PP2_TYPE_WEFT_SERVICE } from "../transport/proxy-protocol.ts";

export function tunnelProbe(connector: Connector, clock: Clock): Probe {
  return async (target, timeoutMs) => {
    const { service, endpoint } = target;
    if (!endpoint.sidecar) return tcpProbe(target, timeoutMs);
    const ctl = new AbortController();
    const timer = clock.setTimeout(
      () => ctl.abort(new WeftError("E_TIMEOUT", "health check deadline")),
      timeoutMs,
    );
    let up: Upstream | undefined;
    try {
      up = await connector.connect({ endpoint, expectedIdentity: endpoint.identity }, ctl.signal);
      up.side.stream.write(
        encodeProxyV2({
          command: "PROXY",
          source: { address: isIPv6(endpoint.address) ? "::" : "0.0.0.0", port: 0 },
          destination: { address: endpoint.address, port: endpoint.port },
          tlvs: [{ type: PP2_TYPE_WEFT_SERVICE, value: Buffer.from(service.name, "utf8") }],
        }),
      );
      await up.answer(ctl.signal);
      return true;
    } catch {
      if (up) resetSide(up.side);
      up = undefined;
      return false;
    } finally {
      timer.cancel();
      if (up) close(up, clock, timeoutMs);
    }
  };
}

/** End a passed check's tunnel like a client that is done: FIN, drain what comes, reset if it lingers. */
function close(up: Upstream, clock: Clock, lingerMs: number): void {
  const s = up.side.stream;
  s.on("error", noop);
  const timer = clock.setTimeout(() => resetSide(up.side), lingerMs);
  s.once("close", () => timer.cancel());
  s.resume();
  // weft/3: the end frame is the FIN; a tunnel that ends without it is a truncation, which the peer
  // carries to its app as a reset (frames.ts).
  if (up.side.framed) s.end(END_FRAME);
  else s.end();
}
