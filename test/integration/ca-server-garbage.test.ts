// The CA server survives what a hostile or broken peer sends: random bytes, truncated JSON, wrong types,
// a PEM that is not a CSR, a CSR whose signature is by another key, a 10 MiB streamed body, wrong methods and
// content types, broken HTTP, stalled headers and stalled handshakes. Each gets a 4xx with a reason (or a
// closed connection), nothing is issued, the valid token sent along is not spent, and the server still serves.
import "reflect-metadata";
import assert from "node:assert/strict";
import { randomBytes, webcrypto } from "node:crypto";
import { request } from "node:https";
import { connect as netConnect } from "node:net";
import { test } from "node:test";
import { connect as tlsConnect } from "node:tls";
import * as x509 from "@peculiar/x509";
import { createCsr } from "../../src/ca/authority.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const WEB = SpiffeId.parse("spiffe://weft.local/ns/default/sa/web");

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function startServer(t: import("node:test").TestContext) {
  const { testCa, tokens, server, signCount } = await startTestCaServer(t, {
    server: { headersTimeoutMs: 500, requestTimeoutMs: 2000, handshakeTimeoutMs: 500 },
  });
  const bundlePem = testCa.ca.bundlePem();

  /** One request; the body may be a Buffer, a string, or a generator of chunks streamed with backpressure. */
  const send = (
    method: string,
    path: string,
    body?: Buffer | string | { chunks: number; size: number },
    headers: Record<string, string> = { "Content-Type": "application/json" },
  ): Promise<Reply> =>
    new Promise((resolve, reject) => {
      let answered = false;
      const req = request(`${server.url}${path}`, { method, agent: false, ca: bundlePem, headers }, (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString() }),
        );
        res.on("error", () =>
          resolve({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString() }),
        );
      });
      req.on("error", (err) => {
        if (!answered) reject(err);
      });
      if (body === undefined || typeof body === "string" || Buffer.isBuffer(body)) {
        req.end(body);
        return;
      }
      // Stream: write until done or until the server has answered, honouring backpressure.
      const chunk = Buffer.alloc(body.size, 0x41);
      let sent = 0;
      const pump = () => {
        while (sent < body.chunks && !answered && !req.destroyed) {
          sent += 1;
          if (!req.write(chunk)) {
            req.once("drain", pump);
            return;
          }
        }
        if (!req.destroyed) req.end();
      };
      pump();
    });

  const json = (reply: Reply) =>
    JSON.parse(reply.text) as { error: { code: string; reason: string; message: string } };
  return { testCa, tokens, server, send, json, signCount, bundlePem };
}

/** A CSR whose public key is one key pair's while its signature is made with another key. */
async function csrSignedByAnotherKey(): Promise<string> {
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const subject = (await webcrypto.subtle.generateKey(alg, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const signer = (await webcrypto.subtle.generateKey(alg, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys: { publicKey: subject.publicKey, privateKey: signer.privateKey } as never,
    signingAlgorithm: alg,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: WEB.toString() }])],
  });
  return csr.toString("pem");
}

test("garbage bodies get a 4xx with a reason; nothing is issued; the token survives; the server still serves", async (t) => {
  const s = await startServer(t);
  const { token } = await s.tokens.create({ idPattern: WEB.toString() });
  const goodCsr = (await createCsr(WEB)).csrPem;
  const someCert = (await s.testCa.issue(WEB.toString())).certPem;
  const cases: { name: string; body: Buffer | string; status: number; code: string; reason?: string }[] = [
    {
      name: "random bytes",
      body: randomBytes(2048),
      status: 400,
      code: "E_REQUEST",
      reason: "malformed_json",
    },
    {
      name: "truncated JSON",
      body: `{"csr": "${goodCsr.slice(0, 100)}`,
      status: 400,
      code: "E_REQUEST",
      reason: "malformed_json",
    },
    { name: "empty body", body: "", status: 400, code: "E_REQUEST", reason: "malformed_json" },
    { name: "JSON array", body: "[1,2,3]", status: 400, code: "E_REQUEST", reason: "not_an_object" },
    { name: "JSON null", body: "null", status: 400, code: "E_REQUEST", reason: "not_an_object" },
    {
      name: "csr of the wrong type",
      body: JSON.stringify({ csr: 42, token }),
      status: 400,
      code: "E_REQUEST",
      reason: "bad_csr_type",
    },
    {
      name: "token of the wrong type",
      body: JSON.stringify({ csr: goodCsr, token: ["x"] }),
      status: 400,
      code: "E_REQUEST",
      reason: "bad_token_type",
    },
    {
      name: "missing csr",
      body: JSON.stringify({ token }),
      status: 400,
      code: "E_REQUEST",
      reason: "missing_csr",
    },
    {
      name: "missing token",
      body: JSON.stringify({ csr: goodCsr }),
      status: 400,
      code: "E_REQUEST",
      reason: "missing_token",
    },
    {
      name: "unknown field",
      body: JSON.stringify({ csr: goodCsr, token, ca: true }),
      status: 400,
      code: "E_REQUEST",
      reason: "unknown_field",
    },
    {
      name: "csr that is not PEM",
      body: JSON.stringify({ csr: "hello", token }),
      status: 400,
      code: "E_PEM",
    },
    {
      name: "PEM that is a certificate, not a CSR",
      body: JSON.stringify({ csr: someCert, token }),
      status: 400,
      code: "E_PEM",
    },
    {
      name: "CSR PEM with a corrupted body",
      body: JSON.stringify({ csr: goodCsr.replace(/\n[A-Za-z0-9+/]{20}/, "\n!!!!!!!!!!!!!!!!!!!!"), token }),
      status: 400,
      code: "E_PEM",
    },
    {
      name: "CSR signed by a different key",
      body: JSON.stringify({ csr: await csrSignedByAnotherKey(), token }),
      status: 400,
      code: "E_CSR_SIGNATURE",
    },
  ];
  for (const c of cases) {
    const reply = await s.send("POST", "/v1/sign", c.body);
    assert.equal(reply.status, c.status, `${c.name}: ${reply.text}`);
    const err = s.json(reply).error;
    assert.equal(err.code, c.code, `${c.name}: ${err.message}`);
    if (c.reason) assert.equal(err.reason, c.reason, c.name);
    assert.ok(err.message.length > 0);
  }
  assert.equal(s.signCount(), 0);
  assert.equal((await s.tokens.list())[0]!.uses, 0, "refused requests never spend the token");
  const ok = await s.send("POST", "/v1/sign", JSON.stringify({ csr: goodCsr, token }));
  assert.equal(ok.status, 200, ok.text);
  assert.equal(s.signCount(), 1);
});

