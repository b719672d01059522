/**
 * Everything the tunnel port refuses ends in a counted, logged reason and never reaches the app:
 * no client certificate, another trust domain, an expired certificate, an identity the policy does not
 * allow, plaintext, truncated and malformed PROXY headers, handshakes and headers that never complete.
 * The wrong server identity is refused on the client side. Deadlines are config, not sleeps.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { MemoryLogger } from "../../src/core/log.ts";
import { closeKind, connect, startApp } from "../helpers/apps.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  adminGet,
  identityDir,
  startSidecar,
  startSidecarPair,
  testConfig,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";
import { leafUnder } from "../helpers/svid-fixtures.ts";

checkLeaksAtEnd();

const PROXY_V2_SIGNATURE = Buffer.from("0d0a0d0a000d0a515549540a", "hex");

async function startServer(t: TestContext, extra: Record<string, unknown> = {}) {
  const ca = await createTestCa({ trustDomain: "weft.local" });
  const app = await startApp(() => {});
  t.after(() => app.close());
  const files = await identityDir(t, "server");
  await writeIdentity(files, await ca.issue("default/backend"));
  const log = new MemoryLogger();
  const sidecar = await startSidecar(
    t,
    testConfig(ca.trustDomain, files, extra),
    new StaticRouteTable([]),
    log,
  );
  return { ca, app, log, sidecar, port: sidecar.addresses.tunnel!.port };
}

/** Open a TLS connection to the tunnel as a test client would; resolves once the client thinks it is connected. */
function tlsClient(port: number, creds?: { keyPem: string; chainPem: string }): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host: "127.0.0.1",
      port,
      ALPNProtocols: ["weft/1"],
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      ...(creds ? { key: creds.keyPem, cert: creds.chainPem } : {}),
    });
    s.once("secureConnect", () => {
      s.off("error", reject);
      s.on("error", () => {});
      resolve(s);
    });
    s.once("error", reject);
  });
}

async function refusal(
  server: Awaited<ReturnType<typeof startServer>>,
  reason: string | RegExp,
): Promise<Record<string, unknown>> {
  const line = await waitForLog(server.log, (r) => r.msg === "connection closed");
  if (typeof reason === "string") assert.equal(line.reason, reason);
  else assert.match(String(line.reason), reason);
  assert.equal(server.app.accepted.length, 0, "no connection reached the app");
  return line;
}

async function metric(sidecar: import("../../src/proxy/sidecar.ts").Sidecar, re: RegExp): Promise<void> {
  const body = (await adminGet(sidecar, "/metrics")).body;
  assert.match(body, re);
}

test("a peer with no certificate is refused: no_client_cert", async (t) => {
  const server = await startServer(t);
  const s = await tlsClient(server.port);
  s.write("anything");
  await closeKind(s);
  await refusal(server, "no_client_cert");
  await metric(
    server.sidecar,
    /weft_tls_handshake_failures_total\{direction="inbound",reason="no_client_cert"\} 1/,
  );
});

test("a peer from another trust domain is refused with the verifier's reason", async (t) => {
  const server = await startServer(t);
  const other = await createTestCa({ trustDomain: "other.test" });
  const s = await tlsClient(server.port, await other.issue("default/frontend"));
  await closeKind(s);
  const line = await refusal(server, /^svid_/);
  await metric(
    server.sidecar,
    new RegExp(`weft_tls_handshake_failures_total\\{direction="inbound",reason="${line.reason}"\\} 1`),
  );
});

test("a peer with an expired certificate is refused: svid_ reason for expiry", async (t) => {
  const server = await startServer(t);
  const expired = await server.ca.issue("default/frontend", {
    notBefore: new Date(Date.now() - 3 * 3600_000),
    ttlMs: 3600_000,
  });
  const s = await tlsClient(server.port, expired);
  await closeKind(s);
  const line = await refusal(server, /^svid_.*expir/);
  await metric(
    server.sidecar,
    new RegExp(`weft_tls_handshake_failures_total\\{direction="inbound",reason="${line.reason}"\\} 1`),
  );
});

/** A key and chain for `id` under `ca`'s intermediate, with the extended key usages given. */
function leafWithEku(ca: Awaited<ReturnType<typeof createTestCa>>, ekus: string[]) {
  return leafUnder(ca.material, { uri: `spiffe://${ca.trustDomain}/ns/default/sa/frontend`, ekus });
}

test("a client certificate whose EKU lacks clientAuth is refused on a live tunnel: svid_eku_no_client_auth", async (t) => {
  const server = await startServer(t);
  const { Eku } = await import("../../src/ca/x509.ts");
  for (const ekus of [[Eku.serverAuth], [Eku.codeSigning]]) {
    const s = await tlsClient(server.port, await leafWithEku(server.ca, ekus));
    await closeKind(s);
  }
  await refusal(server, "svid_eku_no_client_auth");
  await eventually(
    "both refusals logged",
    () =>
      server.log.records.filter(
        (r) => r.msg === "connection closed" && r.reason === "svid_eku_no_client_auth",
      ).length >= 2,
  );
  await metric(
    server.sidecar,
    /weft_tls_handshake_failures_total\{direction="inbound",reason="svid_eku_no_client_auth"\} 2/,
  );
});

