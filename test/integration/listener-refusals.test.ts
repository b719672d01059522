/**
 * A connection refused because its listener is at `maxConnections` is counted on
 * `weft_tcp_connections_closed_total{reason="connection_limit"}` under the direction of the listener's
 * handler, as that handler's own connections are: `inbound_plaintext` on the inbound capture listener
 * (the listener's name, `inbound`, is the tunnel's direction), `outbound` and `explicit` on theirs.
 * Real listeners from the sidecar's wiring, real sockets on loopback; each listener's one slot is taken
 * with `tryAcquire` (as a pooled stream takes one), so the next accept is refused.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { parseConfig } from "../../src/config/load.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { origDstAddr } from "../../src/proxy/addresses.ts";
import { NO_SOCKET_ERRORS } from "../../src/proxy/capture/sockopt.ts";
import { ConnectionTracker } from "../../src/proxy/connection/record.ts";
import { liveSettings } from "../../src/proxy/live-settings.ts";
import type { Connector } from "../../src/proxy/transport/connector.ts";
import { SessionCertWatch } from "../../src/proxy/transport/h2/cert-watch.ts";
import { TunnelTls } from "../../src/proxy/transport/tls-context.ts";
import { createListeners, createWiring } from "../../src/proxy/wiring.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

checkLeaksAtEnd();

test("a refused accept is counted under its handler's direction, on every listener", async (t) => {
  const one = { address: "127.0.0.1", port: 0, maxConnections: 1 };
  const config = parseConfig(
    JSON.stringify({
      trustDomain: "weft.local",
      identity: { files: { cert: "/nonexistent", key: "/nonexistent", bundle: "/nonexistent" } },
      inbound: { mode: "strict" },
      listeners: {
        outbound: one,
        inbound: one,
        tunnel: one,
        admin: { address: "127.0.0.1", port: 0 },
        explicit: [{ listen: "127.0.0.1:0", service: "backend", maxConnections: 1 }],
      },
    }),
  );
  const clock = new ManualClock();
  const logger = new MemoryLogger();
  const metrics = new WeftMetrics();
  const tls = new TunnelTls({ trustDomain: "weft.local", clock, sessionResumption: false });
  const w = createWiring({
    config,
    clock,
    logger,
    metrics,
    tls,
    live: liveSettings(config),
    tracker: new ConnectionTracker(),
    socketErrors: NO_SOCKET_ERRORS,
  });
  const connector: Connector = {
    connect: () => Promise.reject(new Error("not used")),
  };
  const set = createListeners(w, {
    routes: new StaticRouteTable([]),
    connector,
    originalDst: { resolve: () => origDstAddr({ address: "127.0.0.1", port: 9 }) },
    inboundSessions: new SessionCertWatch({ tls, clock, logger, metrics, direction: "inbound" }),
    perPeerLimits: () => config.limits.perPeer,
    servesService: () => false,
  });
  t.after(async () => {
    await Promise.all(set.all.map((l) => l.close()));
    metrics.close();
  });
  const listeners = {
    inbound_plaintext: set.inbound!,
    outbound: set.outbound!,
    explicit: set.explicit[0]!,
    inbound: set.tunnel!,
  };
  for (const [direction, listener] of Object.entries(listeners)) {
    const at = await listener.listen();
    assert.ok(listener.tryAcquire(), "the one slot is free");
    const refused = net.connect({ host: at.address, port: at.port });
    await new Promise<void>((resolve) => {
      refused.on("error", () => {});
      refused.once("close", () => resolve());
    });
    listener.release();
    const value = await metrics.value("weft_tcp_connections_closed_total", {
      direction,
      service: "unknown",
      peer_identity: "none",
      reason: "connection_limit",
    });
    assert.equal(value, 1, `${direction}: one refusal counted under its own direction`);
  }
  // Nothing else was counted: the capture listener's refusal is not under the tunnel's `inbound`.
  const text = await metrics.render();
  const lines = text.split("\n").filter((l) => l.startsWith("weft_tcp_connections_closed_total{"));
  assert.equal(lines.length, 4, lines.join("\n"));
});
