/**
 * Shared pieces of the adversarial suite (test/adversarial/): the check that ends every storm (the
 * sidecar still serves a legitimate connection, byte-exact) and a bounded-concurrency loop for storms.
 */
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { MemoryLogger } from "../../src/core/log.ts";
import type { Sidecar } from "../../src/proxy/sidecar.ts";
import { connect, hashUntilEnd, writePattern } from "./apps.ts";
import { type Issued, identityDir, startSidecar, type TestCa, testConfig, writeIdentity } from "./sidecar.ts";
import { StaticRouteTable } from "./static-routes.ts";
import { portOf, startWeftProcess, type WeftProcess } from "./weft-child.ts";

/** One legitimate connection through `port` to an echo app: `bytes` out, the same bytes back, then FIN. */
export async function assertServesByteExact(
  port: number,
  bytes = 256 * 1024,
  host = "127.0.0.1",
): Promise<void> {
  const s = await connect(port, host);
  const back = hashUntilEnd(s);
  const sent = await writePattern(s, bytes);
  const got = await back;
  assert.equal(got.bytes, bytes, "the legitimate connection got every byte back");
  assert.equal(got.sha256, sent, "byte-exact");
  s.destroy();
}

/** Run `one(i)` for i in [0, total) with at most `concurrency` in flight; every run is awaited. */
export async function storm(
  total: number,
  concurrency: number,
  one: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < total) {
      const i = next++;
      await one(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
}

/** A server sidecar as a child process: tunnel port → the app on 127.0.0.1; its identity default/backend. */
export async function startServerProcess(
  t: TestContext,
  ca: TestCa,
  extra: Record<string, unknown> = {},
  identity = "default/backend",
): Promise<{ weft: WeftProcess; issued: Issued; tunnelPort: number }> {
  const files = await identityDir(t, "server");
  const issued = await ca.issue(identity);
  await writeIdentity(files, issued);
  const weft = await startWeftProcess(t, {
    trustDomain: ca.trustDomain,
    identity: { files: { cert: files.cert, key: files.key, bundle: files.bundle } },
    log: { level: "info", accessLog: false },
    ...extra,
    listeners: {
      outbound: { enabled: false },
      inbound: { enabled: false },
      tunnel: { address: "127.0.0.1", port: 0 },
      metrics: { address: "127.0.0.1", port: 0 },
      admin: { address: "127.0.0.1", port: 0 },
      ...(extra.listeners as object | undefined),
    },
  });
  return { weft, issued, tunnelPort: portOf(weft.tunnel!) };
}

/** An in-process client sidecar whose explicit listener leads to `backend` (app `appPort`) via `tunnelPort`. */
export async function startClientFor(
  t: TestContext,
  ca: TestCa,
  server: { issued: Issued; tunnelPort: number },
  appPort: number,
  transport: "pooled" | "per-connection" = "pooled",
): Promise<{ sidecar: Sidecar; port: number; log: MemoryLogger }> {
  const files = await identityDir(t, "client");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const log = new MemoryLogger();
  const routes = new StaticRouteTable([
    {
      name: "backend",
      identity: server.issued.id.toString(),
      ports: [8080],
      endpoints: [{ address: "127.0.0.1", port: appPort, tunnelPort: server.tunnelPort }],
    },
  ]);
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, {
      upstream: { transport },
      listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
    }),
    routes,
    log,
  );
  return { sidecar, port: sidecar.addresses.explicit[0]!.port, log };
}

/**
 * A client sidecar as a child process (`weft proxy`): its explicit listener leads to `backend` (app
 * `appPort`) via `server`'s tunnel port; its identity default/frontend. For tests that kill or stop it.
 */
export async function startClientProcess(
  t: TestContext,
  ca: TestCa,
  server: { issued: Issued; tunnelPort: number },
  appPort: number,
  transport: "pooled" | "per-connection",
): Promise<{ weft: WeftProcess; port: number }> {
  const files = await identityDir(t, "client");
  await writeIdentity(files, await ca.issue("default/frontend"));
  const weft = await startWeftProcess(t, {
    trustDomain: ca.trustDomain,
    identity: { files: { cert: files.cert, key: files.key, bundle: files.bundle } },
    listeners: {
      outbound: { enabled: false },
      inbound: { enabled: false },
      tunnel: { enabled: false },
      metrics: { address: "127.0.0.1", port: 0 },
      admin: { address: "127.0.0.1", port: 0 },
      explicit: [{ listen: "127.0.0.1:0", service: "backend" }],
    },
    upstream: { transport },
    log: { level: "info", accessLog: false },
    services: [
      {
        name: "backend",
        ports: [8080],
        identity: server.issued.id.toString(),
        endpoints: [{ address: "127.0.0.1", port: appPort, tunnelPort: server.tunnelPort }],
      },
    ],
  });
  return { weft, port: portOf(weft.explicit[0]!) };
}