test("an identity the policy does not allow is refused: policy_denied, counted and logged", async (t) => {
  const app = await startApp(() => {});
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    serverConfig: {
      policy: {
        default: "deny",
        rules: [{ ports: [app.port], allow: ["spiffe://weft.local/ns/default/sa/admin"] }],
      },
    },
  });
  const client = await connect(pair.explicitPort);
  client.write("hi");
  await closeKind(client);
  const line = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "policy_denied");
  assert.equal(line.peer_identity, pair.clientIssued.id.toString());
  const denial = await waitForLog(pair.serverLog, (r) => String(r.msg).startsWith("E_POLICY_DENIED"));
  assert.equal(
    denial.msg,
    `E_POLICY_DENIED: ${pair.clientIssued.id.toString()} may not reach port ${app.port}`,
  );
  assert.equal(app.accepted.length, 0, "no connection reached the app");
  await metric(
    pair.server,
    new RegExp(
      `weft_policy_denied_total\\{peer_identity="${pair.clientIssued.id.toString()}",port="${app.port}",rule="rules\\[0\\]"\\} 1`,
    ),
  );
});

test("a server presenting the wrong identity for the service is refused by the client sidecar", async (t) => {
  const app = await startApp(() => {});
  t.after(() => app.close());
  const pair = await startSidecarPair(t, {
    appPort: app.port,
    expectIdentity: "spiffe://weft.local/ns/default/sa/payments",
    retries: { attempts: 1, deadlineMs: 5_000 },
  });
  const client = await connect(pair.explicitPort);
  assert.equal(await closeKind(client), "reset");
  const line = await waitForLog(pair.clientLog, (r) => r.msg === "connection closed");
  assert.equal(line.reason, "upstream_identity_mismatch");
  assert.match(
    String(line.err),
    /presented spiffe:\/\/weft\.local\/ns\/default\/sa\/backend, expected .*payments/,
  );
  assert.equal(app.accepted.length, 0, "no connection reached the app");
  await metric(
    pair.client,
    /weft_upstream_connect_failures_total\{service="backend",endpoint="127\.0\.0\.1:\d+",reason="identity_mismatch"\} 1/,
  );
  assert.deepEqual(
    pair.routes.reports.map((r) => r.outcome),
    ["failure", "released"],
    "the failure was reported to the route table (outlier detection)",
  );
});

test("plaintext sent to the tunnel port is refused: not_tls", async (t) => {
  const server = await startServer(t);
  const s = net.connect(server.port, "127.0.0.1");
  s.on("error", () => {});
  s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  await closeKind(s);
  await refusal(server, "not_tls");
  await metric(server.sidecar, /weft_tls_handshake_failures_total\{direction="inbound",reason="not_tls"\} 1/);
});

test("a truncated PROXY header is refused: proxy_header_truncated", async (t) => {
  const server = await startServer(t);
  const s = await tlsClient(server.port, await server.ca.issue("default/frontend"));
  s.end(PROXY_V2_SIGNATURE.subarray(0, 10));
  await closeKind(s);
  await refusal(server, "proxy_header_truncated");
  await metric(
    server.sidecar,
    /weft_tcp_connections_closed_total\{direction="inbound",service="unknown",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend",reason="proxy_header_truncated"\} 1/,
  );
});

test("a malformed PROXY header is refused: proxy_header_malformed", async (t) => {
  const server = await startServer(t);
  const s = await tlsClient(server.port, await server.ca.issue("default/frontend"));
  // The right signature, then version 3 (only 2 exists).
  s.write(Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x31, 0x11, 0x00, 0x0c]), Buffer.alloc(12)]));
  await closeKind(s);
  await refusal(server, "proxy_header_malformed");
  await metric(server.sidecar, /reason="proxy_header_malformed"\} 1/);
});

test("a handshake that never completes is cut at the handshake deadline: handshake_timeout", async (t) => {
  const server = await startServer(t, { timeouts: { handshake: "300ms" } });
  const s = net.connect(server.port, "127.0.0.1");
  s.on("error", () => {});
  // Connect and say nothing: only the deadline can end this.
  await closeKind(s);
  await refusal(server, "handshake_timeout");
  await metric(
    server.sidecar,
    /weft_tls_handshake_failures_total\{direction="inbound",reason="handshake_timeout"\} 1/,
  );
});

test("a PROXY header that never comes is cut at its deadline: proxy_header_timeout", async (t) => {
  const server = await startServer(t, { timeouts: { proxyHeader: "300ms" } });
  const s = await tlsClient(server.port, await server.ca.issue("default/frontend"));
  await closeKind(s);
  await refusal(server, "proxy_header_timeout");
});
