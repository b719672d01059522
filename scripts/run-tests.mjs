#!/usr/bin/env node
// Runs every node:test suite under test/ through tsx, on the Node the package is tested on (the `node`
// dev dependency, Node 24 LTS: npm scripts put it first on PATH; run directly with an older node, this
// script starts itself again with that one). It builds dist/ first (quick when nothing changed): the
// CLIs the tests spawn (bin/weft.js, bin/meshca.js) run the compiled code. The files are listed here
// (the suites are .ts files, which `--test` does not find by itself).
// `node scripts/run-tests.mjs unit integration` limits the run to those folders; `WEFT_TEST_FILTER=word`
// to files whose path contains the word.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

const pinned = resolve("node_modules/.bin/node");
if (Number(process.versions.node.split(".")[0]) < 22 && existsSync(pinned)) {
  const again = spawnSync(pinned, process.argv.slice(1), { stdio: "inherit" });
  process.exit(again.status ?? 1);
}
const build = spawnSync(process.execPath, ["scripts/build.mjs"], { stdio: "inherit" });
if (build.status !== 0) process.exit(build.status ?? 1);

function find(dir) {
  let out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(find(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

const folders = process.argv.slice(2);
const filter = process.env.WEFT_TEST_FILTER;
let files = find("test").sort();
if (folders.length > 0) files = files.filter((f) => folders.some((d) => f.startsWith(join("test", d))));
if (filter) files = files.filter((f) => f.includes(filter));
if (files.length === 0) {
  console.error("run-tests: no test files matched");
  process.exit(1);
}
// As root, the network-namespace tests run sidecars as the proxy UID 1337 from this checkout: say so at
// once when that user cannot read it (a clone under a 0700 directory), instead of failing those tests with
// "Cannot find package 'tsx'".
if (process.getuid?.() === 0 && files.some((f) => f.startsWith(join("test", "netns")))) {
  const probe = resolve("node_modules/tsx/package.json");
  const r = existsSync(probe)
    ? spawnSync("setpriv", ["--reuid=1337", "--regid=1337", "--clear-groups", "--", "cat", probe], {
        stdio: "ignore",
      })
    : undefined;
  if (r && !r.error && r.status !== 0) {
    console.error(
      `run-tests: E_CHECKOUT_UNREADABLE: the network-namespace tests run sidecars as UID 1337, which cannot read ${probe}; ` +
        `clone into a directory every user can enter (e.g. chmod o+rx on ${resolve(".")} and its parents)`,
    );
    process.exit(1);
  }
}
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=2", "--test-timeout=300000", ...files],
  { stdio: "inherit" },
);
process.exit(result.status ?? 1);
