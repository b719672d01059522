/**
 * A real CA server on 127.0.0.1:0 for tests: a fresh trust domain, a token store in a temporary
 * directory (its clock injectable), a count of every certificate signed, and `postJson`, one HTTPS
 * request that trusts the CA's bundle and may present a client identity. Closed in `t.after`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { type CaServerOptions, createCaServer } from "../../src/ca/server.ts";
import { TokenStore } from "../../src/ca/tokens.ts";
import { type Clock, ManualClock, systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { createTestCa } from "./ca.ts";

export interface JsonReply<B = Record<string, unknown>> {
  readonly status: number;
  readonly body: B;
}

export interface TestCaServerOptions {
  /** The server's clock (default the system clock). */
  readonly clock?: Clock;
  /** Server options beyond ca, tokens, logger, clock and listen (timeouts, limits). */
  readonly server?: Partial<CaServerOptions>;
}

export async function startTestCaServer(t: TestContext, options: TestCaServerOptions = {}) {
  const testCa = await createTestCa({ trustDomain: "weft.local" });
  const dir = await mkdtemp(join(tmpdir(), "weft-ca-server-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const tokenClock = new ManualClock(Date.now());
  const tokens = new TokenStore({
    file: join(dir, "tokens.json"),
    clock: tokenClock,
    trustDomain: "weft.local",
  });
  let signed = 0;
  const sign = testCa.ca.signCsr.bind(testCa.ca);
  testCa.ca.signCsr = async (...args: Parameters<typeof sign>) => {
    const cert = await sign(...args);
    signed += 1;
    return cert;
  };
  const logger = new MemoryLogger();
  const server = await createCaServer({
    ca: testCa.ca,
    tokens,
    logger,
    clock: options.clock ?? systemClock,
    listen: "127.0.0.1:0",
    ...options.server,
  });
  t.after(() => server.close());

  /** POST `body` as JSON to `path`; `identity` is presented as the client certificate. */
  const postJson = <B = Record<string, unknown>>(
    path: string,
    body: unknown,
    identity?: { keyPem: string; chainPem: string },
  ): Promise<JsonReply<B>> =>
    new Promise((resolve, reject) => {
      const payload = JSON.stringify(body);
      const req = request(
        `${server.url}${path}`,
        {
          method: "POST",
          agent: false,
          ca: testCa.ca.bundlePem(),
          ...(identity ? { key: identity.keyPem, cert: identity.chainPem } : {}),
          headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) as B }),
          );
        },
      );
      req.on("error", reject);
      req.end(payload);
    });

  return { testCa, tokens, tokenClock, server, logger, postJson, signCount: () => signed };
}