test("a 10 MiB streamed body gets 413 and the server still serves", async (t) => {
  const s = await startServer(t);
  const streamed = await s.send("POST", "/v1/sign", { chunks: 160, size: 64 * 1024 });
  assert.equal(streamed.status, 413);
  assert.deepEqual(
    [s.json(streamed).error.code, s.json(streamed).error.reason],
    ["E_LIMIT", "body_too_large"],
  );
  const declared = await s.send(
    "POST",
    "/v1/sign",
    { chunks: 160, size: 64 * 1024 },
    {
      "Content-Type": "application/json",
      "Content-Length": String(10 * 1024 * 1024),
    },
  );
  assert.equal(declared.status, 413);
  const bundle = await s.send("GET", "/v1/bundle");
  assert.equal(bundle.status, 200);
  assert.equal(s.signCount(), 0);
});

test("wrong methods, paths and content types get 405, 404 and 415", async (t) => {
  const s = await startServer(t);
  const get = await s.send("GET", "/v1/sign");
  assert.equal(get.status, 405);
  assert.equal(get.headers.allow, "POST");
  assert.equal((await s.send("DELETE", "/v1/bundle")).status, 405);
  assert.equal((await s.send("GET", "/v2/anything")).status, 404);
  assert.equal((await s.send("GET", "/%zz")).status, 404);
  const text = await s.send("POST", "/v1/sign", "csr=1", {
    "Content-Type": "application/x-www-form-urlencoded",
  });
  assert.equal(text.status, 415);
  assert.equal(s.json(text).error.reason, "content_type");
  assert.equal((await s.send("POST", "/v1/renew", "{}", {})).status, 415);
  assert.equal(s.signCount(), 0);
});

test("the bundle is served as PEM and as JSON", async (t) => {
  const s = await startServer(t);
  const pem = await s.send("GET", "/v1/bundle");
  assert.equal(pem.status, 200);
  assert.match(String(pem.headers["content-type"]), /application\/x-pem-file/);
  assert.equal(pem.text, s.bundlePem);
  const json = await s.send("GET", "/v1/bundle?format=json");
  assert.deepEqual(JSON.parse(json.text), { trustDomain: "weft.local", bundle: s.bundlePem, revoked: [] });
  const health = await s.send("GET", "/healthz");
  assert.equal(health.status, 200);
});

test("broken HTTP, stalled headers and stalled handshakes are cut off without harm", async (t) => {
  const s = await startServer(t);
  const port = s.server.port;
  // Not HTTP at all, inside TLS.
  const broken = await new Promise<string>((resolve, reject) => {
    const sock = tlsConnect({ host: "127.0.0.1", port, ca: s.bundlePem, servername: "localhost" }, () => {
      sock.write("THIS IS NOT HTTP\r\n\r\n");
    });
    let data = "";
    sock.on("data", (d) => {
      data += d;
    });
    sock.on("close", () => resolve(data));
    sock.on("error", reject);
  });
  assert.match(broken, /^HTTP\/1\.1 400/);
  // Headers that never finish: the server closes the connection after its headers timeout.
  const stalled = await new Promise<string>((resolve, reject) => {
    const sock = tlsConnect({ host: "127.0.0.1", port, ca: s.bundlePem, servername: "localhost" }, () => {
      sock.write("POST /v1/sign HTTP/1.1\r\nHost: x\r\n");
    });
    let data = "";
    sock.on("data", (d) => {
      data += d;
    });
    sock.on("close", () => resolve(data));
    sock.on("error", reject);
  });
  assert.match(stalled, /^HTTP\/1\.1 408/);
  // A TCP connection that never starts TLS is closed after the handshake timeout.
  await new Promise<void>((resolve) => {
    const sock = netConnect({ host: "127.0.0.1", port });
    sock.on("error", () => {});
    sock.on("close", () => resolve());
  });
  assert.equal((await s.send("GET", "/healthz")).status, 200);
});
