/**
 * Two sidecars in one process for data-plane tests: a client sidecar with an explicit listener for the
 * service `backend`, and a server sidecar whose tunnel port leads to a test app. Identities come from
 * files in a temporary directory (written atomically, so tests can rotate them), issued by a fresh test
 * CA. Logs go to in-memory loggers the tests assert on; every listener binds port 0.
 */
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { parseConfig } from "../../src/config/load.ts";
import type { Config } from "../../src/config/schema.ts";
import type { Clock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import type { RouteTable } from "../../src/discovery/types.ts";
import { FileIdentitySource } from "../../src/proxy/identity/file-source.ts";
import { Sidecar, type SidecarDeps } from "../../src/proxy/sidecar.ts";
import { createTestCa } from "./ca.ts";
import { type EventuallyOptions, eventually } from "./eventually.ts";
import { StaticRouteTable } from "./static-routes.ts";

export type TestCa = Awaited<ReturnType<typeof createTestCa>>;
export type Issued = Awaited<ReturnType<TestCa["issue"]>>;

export interface IdentityFiles {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
}

/** Write an issued identity to files, each replaced atomically (write temp, rename). */
export async function writeIdentity(
  files: IdentityFiles,
  issued: Issued,
  bundlePem = issued.bundlePem,
): Promise<void> {
  const put = async (path: string, text: string): Promise<void> => {
    const tmp = `${path}.tmp`;
    await writeFile(tmp, text, { mode: 0o600 });
    await rename(tmp, path);
  };
  await put(files.key, issued.keyPem);
  await put(files.cert, issued.chainPem);
  await put(files.bundle, bundlePem);
}

export async function identityDir(t: TestContext, name: string): Promise<IdentityFiles> {
  const dir = await mkdtemp(join(tmpdir(), `weft-${name}-`));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return { dir, cert: join(dir, "cert.pem"), key: join(dir, "key.pem"), bundle: join(dir, "bundle.pem") };
}

/** A config for a test sidecar: only the listeners asked for, every port 0, given overrides merged in. */
export function testConfig(
  trustDomain: string,
  files: IdentityFiles,
  extra: Record<string, unknown> = {},
): Config {
  const base: Record<string, unknown> = {
    trustDomain,
    identity: { files: { cert: files.cert, key: files.key, bundle: files.bundle, reloadInterval: "0" } },
    listeners: {
      outbound: { enabled: false },
      inbound: { enabled: false },
      tunnel: { address: "127.0.0.1", port: 0 },
      admin: { address: "127.0.0.1", port: 0 },
      metrics: { address: "127.0.0.1", port: 0 },
      explicit: [],
      ...(extra.listeners as object | undefined),
    },
  };
  const merged = { ...base, ...extra, listeners: base.listeners };
  return parseConfig(JSON.stringify(merged));
}

/** The client sidecar's upstream transports; data-plane acceptance tests run once for each. */
export const TRANSPORTS = ["per-connection", "pooled"] as const;
export type Transport = (typeof TRANSPORTS)[number];

export interface PairOptions {
  readonly ca?: TestCa;
  /** The client sidecar's `upstream.transport` (default: the config's default). */
  readonly transport?: Transport;
  /** What the server sidecar presents (default default/backend). */
  readonly serverIdentity?: string;
  /** What the client sidecar presents (default default/frontend). */
  readonly clientIdentity?: string;
  /** The identity the client expects of the service (default the server's). */
  readonly expectIdentity?: string;
  /** The app the server sidecar forwards to. */
  readonly appPort: number;
  readonly serverConfig?: Record<string, unknown>;
  readonly clientConfig?: Record<string, unknown>;
  readonly retries?: { attempts: number; deadlineMs: number };
  /** The clock of both sidecars (default the system clock). */
  readonly clock?: Clock;
  /** The port the client dials for the server's tunnel, e.g. a relay in front of it (default the tunnel port). */
  readonly clientTunnelPort?: (serverTunnelPort: number) => Promise<number>;
}

export interface Pair {
  readonly ca: TestCa;
  readonly client: Sidecar;
  readonly server: Sidecar;
  readonly clientLog: MemoryLogger;
  readonly serverLog: MemoryLogger;
  readonly clientFiles: IdentityFiles;
  readonly serverFiles: IdentityFiles;
  readonly routes: StaticRouteTable;
  /** The client sidecar's explicit listener for `backend`. */
  readonly explicitPort: number;
  readonly tunnelPort: number;
  readonly serverIssued: Issued;
  readonly clientIssued: Issued;
}

/**
 * Start one sidecar with identity files and a route table (`undefined`: `deps.createRoutes` builds
 * discovery from the config); stopped in `t.after`.
 */
export async function startSidecar(
  t: TestContext,
  config: Config,
  routes: RouteTable | undefined,
  log: MemoryLogger,
  deps: Partial<SidecarDeps> = {},
): Promise<Sidecar> {
  const sidecar = new Sidecar(config, { logger: log, ...(routes ? { routes } : {}), ...deps });
  t.after(() => sidecar.stop());
  await sidecar.start();
  return sidecar;
}

/** Client sidecar (explicit listener -> backend) and server sidecar (tunnel -> app on `appPort`). */
export async function startSidecarPair(t: TestContext, options: PairOptions): Promise<Pair> {
  const ca = options.ca ?? (await createTestCa({ trustDomain: "weft.local" }));
  const serverFiles = await identityDir(t, "server");
  const clientFiles = await identityDir(t, "client");
  const serverIssued = await ca.issue(options.serverIdentity ?? "default/backend");
  const clientIssued = await ca.issue(options.clientIdentity ?? "default/frontend");
  await writeIdentity(serverFiles, serverIssued);
  await writeIdentity(clientFiles, clientIssued);

  const serverLog = new MemoryLogger();
  // The server serves `backend` (discovery lists it with the server's identity): that is what lets the
  // service a peer names become a metric label on the server.
  const served = new StaticRouteTable([
    { name: "backend", identity: serverIssued.id.toString(), ports: [8080], endpoints: [] },
  ]);
  const server = await startSidecar(
    t,
    testConfig(ca.trustDomain, serverFiles, options.serverConfig),
    served,
    serverLog,
    { clock: options.clock },
  );
  const tunnelPort = server.addresses.tunnel!.port;
  const dialPort = options.clientTunnelPort ? await options.clientTunnelPort(tunnelPort) : tunnelPort;
  const routes = new StaticRouteTable([
    {
      name: "backend",
      identity: options.expectIdentity ?? serverIssued.id.toString(),
      ports: [8080],
      endpoints: [
        {
          address: "127.0.0.1",
          port: options.appPort,
          tunnelPort: dialPort,
        },
      ],
      retries: options.retries,
    },
  ]);
  const clientLog = new MemoryLogger();
  const client = await startSidecar(
    t,
    testConfig(ca.trustDomain, clientFiles, {
      ...options.clientConfig,
      ...(options.transport && {
        upstream: { ...(options.clientConfig?.upstream as object | undefined), transport: options.transport },
      }),
      listeners: { explicit: [{ listen: "127.0.0.1:0", service: "backend" }] },
    }),
    routes,
    clientLog,
    { clock: options.clock },
  );
  return {
    ca,
    client,
    server,
    clientLog,
    serverLog,
    clientFiles,
    serverFiles,
    routes,
    explicitPort: client.addresses.explicit[0]!.port,
    tunnelPort,
    serverIssued,
    clientIssued,
  };
}

/** Reload a file identity source now (instead of waiting for the watcher). */
export async function reloadIdentity(sidecar: Sidecar): Promise<void> {
  if (sidecar.identity instanceof FileIdentitySource) await sidecar.identity.reload();
}

/** The value on the line `name N` of Prometheus text (`name` is a regex source: escape label braces); 0 if absent. */
export function metricValue(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\d+)`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

/** GET a path from a sidecar's admin port; resolves with status and body. */
export async function adminGet(sidecar: Sidecar, path: string): Promise<{ status: number; body: string }> {
  const a = sidecar.addresses.admin;
  const res = await fetch(`http://${a.address}:${a.port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** Resolves with the value of metric `name` (as for metricValue) once `predicate` holds for it; bounded. */
export async function waitForMetric(
  sidecar: Sidecar,
  name: string,
  predicate: (value: number) => boolean,
  options: EventuallyOptions = {},
): Promise<number> {
  let value = Number.NaN;
  await eventually(
    () => `${name} to satisfy ${predicate.toString()} (last value ${value})`,
    async () => {
      value = metricValue((await adminGet(sidecar, "/metrics")).body, name);
      return predicate(value);
    },
    options,
  );
  return value;
}

/** Resolves once `predicate` holds for some log record; polls the in-memory log on each check. */
export async function waitForLog(
  log: MemoryLogger,
  predicate: (r: Record<string, unknown>) => boolean,
  timeoutMs = 10_000,
): Promise<Record<string, unknown>> {
  let hit: Record<string, unknown> | undefined;
  await eventually(
    () => `a matching log record; last: ${JSON.stringify(log.records.slice(-5))}`,
    () => {
      hit = log.records.find(predicate);
      return hit !== undefined;
    },
    { timeoutMs, intervalMs: 10 },
  );
  return hit!;
}

/** The access-log line of a finished connection, by direction. */
export function accessLines(log: MemoryLogger, direction?: string): Record<string, unknown>[] {
  return log.records.filter(
    (r) => r.msg === "connection closed" && (direction === undefined || r.direction === direction),
  );
}
