/**
 * The structural handler (issue 13, "what to build" 1): a throw that nothing caught on a connection's own
 * asynchronous path is a bug, and it costs that one connection, never the sidecar. Injected here as an
 * upstream whose resume() (the splice's first call) throws a plain Error (not a socket error, not a
 * WeftError): the client is reset, the connection is counted under `internal_error`, the error is logged once at error level with
 * its stack, and the very next connection through the same sidecar is served byte-exact.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { Duplex } from "node:stream";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { type Connector, NO_ANSWER, type Upstream } from "../../src/proxy/transport/connector.ts";
import { closeKind, connect } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import {
  adminGet,
  identityDir,
  metricValue,
  startSidecar,
  testConfig,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

/** An upstream that takes and echoes bytes, except that resuming it throws once when `armed`. */
function echoUpstream(state: { armed: boolean }): Upstream {
  const stream = new Duplex({
    read() {},
    write(chunk, _enc, cb) {
      this.push(chunk);
      cb();
    },
    final(cb) {
      this.push(null);
      cb();
    },
  });
  // The splice starts by resuming the upstream: a throw there is past every expected failure.
  const resume = stream.resume.bind(stream);
  stream.resume = (() => {
    if (state.armed) {
      state.armed = false;
      throw new Error("injected bug: resume threw");
    }
    return resume();
  }) as typeof stream.resume;
  return {
    side: { stream },
    peer: SpiffeId.parse("spiffe://weft.local/ns/default/sa/backend"),
    connectMs: 0,
    handshakeMs: 0,
    resumed: false,
    tunnel: true,
    answer: NO_ANSWER,
  };
}

test("a bug on one connection's path resets that connection, counts internal_error, logs its stack once; the next is served", async (t) => {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const files = await identityDir(t, "client");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const state = { armed: true };
  const connector: Connector = { connect: async () => echoUpstream(state) };
  const log = new MemoryLogger();
  const routes = new StaticRouteTable([
    {
      name: "backend",
      identity: "spiffe://weft.local/ns/default/sa/backend",
      ports: [8080],
      endpoints: [{ address: "127.0.0.1", port: 8080, tunnelPort: 1 }],
    },
  ]);
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, {
      listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
    }),
    routes,
    log,
    { connector },
  );
  const port = sidecar.addresses.explicit[0]!.port;

  const victim = net.connect({ port, host: "127.0.0.1" });
  assert.equal(await closeKind(victim), "reset", "the connection that met the bug is reset");
  const errors = log.records.filter((r) => r.level === "error");
  assert.equal(errors.length, 1, "logged once");
  assert.match(String(errors[0]!.err), /injected bug: resume threw\n\s+at /, "with its stack");
  const metrics = (await adminGet(sidecar, "/metrics")).body;
  assert.equal(
    metricValue(
      metrics,
      'weft_tcp_connections_closed_total\\{direction="explicit",service="backend",peer_identity="[^"]*",reason="internal_error"\\}',
    ),
    1,
  );

  const next = await connect(port);
  next.write("hello");
  // The fake upstream echoes everything, the tunnel's PROXY header first.
  let back = "";
  await new Promise<void>((r) =>
    next.on("data", (d: Buffer) => {
      back += d.toString("latin1");
      if (back.endsWith("hello")) r();
    }),
  );
  assert.ok(back.startsWith("\r\n\r\n\0\r\nQUIT\n") && back.endsWith("hello"), "the sidecar carries on");
  next.destroy();
});
