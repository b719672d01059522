#!/usr/bin/env node
// `npm run build`: compiles src/ to dist/ with tsc (tsconfig.build.json: `.ts` imports rewritten to `.js`,
// declarations beside), then removes from dist/ what no source file produces any more (a renamed or
// deleted module), so an incremental build never ships stale code. Quick when nothing changed (tsc's
// build info lives in node_modules/.cache/weft/).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
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
for (const file of walk(dist)) {
  const rel = relative(dist, file);
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
