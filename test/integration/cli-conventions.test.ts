/**
 * What both command lines do the same way (src/cli/conventions.ts): `--version` with Node's and
 * OpenSSL's versions; `--json` output that parses, on every command that prints data; completion
 * scripts that bash and zsh run; a quiet exit 0 when stdout's reader has gone; and every error as one
 * line `name: E_CODE: ...`, usage errors and port clashes included.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { codedMessage, errorLine, versionLine } from "../../src/cli/conventions.ts";
import { WeftError } from "../../src/core/errors.ts";
import { type CliResult, meshcaWorkspace, weftCli } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { sidecarFiles } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

const WEB = "spiffe://weft.local/ns/default/sa/web";

function json(r: CliResult): Record<string, unknown> {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** One line on stderr in the `name: E_CODE: message` form, and the exit code. */
function assertErrorLine(r: CliResult, name: string, code: number, pattern: RegExp): void {
  assert.equal(r.code, code, `exit ${r.code}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  const last = lines.at(-1)!;
  assert.match(last, new RegExp(`^${name}: E_[A-Z_]+: \\S`), r.stderr);
  assert.match(last, pattern);
}

function holdPort(t: TestContext): Promise<number> {
  const server: Server = createServer();
  t.after(() => server.close());
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port)),
  );
}

test("--version on both CLIs names the version, Node and OpenSSL", async (t) => {
  const { meshca } = await meshcaWorkspace(t);
  for (const [name, r] of [
    ["weft", await weftCli("--version")],
    ["meshca", await meshca("-V")],
  ] as const) {
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `${versionLine(name)}\n`);
    assert.match(
      r.stdout,
      new RegExp(`^${name} \\d+\\.\\d+\\.\\d+ \\(node v\\d+\\.\\d+\\.\\d+, OpenSSL \\d`),
    );
  }
});

test("--json on every command that prints data gives one JSON document", async (t) => {
  const { meshca, ok, p } = await meshcaWorkspace(t);
  const init = json(await meshca("init", "--trust-domain", "weft.local", "--json"));
  assert.equal(init.trustDomain, "weft.local");
  assert.match(String((init.root as Record<string, unknown>).sha256), /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);

  const issued = json(await meshca("issue", "--ns", "default", "--sa", "web", "--json"));
  assert.equal(issued.spiffeId, WEB);
  const files = issued.files as Record<string, string>;
  assert.equal(files.chain, p("certs/issued/default-web/chain.pem"));

  const inspect = json(await meshca("inspect", files.chain!, "--json"));
  const certs = inspect.certificates as Array<Record<string, unknown>>;
  assert.deepEqual(
    certs.map((c) => c.role),
    ["leaf", "intermediate CA"],
  );
  assert.deepEqual(certs[0]!.spiffeIds, [WEB]);
  assert.equal(certs[0]!.notAfter, issued.notAfter);
  assert.equal(certs[0]!.key, "ECDSA P-256");

  const verified = json(await meshca("verify", files.chain!, "--json"));
  assert.deepEqual({ valid: verified.valid, spiffeId: verified.spiffeId }, { valid: true, spiffeId: WEB });
  const wrongId = await meshca("verify", files.chain!, "--id", "spiffe://weft.local/ns/x/sa/y", "--json");
  assert.equal(wrongId.code, 1, "an invalid chain still exits 1");
  assert.deepEqual(JSON.parse(wrongId.stdout), {
    valid: false,
    code: "E_SVID",
    reason: "unexpected_id",
    message: `E_SVID: the chain is valid but names ${WEB}, not spiffe://weft.local/ns/x/sa/y`,
  });
  assertErrorLine(wrongId, "meshca", 1, /E_SVID: the chain is valid but names/);

  const created = json(await meshca("token", "create", "--id", WEB, "--json"));
  assert.match(String(created.token), /\S{20,}/);
  const listed = json(await meshca("token", "list", "--json"));
  assert.deepEqual(
    (listed.tokens as Array<Record<string, unknown>>).map((x) => [
      x.ref,
      x.state,
      x.uses,
      x.maxUses,
      x.idPattern,
    ]),
    [[created.ref, "active", 0, 1, WEB]],
  );
  assert.deepEqual(json(await meshca("token", "revoke", String(created.ref), "--json")), {
    revoked: created.ref,
  });
  const bundle = json(await meshca("bundle", "--json"));
  assert.equal((bundle.roots as unknown[]).length, 1);
  assert.match(String(bundle.pem), /^-----BEGIN CERTIFICATE-----/);
  const rotated = json(await meshca("rotate", "root", "--json"));
  assert.equal((rotated.roots as unknown[]).length, 2, "the new root joins the bundle");

  await writeFile(p("pw"), "secret\n");
  const exported = json(
    await meshca(
      "export",
      "--p12",
      p("web.p12"),
      "--cert",
      files.chain!,
      "--key",
      files.key!,
      "--password-file",
      p("pw"),
      "--json",
    ),
  );
  assert.equal(exported.file, p("web.p12"));
  assert.ok(Number(exported.bytes) > 500);
  await ok("token", "list");

  const rules = json(await weftCli("iptables", "print", "--json"));
  assert.match(String(rules.ipv4), /^\*nat\n/);
  assert.match(String(rules.ipv6), /REDIRECT --to-ports 15001/);
});

