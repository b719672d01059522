// The key policy on all three signing paths: the CA server (/v1/sign), `meshca sign` and `meshca issue`.
// Weak keys (RSA-512, RSA-1024, secp256k1) and SHA-1 CSR signatures, made by OpenSSL, are refused with
// E_CSR_INVALID and a message naming what is allowed; the token is not spent. P-384 and Ed25519 pass, and
// the certificates made for them verify with `openssl verify`.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { CertificateAuthority } from "../../src/ca/authority.ts";
import { isWeftError } from "../../src/core/errors.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { meshcaWorkspace } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const run = promisify(execFile);
const WEB = "spiffe://weft.local/ns/default/sa/web";
const dir = await mkdtemp(join(tmpdir(), "weft-key-policy-"));
test.after(() => rm(dir, { recursive: true, force: true }));

/** An OpenSSL-made CSR for WEB with the given key options and digest. */
async function csr(name: string, keyArgs: string[], digest: string): Promise<string> {
  const out = join(dir, `${name}.csr`);
  await run("openssl", [
    "req",
    "-new",
    ...keyArgs,
    "-nodes",
    `-${digest}`,
    "-subj",
    "/O=Weft",
    "-addext",
    `subjectAltName=URI:${WEB}`,
    "-keyout",
    join(dir, `${name}.key`),
    "-out",
    out,
  ]);
  return readFile(out, "utf8");
}

const weak: Array<{ name: string; pem: string; reason: string; says: RegExp }> = [
  {
    name: "RSA-512",
    pem: await csr("rsa512", ["-newkey", "rsa:512"], "sha256"),
    reason: "key_not_allowed",
    says: /RSA 512 bits key is not allowed; use ECDSA P-256 or P-384, RSA 2048 to 4096 bits, or Ed25519/,
  },
  {
    name: "RSA-1024 with SHA-1",
    pem: await csr("rsa1024", ["-newkey", "rsa:1024"], "sha1"),
    reason: "key_not_allowed",
    says: /RSA 1024 bits key is not allowed/,
  },
  {
    name: "RSA-2048 signed with SHA-1",
    pem: await csr("rsa2048sha1", ["-newkey", "rsa:2048"], "sha1"),
    reason: "signature_not_allowed",
    says: /signed with RSASSA-PKCS1-v1_5 with SHA-1, which is not allowed; sign it with SHA-256, SHA-384 or SHA-512/,
  },
  {
    name: "P-256 signed with SHA-1",
    pem: await csr("p256sha1", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "sha1"),
    reason: "signature_not_allowed",
    says: /ECDSA with SHA-1, which is not allowed/,
  },
  {
    name: "secp256k1",
    pem: await csr("k1", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"], "sha256"),
    reason: "key_not_allowed",
    says: /ECDSA secp256k1 key is not allowed/,
  },
];
const good = [
  {
    name: "P-384",
    pem: await csr("p384", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"], "sha384"),
  },
  { name: "Ed25519", pem: await csr("ed25519", ["-newkey", "ed25519"], "sha256") },
];

test("CA server: weak keys and SHA-1 CSRs are refused (400, reason, allowed list) and spend no token", async (t) => {
  const s = await startTestCaServer(t);
  for (const w of weak) {
    const { token } = await s.tokens.create({ idPattern: WEB });
    const reply = await s.postJson<{ error: { code: string; reason: string; message: string } }>("/v1/sign", {
      csr: w.pem,
      token,
    });
    assert.equal(reply.status, 400, `${w.name}: ${JSON.stringify(reply.body)}`);
    assert.equal(reply.body.error.code, "E_CSR_INVALID", w.name);
    assert.equal(reply.body.error.reason, w.reason, w.name);
    assert.match(reply.body.error.message, w.says, w.name);
    const [info] = (await s.tokens.list()).slice(-1);
    assert.equal(info!.uses, 0, `${w.name}: the token is not spent`);
  }
  assert.equal(s.signCount(), 0);
  for (const g of good) {
    const { token } = await s.tokens.create({ idPattern: WEB });
    const reply = await s.postJson<{ chain: string }>("/v1/sign", { csr: g.pem, token });
    assert.equal(reply.status, 200, `${g.name}: ${JSON.stringify(reply.body)}`);
    await writeFile(join(dir, "ok-chain.pem"), reply.body.chain);
    await writeFile(join(dir, "ok-bundle.pem"), s.testCa.ca.bundlePem());
    const { stdout } = await run("openssl", [
      "verify",
      "-x509_strict",
      "-CAfile",
      join(dir, "ok-bundle.pem"),
      "-untrusted",
      join(dir, "ok-chain.pem"),
      join(dir, "ok-chain.pem"),
    ]);
    assert.match(stdout, /: OK/);
  }
});

test("meshca sign: weak keys and SHA-1 CSRs are refused with exit 1 and what is allowed", async (t) => {
  const { cwd, meshca, ok } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  for (const w of weak) {
    await writeFile(join(cwd, "req.csr"), w.pem);
    const r = await meshca("sign", "req.csr");
    assert.equal(r.code, 1, `${w.name}: ${r.stderr}`);
    assert.match(r.stderr, /^meshca: E_CSR_INVALID: /);
    assert.match(r.stderr, w.says, w.name);
    assert.equal(r.stdout, "", `${w.name}: nothing signed`);
  }
  for (const g of good) {
    await writeFile(join(cwd, "req.csr"), g.pem);
    const r = await meshca("sign", "req.csr");
    assert.equal(r.code, 0, `${g.name}: ${r.stderr}`);
  }
});

test("meshca issue: only allowed key algorithms (P-384 and RSA-4096 added); a weak one is a usage error naming the choices", async (t) => {
  const { cwd, meshca, ok } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  const r = await meshca("issue", "--ns", "default", "--sa", "web", "--key-alg", "rsa-1024");
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519/);
  const p384 = await meshca("issue", "--ns", "default", "--sa", "web", "--key-alg", "ecdsa-p384");
  assert.equal(p384.code, 0, p384.stderr);
  const inspect = await meshca("inspect", "certs/issued/default-web/cert.pem");
  assert.match(inspect.stdout, /key: +ECDSA P-384/);
  // The library path under `issue` applies the same policy to the key it is given.
  const { store } = { store: await import("../../src/ca/store.ts") };
  const material = await new store.CaStore(join(cwd, "certs")).load();
  const ca = new CertificateAuthority(material);
  await assert.rejects(
    ca.issue({ id: WEB, keyAlgorithm: "rsa-1024" as never }),
    (e: unknown) =>
      isWeftError(e, "E_USAGE") && /rsa-1024.*not one of ecdsa-p256, ecdsa-p384/.test(e.message),
  );
});
