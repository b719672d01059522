/**
 * The package as users get it: `npm pack` (which builds dist/ first), then the tarball installed into an
 * empty folder with `npm install --offline` (no registry: the production dependencies travel inside the
 * tarball, `bundleDependencies`). From that folder `weft --version`, `meshca --version` and `weft proxy`
 * run the compiled code on this Node, and the install holds no TypeScript sources and no build tools.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { test } from "node:test";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { sidecarFiles, terminate, whenReady } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

const pkg = JSON.parse(readFileSync("package.json", "utf8")) as {
  name: string;
  version: string;
  dependencies: Record<string, string>;
  bundleDependencies: boolean;
};
/** This Node first on PATH: the `#!/usr/bin/env node` lines of the installed bins find it. */
const PATH = [dirname(process.execPath), process.env.PATH ?? ""].join(delimiter);

test("npm pack, then the tarball installed offline into an empty folder: weft and meshca run compiled code", async (t) => {
  const work = await mkdtemp(join(tmpdir(), "weft-pack-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  const env = { ...process.env, PATH, npm_config_update_notifier: "false", npm_config_fund: "false" };

  const packed = spawnSync("npm", ["pack", "--json", "--pack-destination", work], { env, encoding: "utf8" });
  assert.equal(packed.status, 0, packed.stderr);
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("["))) as Array<{
    name: string;
    filename: string;
    files: Array<{ path: string }>;
  }>;
  assert.equal(info!.name, pkg.name);
  assert.match(pkg.name, /^@[a-z0-9-]+\//, "a scoped name, which no one else can publish");
  const paths = info!.files.map((f) => f.path);
  for (const p of paths.filter((p) => !p.startsWith("node_modules/"))) {
    assert.ok(
      p === "package.json" || p === "README.md" || p.startsWith("bin/") || p.startsWith("dist/"),
      `${p} does not belong in the package`,
    );
    assert.ok(!p.endsWith(".ts") || p.endsWith(".d.ts"), `${p}: a TypeScript source in the package`);
  }
  assert.equal(pkg.bundleDependencies, true, "every production dependency travels in the tarball");
  for (const dep of Object.keys(pkg.dependencies)) {
    assert.ok(paths.includes(`node_modules/${dep}/package.json`), `${dep} is not bundled`);
  }
  for (const p of [
    "bin/weft.js",
    "bin/meshca.js",
    "dist/weft/weft.js",
    "dist/cli/weft-main.js",
    "dist/cli/meshca-main.js",
  ]) {
    assert.ok(paths.includes(p), `the package lacks ${p}`);
  }

  const app = join(work, "app");
  const installed = spawnSync(
    "npm",
    ["install", "--offline", "--no-audit", "--no-fund", "--prefix", app, join(work, info!.filename)],
    { env, encoding: "utf8" },
  );
  assert.equal(installed.status, 0, `npm install --offline failed:\n${installed.stderr}`);
  const modules = [
    ...(await readdir(join(app, "node_modules"))),
    ...(await readdir(join(app, "node_modules", pkg.name, "node_modules"))),
  ];
  for (const tool of ["tsx", "typescript", "esbuild", "@biomejs", "@types", "node"]) {
    assert.ok(!modules.includes(tool), `${tool} was installed with the package`);
  }
  const bin = (name: string) => join(app, "node_modules/.bin", name);
  assert.ok(existsSync(bin("weft")) && existsSync(bin("meshca")));

  for (const name of ["weft", "meshca"]) {
    const r = spawnSync(bin(name), ["--version"], { env, encoding: "utf8", cwd: app });
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(
        `^${name} ${pkg.version.replaceAll(".", "\\.")} \\(node ${process.version}, OpenSSL ${process.versions.openssl.replaceAll(".", "\\.")}\\)\n$`,
      ),
    );
  }

  const files = await sidecarFiles(t);
  const child = spawn(bin("weft"), ["proxy", "--config", files.config], {
    env,
    cwd: app,
    stdio: ["ignore", "ignore", "pipe"],
  });
  const admin = await whenReady(t, child);
  const certs = (await (await fetch(`http://${admin}/certs`)).json()) as Record<string, unknown>;
  assert.equal(certs.spiffeId, "spiffe://weft.local/ns/default/sa/frontend");
  assert.equal(await terminate(child), 0);
});