test("completion scripts: bash and zsh complete commands, options, fixed values and files", async (t) => {
  const bash = (await weftCli("completion", "bash")).stdout;
  const complete = (...words: string[]) => {
    const r = spawnSync(
      "bash",
      [
        "-c",
        `${bash}\nCOMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); _weft_complete; printf '%s\\n' "\${COMPREPLY[@]}"`,
        "bash",
        ...words,
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split("\n").filter(Boolean);
  };
  const top = complete("weft", "");
  for (const c of ["proxy", "validate", "iptables", "completion"])
    assert.ok(top.includes(c), `${c} in ${top}`);
  assert.ok(
    top.every((c) => /^[a-z][a-z0-9-]*$/.test(c)),
    "commands only, at the top",
  );
  assert.deepEqual(complete("weft", "ip"), ["iptables"]);
  assert.deepEqual(complete("weft", "iptables", ""), ["install", "uninstall", "print"]);
  assert.deepEqual(complete("weft", "iptables", "install", "--back"), ["--backend"]);
  assert.deepEqual(complete("weft", "iptables", "print", "--backend", ""), ["auto", "nft", "legacy"]);
  assert.deepEqual(complete("weft", "completion", ""), ["bash", "zsh"]);
  assert.deepEqual(complete("weft", "iptables", "print", "--admin-port", ""), [], "a port: nothing to offer");
  const files = await sidecarFiles(t);
  assert.deepEqual(complete("weft", "proxy", "--config", join(files.dir, "weft.y")), [files.config]);
  assert.ok(bash.includes("complete -o default -F _weft_complete weft"));

  const zsh = (await meshcaWorkspace(t).then((w) => w.meshca("completion", "zsh"))).stdout;
  assert.match(zsh, /^#compdef meshca\n/);
  const zshOk = spawnSync("zsh", ["--version"]).status === 0;
  if (!zshOk) {
    if (process.env.CI === "true") assert.fail("zsh is not installed (.ci/run installs it)");
    t.diagnostic("zsh is not installed: its completion script was not run");
    return;
  }
  const zcomplete = (...words: string[]) => {
    const r = spawnSync(
      "zsh",
      [
        "-c",
        `compdef() { :; }; compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@"; }; _files() { print -r -- "<files>"; }
${zsh}
words=("$@"); CURRENT=$#words; _meshca`,
        "zsh",
        ...words,
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split("\n").filter(Boolean);
  };
  assert.deepEqual(zcomplete("meshca", "token", ""), ["create", "list", "revoke"]);
  assert.deepEqual(zcomplete("meshca", "token", "list", "--"), ["--dir", "--json", "--help"]);
  assert.deepEqual(zcomplete("meshca", "issue", "--key-alg", "").slice(0, 2), ["ecdsa-p256", "ecdsa-p384"]);
  assert.deepEqual(zcomplete("meshca", "inspect", ""), ["<files>"]);
  assert.deepEqual(zcomplete("meshca", "issue", "--ttl", ""), [], "a duration: nothing to offer");
});

test("a closed stdout ends the CLI quietly with exit 0 (meshca inspect chain.pem | head -1)", async (t) => {
  const { ok, p } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  await ok("issue", "--ns", "default", "--sa", "web");
  const chain = p("certs/issued/default-web/chain.pem");
  // The reader is gone before the CLI writes anything: every write fails with EPIPE.
  const child = spawn(process.execPath, ["bin/meshca.js", "inspect", chain], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.destroy();
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  assert.equal(stderr, "", "no stack trace");
  assert.equal(code, 0);
  // And as a user types it.
  const piped = spawnSync(
    "sh",
    ["-c", `"$0" bin/meshca.js inspect "$1" | head -1`, process.execPath, chain],
    {
      encoding: "utf8",
    },
  );
  assert.equal(piped.stdout, "certificate 1 of 2: leaf\n");
  assert.equal(piped.stderr, "");
});

test("every error is one line `name: E_CODE: what and the fix`, usage errors and port clashes included", async (t) => {
  const { meshca } = await meshcaWorkspace(t);
  assertErrorLine(
    await weftCli("proxy", "-c", "x.yaml", "--bogus"),
    "weft",
    2,
    /E_USAGE: unknown option '--bogus'.*weft proxy --help/,
  );
  assertErrorLine(
    await weftCli("proxy"),
    "weft",
    2,
    /E_USAGE: required option '-c, --config <file>' not specified/,
  );
  assertErrorLine(
    await weftCli("iptables", "print", "--backend", "x"),
    "weft",
    2,
    /E_USAGE: .*Allowed choices are auto, nft, legacy/,
  );
  assertErrorLine(await weftCli("nope"), "weft", 2, /E_USAGE: unknown command 'nope'/);
  assertErrorLine(await weftCli("iptables"), "weft", 2, /E_USAGE: a command is missing/);
  assertErrorLine(
    await meshca("inspect"),
    "meshca",
    2,
    /E_USAGE: missing required argument 'cert.pem'.*meshca inspect --help/,
  );
  assertErrorLine(
    await meshca("issue", "--ttl", "soon"),
    "meshca",
    2,
    /E_USAGE: option '--ttl <duration>' argument 'soon' is invalid/,
  );
  assertErrorLine(await meshca("token"), "meshca", 2, /E_USAGE: a command is missing/);
  assertErrorLine(
    await meshca("inspect", "/nonexistent.pem"),
    "meshca",
    1,
    /E_IO: cannot read the certificate file/,
  );

  // Port clashes: the admin port of `weft proxy`, the CA server's --listen.
  const taken = await holdPort(t);
  const files = await sidecarFiles(t);
  const clash = join(files.dir, "clash.yaml");
  const { readFile } = await import("node:fs/promises");
  await writeFile(
    clash,
    (await readFile(files.config, "utf8")).replace(
      "admin: { address: 127.0.0.1, port: 0 }",
      `admin: { address: 127.0.0.1, port: ${taken} }`,
    ),
  );
  assertErrorLine(
    await weftCli("proxy", "-c", clash),
    "weft",
    1,
    new RegExp(
      `E_ADDR_IN_USE: the admin server cannot listen on 127\\.0\\.0\\.1:${taken}: the port is in use by another process; .*set listeners\\.admin\\.port to a free port`,
    ),
  );
  await meshca("init", "--trust-domain", "weft.local");
  assertErrorLine(
    await meshca("serve", "--listen", `127.0.0.1:${taken}`),
    "meshca",
    1,
    new RegExp(
      `E_ADDR_IN_USE: the CA server cannot listen on 127\\.0\\.0\\.1:${taken}: .*set --listen to a free port`,
    ),
  );

  // What is not a WeftError gets a code too.
  assert.equal(codedMessage(new WeftError("E_PEM", "bad")), "E_PEM: bad");
  const sys = Object.assign(new Error("EACCES: permission denied, open '/x'"), {
    code: "EACCES",
    syscall: "open",
  });
  assert.equal(errorLine("weft", sys), "weft: E_IO: EACCES: permission denied, open '/x'");
  assert.match(
    errorLine("meshca", new TypeError("x is undefined\n  at y")),
    /^meshca: E_INTERNAL: x is undefined at y \(unexpected: please report it/,
  );
});
