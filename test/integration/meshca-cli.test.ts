// The `meshca` CLI end to end in a temp directory: init/issue/sign/inspect/verify/bundle/token/rotate/export/
// serve, run in-process (and as a child process for the entry point), with exit codes 0/1/2, --force gating,
// one-line errors, --help with EXAMPLES and EXIT CODES on every command, and chains checked by `openssl verify`,
// keystores read back by `openssl pkcs12` and `keytool`.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { createCsr } from "../../src/ca/authority.ts";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { runMeshca } from "../../src/cli/meshca.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { type CliResult as Result, meshcaWorkspace as workspace } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { leafUnder } from "../helpers/svid-fixtures.ts";

checkLeaksAtEnd();

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, "../..");
const WEB = "spiffe://weft.local/ns/default/sa/web";

function assertOneLineError(r: Result, code: number, pattern: RegExp) {
  assert.equal(r.code, code, `expected exit ${code}, got ${r.code}: ${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.equal(r.stderr.trim().split("\n").length, 1, `one line on stderr: ${r.stderr}`);
}

async function opensslVerify(bundle: string, chain: string, cert: string) {
  const { stdout } = await run("openssl", [
    "verify",
    "-x509_strict",
    "-CAfile",
    bundle,
    "-untrusted",
    chain,
    cert,
  ]);
  assert.match(stdout, /: OK/);
}

test("init creates a trust domain once; replacing it needs --force", async (t) => {
  const w = await workspace(t);
  const r = await w.ok("init", "--trust-domain", "weft.local");
  assert.match(r.stdout, /created trust domain weft\.local/);
  assertOneLineError(await w.meshca("init", "--trust-domain", "weft.local"), 1, /E_EXISTS: .*--force/);
  const before = await w.ok("bundle");
  await w.ok("init", "--trust-domain", "weft.local", "--force");
  assert.notEqual((await w.ok("bundle")).stdout, before.stdout, "--force made a new root");
  assertOneLineError(
    await w.meshca("init", "--trust-domain", "Not A Domain!", "--dir", "other"),
    2,
    /trust-domain/,
  );
  assertOneLineError(await w.meshca("init"), 2, /--trust-domain/);
  assertOneLineError(
    await w.meshca("issue", "--ns", "a", "--sa", "b", "--dir", "nowhere"),
    1,
    /no CA in .*meshca init/,
  );
});

test("issue writes a 0600 key and a chain that openssl verifies; files are not replaced without --force", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  const r = await w.ok("issue", "--ns", "default", "--sa", "web");
  assert.match(r.stdout, new RegExp(`issued ${WEB}`));
  const dir = w.p("certs", "issued", "default-web");
  assert.equal((await stat(join(dir, "key.pem"))).mode & 0o777, 0o600);
  await opensslVerify(join(dir, "bundle.pem"), join(dir, "chain.pem"), join(dir, "cert.pem"));
  const text = (await run("openssl", ["x509", "-in", join(dir, "cert.pem"), "-noout", "-text"])).stdout;
  assert.match(text, new RegExp(`URI:${WEB}`));
  const key = await readFile(join(dir, "key.pem"), "utf8");
  assertOneLineError(await w.meshca("issue", "--ns", "default", "--sa", "web"), 1, /E_EXISTS: .*--force/);
  assert.equal(await readFile(join(dir, "key.pem"), "utf8"), key, "the refused run left the key alone");
  await w.ok("issue", "--ns", "default", "--sa", "web", "--force");
  assert.notEqual(await readFile(join(dir, "key.pem"), "utf8"), key);

  await w.ok(
    "issue",
    "--id",
    "spiffe://weft.local/ns/pay/sa/api",
    "--ttl",
    "1h",
    "--key-alg",
    "rsa-2048",
    "--out",
    "api",
  );
  await opensslVerify(w.p("api", "bundle.pem"), w.p("api", "chain.pem"), w.p("api", "cert.pem"));
  assert.match((await w.ok("inspect", "api/cert.pem")).stdout, /RSA 2048 bits/);
  assert.match((await w.ok("inspect", "api/cert.pem")).stdout, /expires in 1h/);
});

test("issue rejects bad identities, durations and algorithms as usage errors (exit 2)", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  assertOneLineError(await w.meshca("issue"), 2, /--id .* or --ns/);
  assertOneLineError(
    await w.meshca("issue", "--id", WEB, "--ns", "x", "--sa", "y"),
    2,
    /either --id or --ns/,
  );
  assertOneLineError(await w.meshca("issue", "--ns", "x"), 2, /--ns and --sa go together/);
  assertOneLineError(
    await w.meshca("issue", "--id", "spiffe://other.td/ns/a/sa/b"),
    2,
    /not in this CA's trust domain/,
  );
  assertOneLineError(await w.meshca("issue", "--id", "spiffe://weft.local/a/../b"), 2, /E_USAGE/);
  assertOneLineError(
    await w.meshca("issue", "--ns", "a", "--sa", "b", "--ttl", "5x"),
    2,
    /not a duration; use e\.g\. 30s, 15m, 24h, 7d/,
  );
  assertOneLineError(await w.meshca("issue", "--ns", "a", "--sa", "b", "--ttl", "3600"), 2, /not a duration/);
  assertOneLineError(await w.meshca("issue", "--ns", "a", "--sa", "b", "--key-alg", "dsa"), 2, /ecdsa-p256/);
  assertOneLineError(await w.meshca("issue", "--ns", "a", "--sa", "b", "--bogus"), 2, /unknown option/);
  assertOneLineError(await w.meshca("frobnicate"), 2, /unknown command/);
  const bare = await w.meshca("token");
  assert.equal(bare.code, 2, "a command group without its subcommand is a usage error");
  assert.match(bare.stderr, /create/);
});

test("inspect summarises a chain: ID, subject, issuer, serial, validity with countdown, key, CA or leaf", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  await w.ok("issue", "--ns", "default", "--sa", "web");
  w.clock.advance(60_000);
  const out = (await w.ok("inspect", "certs/issued/default-web/chain.pem")).stdout;
  assert.match(out, /certificate 1 of 2: leaf/);
  assert.match(out, /certificate 2 of 2: intermediate CA/);
  assert.match(out, new RegExp(`SPIFFE ID:\\s+${WEB}`));
  assert.match(out, /expires in 23h 59m/);
  assert.match(out, /key:\s+ECDSA P-256/);
  assert.match(out, /serial:\s+[0-9a-f]+/);
  assert.match(out, /issuer:\s+\S/);
  assert.match(out, /ext usage:\s+serverAuth, clientAuth/);
  await writeFile(w.p("junk.pem"), "not a certificate");
  assertOneLineError(await w.meshca("inspect", "junk.pem"), 1, /E_PEM: .*no PEM certificate/);
  assertOneLineError(await w.meshca("inspect", "missing.pem"), 1, /E_IO: .*no such file/);
});

test("verify exits 0 for a valid SVID and 1 with the broken rule otherwise", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  await w.ok("init", "--trust-domain", "weft.local", "--dir", "other");
  await w.ok("issue", "--ns", "default", "--sa", "web");
  const chain = "certs/issued/default-web/chain.pem";
  assert.match((await w.ok("verify", chain)).stdout, new RegExp(`valid: ${WEB}`));
  await w.ok("verify", chain, "--id", WEB);
  await w.ok("verify", chain, "--bundle", "certs/issued/default-web/bundle.pem");
  assertOneLineError(
    await w.meshca("verify", chain, "--id", "spiffe://weft.local/ns/default/sa/api"),
    1,
    /E_SVID: .*not spiffe/,
  );
  assertOneLineError(await w.meshca("verify", chain, "--dir", "other"), 1, /E_SVID/);
  w.clock.advance(25 * 3_600_000);
  assertOneLineError(await w.meshca("verify", chain), 1, /E_SVID/);
  assertOneLineError(await w.meshca("verify", chain, "--id", "not-an-id"), 2, /--id/);
});

test("verify --bundle takes the trust domain from the bundle, never from the leaf it checks", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  await w.ok("bundle", "--out", "bundle.pem");
  // A leaf for another trust domain, signed under this CA's intermediate (what a stolen intermediate key
  // or a careless sign could produce): it must not vouch for its own trust domain.
  const foreign = await leafUnder(
    {
      intermediateKeyPem: await readFile(w.p("certs/intermediate-key.pem"), "utf8"),
      intermediateCertPem: await readFile(w.p("certs/intermediate.pem"), "utf8"),
    },
    { uri: "spiffe://other.test/ns/default/sa/web", now: w.clock.now() },
  );
  await writeFile(w.p("foreign.pem"), foreign.chainPem);
  assertOneLineError(
    await w.meshca("verify", "foreign.pem", "--bundle", "bundle.pem"),
    1,
    /E_SVID: spiffe:\/\/other\.test\/ns\/default\/sa\/web is not in trust domain weft\.local/,
  );
  assertOneLineError(
    await w.meshca("verify", "foreign.pem", "--bundle", "bundle.pem", "--trust-domain", "other.test"),
    2,
    /differs from the trust domain the bundle names \(weft\.local\)/,
  );
  // A bundle whose root names no trust domain (an OpenSSL-made root) needs --trust-domain.
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-subj",
    "/CN=plain root",
    "-keyout",
    w.p("plain-key.pem"),
    "-out",
    w.p("plain.pem"),
    "-days",
    "1",
  ]);
  assertOneLineError(
    await w.meshca("verify", "foreign.pem", "--bundle", "plain.pem"),
    2,
    /names no trust domain .*give --trust-domain/,
  );
  assertOneLineError(
    await w.meshca("verify", "foreign.pem", "--bundle", "plain.pem", "--trust-domain", "other.test"),
    1,
    /E_SVID/,
  );
  await w.ok("issue", "--ns", "default", "--sa", "web");
  await w.ok("verify", "certs/issued/default-web/chain.pem", "--bundle", "bundle.pem", "--role", "client");
});

test("bundle prints the roots; --out is not overwritten without --force", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  const printed = (await w.ok("bundle")).stdout;
  assert.match(printed, /^-----BEGIN CERTIFICATE-----/);
  await w.ok("bundle", "--out", "bundle.pem");
  assert.equal((await readFile(w.p("bundle.pem"), "utf8")).trim(), printed.trim());
  assertOneLineError(await w.meshca("bundle", "--out", "bundle.pem"), 1, /E_EXISTS/);
  await w.ok("bundle", "--out", "bundle.pem", "--force");
});

test("token create prints the token once, stores a hash, and validates its terms", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  const r = await w.ok("token", "create", "--id", WEB, "--ttl", "15m", "--uses", "2");
  const token = r.stdout.trim();
  assert.match(token, /^wjt\.[A-Za-z0-9_-]{43}$/);
  assert.match(r.stderr, /2 use\(s\), expires .*\(expires in 15m\); it is shown only now/);
  const stored = await readFile(w.p("certs", "tokens.json"), "utf8");
  assert.ok(!stored.includes(token));
  assert.equal((await stat(w.p("certs", "tokens.json"))).mode & 0o777, 0o600);
  await w.ok("token", "create", "--id", "spiffe://weft.local/ns/batch/sa/*");
  const list = (await w.ok("token", "list")).stdout;
  assert.match(list, /active\s+0\/2\s+\S+\s+spiffe:\/\/weft\.local\/ns\/default\/sa\/web/);
  assert.ok(!list.includes(token));
  const ref = /^([0-9a-f]{12})/m.exec(list.split("\n")[1]!)![1]!;
  await w.ok("token", "revoke", ref);
  assert.match((await w.ok("token", "list")).stdout, new RegExp(`${ref}\\s+used`));
  assertOneLineError(await w.meshca("token", "create", "--id", WEB, "--uses", "0"), 2, /at least 1/);
  assertOneLineError(await w.meshca("token", "create", "--id", WEB, "--ttl", "soon"), 2, /not a duration/);
  assertOneLineError(await w.meshca("token", "create", "--id", "spiffe://other.td/x"), 2, /trust domain/);
  assertOneLineError(await w.meshca("token", "create"), 2, /--id/);
});

test("sign signs a CSR file, limited by --id-allow", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  const { csrPem } = await createCsr(SpiffeId.parse(WEB));
  await writeFile(w.p("web.csr"), csrPem);
  const r = await w.ok("sign", "web.csr", "--id-allow", "spiffe://weft.local/ns/default/sa/*", "--ttl", "2h");
  assert.match(r.stdout, /^-----BEGIN CERTIFICATE-----[\s\S]+-----BEGIN CERTIFICATE-----/);
  assert.match(r.stderr, new RegExp(`signed ${WEB}`));
  await writeFile(w.p("chain.pem"), r.stdout);
  await w.ok("bundle", "--out", "bundle.pem");
  await opensslVerify(w.p("bundle.pem"), w.p("chain.pem"), w.p("chain.pem"));
  assertOneLineError(
    await w.meshca("sign", "web.csr", "--id-allow", "spiffe://weft.local/ns/prod/sa/*"),
    1,
    /E_CSR_IDENTITY: .*does not allow/,
  );
  await w.ok("sign", "web.csr", "--out", "out.pem");
  assertOneLineError(await w.meshca("sign", "web.csr", "--out", "out.pem"), 1, /E_EXISTS/);
  await writeFile(
    w.p("bad.csr"),
    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
  );
  assertOneLineError(await w.meshca("sign", "bad.csr"), 1, /E_(PEM|CSR_INVALID)/);
});

test("rotate root keeps the old root in the bundle: old and new leaves both verify", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  await w.ok("issue", "--ns", "default", "--sa", "old");
  const r = await w.ok("rotate", "root");
  assert.match(r.stdout, /bundle now holds 2 root\(s\)/);
  await w.ok("issue", "--ns", "default", "--sa", "new");
  await w.ok("bundle", "--out", "bundle.pem");
  for (const name of ["default-old", "default-new"]) {
    await w.ok("verify", `certs/issued/${name}/chain.pem`);
    await opensslVerify(
      w.p("bundle.pem"),
      w.p("certs", "issued", name, "chain.pem"),
      w.p("certs", "issued", name, "cert.pem"),
    );
  }
  await w.ok("rotate", "intermediate");
  await w.ok("issue", "--ns", "default", "--sa", "newer");
  await w.ok("verify", "certs/issued/default-newer/chain.pem");
  await w.ok("verify", "certs/issued/default-old/chain.pem");
  assertOneLineError(await w.meshca("rotate", "everything"), 2, /root.*intermediate/);
});

test("export writes a PKCS#12 that openssl and keytool read; passwords never on argv without --insecure", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  await w.ok("issue", "--ns", "default", "--sa", "web");
  const id = ["--cert", "certs/issued/default-web/chain.pem", "--key", "certs/issued/default-web/key.pem"];
  assertOneLineError(
    await w.meshca("export", "--p12", "web.p12", ...id),
    2,
    /exactly one of --password-file/,
  );
  assertOneLineError(
    await w.meshca("export", "--p12", "web.p12", ...id, "--password", "s3cret"),
    2,
    /--insecure/,
  );
  assertOneLineError(
    await w.meshca("export", "--p12", "web.p12", ...id, "--password-env", "NOPE"),
    2,
    /NOPE is not set/,
  );
  await writeFile(w.p("pw.txt"), "correct horse\n");
  await w.ok("export", "--p12", "web.p12", ...id, "--password-file", "pw.txt", "--name", "web");
  assert.equal((await stat(w.p("web.p12"))).mode & 0o777, 0o600);
  const dump = await run("openssl", [
    "pkcs12",
    "-in",
    w.p("web.p12"),
    "-passin",
    `file:${w.p("pw.txt")}`,
    "-nokeys",
  ]);
  assert.match(dump.stdout, /BEGIN CERTIFICATE/);
  const list = await run("keytool", [
    "-list",
    "-keystore",
    w.p("web.p12"),
    "-storetype",
    "PKCS12",
    "-storepass",
    "correct horse",
  ]);
  assert.match(list.stdout, /web, .*PrivateKeyEntry/);
  assertOneLineError(
    await w.meshca("export", "--p12", "web.p12", ...id, "--password-file", "pw.txt"),
    1,
    /E_EXISTS/,
  );
  w.env.KS_PASS = "from-env";
  await w.ok("export", "--p12", "web.p12", ...id, "--password-env", "KS_PASS", "--force");
  await w.ok("export", "--p12", "web2.p12", ...id, "--password", "argv-pass", "--insecure");
});

test("serve runs the CA server until shutdown and serves the bundle", async (t) => {
  const w = await workspace(t);
  await w.ok("init", "--trust-domain", "weft.local");
  let stop!: () => void;
  const stopped = new Promise<void>((r) => {
    stop = r;
  });
  let stdout = "";
  const serving = new Promise<{ url: string }>((resolveServing, reject) => {
    runMeshca(["serve", "--listen", "127.0.0.1:0", "--san", "ca.weft.test"], {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: () => true },
      clock: w.clock,
      cwd: w.cwd,
      env: {},
      logger: new MemoryLogger(),
      waitForShutdown: () => stopped,
      onServing: resolveServing,
    }).then((code) => assert.equal(code, 0), reject);
  });
  const { url } = await serving;
  t.after(() => stop());
  assert.match(stdout, /serving weft\.local at https:\/\/127\.0\.0\.1:\d+/);
  const bundle = await readFile(w.p("certs", "bundle.pem"), "utf8").catch(
    async () => (await w.ok("bundle")).stdout,
  );
  const body = await new Promise<string>((resolveBody, reject) => {
    request(`${url}/v1/bundle`, { ca: bundle, agent: false }, (res) => {
      let text = "";
      res.on("data", (d) => {
        text += d;
      });
      res.on("end", () => resolveBody(text));
    })
      .on("error", reject)
      .end();
  });
  assert.match(body, /BEGIN CERTIFICATE/);
  assertOneLineError(await w.meshca("serve", "--listen", "nonsense"), 2, /host:port/);
});

test("every command's --help shows EXAMPLES and EXIT CODES and exits 0", async (t) => {
  const w = await workspace(t);
  const commands = [
    [],
    ["init"],
    ["issue"],
    ["sign"],
    ["token"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke"],
    ["serve"],
    ["bundle"],
    ["inspect"],
    ["verify"],
    ["export"],
    ["rotate"],
  ];
  for (const c of commands) {
    const r = await w.meshca(...c, "--help");
    assert.equal(r.code, 0, c.join(" "));
    assert.match(r.stdout, /EXAMPLES\n {2}\S/, `${c.join(" ")} --help has examples`);
    assert.match(r.stdout, /EXIT CODES\n {2}0 /, `${c.join(" ")} --help has exit codes`);
  }
});

test("the real entry point (node bin/meshca.js) maps outcomes to exit codes 0, 1 and 2", async (t) => {
  const cwd = await mkdtemp(join(tmpdir(), "weft-meshca-bin-"));
  t.after(() => rm(cwd, { recursive: true, force: true }));
  const bin = join(REPO, "bin", "meshca.js");
  const node = (...args: string[]) =>
    spawnSync(process.execPath, [bin, ...args], { cwd, encoding: "utf8", timeout: 60_000 });
  const init = node("init", "--trust-domain", "weft.local");
  assert.equal(init.status, 0, init.stderr);
  const again = node("init", "--trust-domain", "weft.local");
  assert.equal(again.status, 1);
  assert.match(again.stderr, /^meshca: E_EXISTS: .*\n$/);
  const bad = node("issue", "--ttl", "forever", "--ns", "a", "--sa", "b");
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
  const help = node("--help");
  assert.equal(help.status, 0);
  assert.match(help.stdout, /EXIT CODES/);
});
