#!/usr/bin/env node
// `npm run build`: compiles src/ to dist/ with tsc (tsconfig.build.json: `.ts` imports rewritten to `.js`,
// declarations beside), then removes from dist/ what no source file produces any more (a renamed or
// deleted module), so an incremental build never ships stale code. Quick when nothing changed (tsc's
// build info lives in node_modules/.cache/weft/).
// Then esbuild bundles the `weft` command (dist/cli/weft-main.js and what it imports, the production
// dependencies included, koffi's native binding excepted) into dist/weft/: weft.js plus chunks for what
// loads lazily (the CA client, validate, the k8s verbs). A sidecar then evaluates a few large modules
// instead of ~400 small ones: measured 81.3 → 74.3 MiB RSS at rest and ready in about half the time
// (commit message of this change). bin/weft.js runs the bundle; the package's library entries
// (`exports`) and meshca stay on tsc's one-file-per-module output.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules/typescript/bin/tsc");
if (!existsSync(tsc)) {
  console.error(
    "build: E_BUILD: typescript is not installed; run npm ci first (the build needs the dev dependencies)",
  );
  process.exit(1);
}
// tsc's build info says what it emitted last time; when dist/ lost files since (deleted by hand, a fresh
// checkout with an old cache), forget it so that tsc emits everything again.
const info = join(root, "node_modules/.cache/weft/build.tsbuildinfo");
const src = join(root, "src");
const dist = join(root, "dist");
const sources = walk(src).filter((f) => f.endsWith(".ts"));
if (sources.some((f) => !existsSync(join(dist, relative(src, f)).replace(/\.ts$/, ".js"))))
  rmSync(info, { force: true });
const r = spawnSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], {
  stdio: "inherit",
  cwd: root,
});
if (r.status !== 0) {
  console.error("build: E_BUILD: tsc failed (errors above)");
  process.exit(r.status ?? 1);
}

function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}
const bundleDir = join(dist, "weft");
for (const file of walk(dist)) {
  const rel = relative(dist, file);
  if (file.startsWith(`${bundleDir}/`)) continue;
  const stem = rel.replace(/\.d\.ts$|\.js$/, "");
  if (stem === rel || !existsSync(join(src, `${stem}.ts`))) rmSync(file);
}
// Folders left empty by the removal above.
function prune(dir) {
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) prune(p);
  }
  if (dir !== dist && readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
}
prune(dist);

/**
 * `import ... from "node:<module>"` in an ES module makes Node build an ES facade of the built-in module,
 * which reads every export, getters included, and several getters load more of Node: node:http's
 * WebSocket, CloseEvent and MessageEvent load undici (106 ms and 12 MiB of RSS in a bare Node 24),
 * node:fs's `promises` loads fs/promises and readline, node:crypto's `webcrypto` and `subtle` the Web
 * Crypto implementation, node:process and node:util their own lazy parts (measured in a bare Node 24:
 * +2.9 MiB for the fs facade, +4.1 for process, +3.2 for util, +1.2 for tls over
 * `process.getBuiltinModule`). So the bundle gets every built-in module from
 * `process.getBuiltinModule`, through a small module re-exporting its plain (non-getter) properties;
 * importing one of the getters fails the build ("No matching export"), it does not run.
 */
const builtinsWithoutFacade = {
  name: "node-builtins-without-es-facade",
  setup(b) {
    const builtins = new Set(builtinModules.filter((m) => !m.startsWith("_")));
    b.onResolve({ filter: /^(node:)?[a-z_/0-9]+$/ }, (args) => {
      const name = args.path.replace(/^node:/, "");
      if (args.kind !== "import-statement" || !builtins.has(name)) return undefined;
      return { path: `node:${name}`, namespace: "weft-builtin" };
    });
    b.onLoad({ filter: /.*/, namespace: "weft-builtin" }, (args) => {
      const mod = process.getBuiltinModule(args.path);
      const names = Object.keys(mod).filter(
        (k) =>
          /^[A-Za-z_$][\w$]*$/.test(k) && k !== "default" && !Object.getOwnPropertyDescriptor(mod, k)?.get,
      );
      return {
        contents: [
          `const m = process.getBuiltinModule(${JSON.stringify(args.path)});`,
          "export default m;",
          ...names.map((n) => `export const ${n} = m.${n};`),
        ].join("\n"),
        loader: "js",
      };
    });
  },
};

// The bundle, written afresh each time (its chunk names change with their content).
rmSync(bundleDir, { recursive: true, force: true });
const { build } = await import("esbuild");
await build({
  entryPoints: { weft: join(dist, "cli/weft-main.js") },
  outdir: bundleDir,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node22",
  // Loaded with createRequire at run time (libc.ts); a native addon cannot be bundled.
  external: ["koffi"],
  // The CommonJS dependencies inside (pino, prom-client, commander, yaml) call require() for node's
  // built-in modules, which an ES module does not have.
  banner: {
    js: 'import { createRequire as __weftRequire } from "node:module"; const require = __weftRequire(import.meta.url);',
  },
  chunkNames: "chunk-[hash]",
  plugins: [builtinsWithoutFacade],
  logLevel: "warning",
});
