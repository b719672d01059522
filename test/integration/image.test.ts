/**
 * The image, without a Docker engine: the Dockerfile's steps run on the host, read from the Dockerfile
 * itself. The build stage's COPY and RUN steps run in a scratch copy (npm offline, from the cache `npm ci`
 * filled); the final stage's `COPY --from=build` steps then make /opt/weft under a scratch root. The test
 * checks that it holds compiled output and production dependencies only, and runs the ENTRYPOINT as the
 * image's USER (UID 1337) in a private mount namespace whose root filesystem is read-only (what
 * `readOnlyRootFilesystem: true` gives): `--version`, `meshca inspect`, `weft proxy` until ready, and the
 * HEALTHCHECK command, healthy while the sidecar is ready and unhealthy once it has stopped.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, relative } from "node:path";
import { test } from "node:test";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import { requireRoot } from "../helpers/netns.ts";
import { sidecarFiles, terminate, whenReady } from "../helpers/weft-process.ts";

checkLeaksAtEnd();

interface Step {
  readonly op: string;
  readonly args: string;
}
interface Stage {
  readonly name: string;
  readonly steps: Step[];
}

/** The Dockerfile's stages and their instructions (continuation lines joined, comments dropped). */
function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const logical = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  for (const line of logical) {
    const m = /^(\S+)\s+(.*)$/.exec(line);
    assert.ok(m, `Dockerfile line: ${line}`);
    const op = m[1]!.toUpperCase();
    if (op === "FROM") stages.push({ name: /\sAS\s+(\S+)/i.exec(m[2]!)?.[1] ?? "", steps: [] });
    else stages.at(-1)!.steps.push({ op, args: m[2]! });
  }
  return stages;
}

const words = (s: string) => s.split(/\s+/).filter(Boolean);
const PATH = [dirname(process.execPath), process.env.PATH ?? ""].join(delimiter);

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

test("the Dockerfile's steps on the host: compiled output and production dependencies only, UID 1337, read-only root", async (t) => {
  if (!requireRoot(t, "needs root (a mount namespace with a read-only root, and setpriv to UID 1337)"))
    return;
  const stages = parseDockerfile(readFileSync("Dockerfile", "utf8"));
  assert.equal(stages.length, 2, "a build stage and the image");
  const [build, image] = stages as [Stage, Stage];
  const root = await mkdtemp(join(tmpdir(), "weft-image-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  await chmod(root, 0o755);
  const inRoot = (p: string) => join(root, p);

  // Stage 1, as written: WORKDIR, COPY from the checkout, RUN (with npm kept offline).
  let workdir = "/";
  for (const { op, args } of build.steps) {
    if (op === "WORKDIR") {
      workdir = args;
      await mkdir(inRoot(workdir), { recursive: true });
    } else if (op === "COPY") {
      const parts = words(args);
      const dest = join(workdir, parts.pop()!);
      for (const src of parts) {
        const target = dest.endsWith("/") || parts.length > 1 ? join(dest, src.split("/").at(-1)!) : dest;
        await cp(src, inRoot(target), { recursive: true });
      }
    } else if (op === "RUN") {
      const r = spawnSync("sh", ["-c", args], {
        cwd: inRoot(workdir),
        env: { ...process.env, PATH, npm_config_offline: "true", npm_config_update_notifier: "false" },
        encoding: "utf8",
      });
      const hint = /ENOTCACHED/.test(r.stderr)
        ? "\nnpm's cache lacks a package of package-lock.json: run `npm ci` (it fills the cache), then the test"
        : "";
      assert.equal(r.status, 0, `RUN ${args}\n${r.stdout}\n${r.stderr}${hint}`);
    } else assert.fail(`the test does not reproduce ${op} in the build stage`);
  }

  // The image: only what its COPY steps bring.
  let appDir = "/";
  let user = "0";
  let entrypoint: string[] = [];
  let healthcheck = "";
  for (const { op, args } of image.steps) {
    if (op === "WORKDIR") appDir = args;
    else if (op === "COPY") {
      const parts = words(args);
      const from = parts[0]!.startsWith("--from=") ? parts.shift()!.slice(7) : undefined;
      const [src, dest] = parts as [string, string];
      const target = inRoot(join(dest.startsWith("/") ? "" : appDir, dest));
      if (from !== undefined) {
        assert.equal(from, build.name);
        await cp(inRoot(src), target, { recursive: true });
      } else await cp(src, target, { recursive: true });
    } else if (op === "USER") user = args;
    else if (op === "ENTRYPOINT") entrypoint = JSON.parse(args) as string[];
    else if (op === "HEALTHCHECK") healthcheck = /\bCMD\s+(.*)$/.exec(args)![1]!;
  }
  const app = inRoot(appDir);
  assert.deepEqual(readdirSync(app).sort(), ["bin", "dist", "examples", "node_modules", "package.json"]);
  for (const f of walk(join(app, "dist"))) {
    assert.ok(f.endsWith(".js") || f.endsWith(".d.ts"), `${relative(app, f)} is not compiled output`);
  }
  const lock = JSON.parse(readFileSync("package-lock.json", "utf8")) as {
    packages: Record<string, { dev?: boolean; optional?: boolean }>;
  };
  const production = Object.entries(lock.packages)
    .filter(([p, v]) => p.startsWith("node_modules/") && !v.dev)
    .map(([p]) => p);
  const present = (p: string) => existsSync(join(app, p, "package.json"));
  for (const p of production) {
    assert.ok(present(p) || lock.packages[p]!.optional, `production dependency ${p} is missing`);
  }
  for (const p of Object.keys(lock.packages).filter((p) => lock.packages[p]!.dev)) {
    assert.ok(!present(p), `dev dependency ${p} is in the image`);
  }
  assert.equal(user, "1337");
  assert.ok(healthcheck.includes("/ready"), "the HEALTHCHECK asks /ready");

  // Run as the image does: its USER, its WORKDIR, a read-only root.
  const files = await sidecarFiles(t, 1337);
  const jail = (cmd: string[]) => [
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    'mount -o remount,bind,ro / && exec setpriv --reuid=1337 --regid=1337 --clear-groups -- "$@"',
    "sh",
    ...cmd,
  ];
  const env = {
    PATH: [join(app, "bin"), PATH].join(delimiter),
    NODE_ENV: "production",
    HOME: "/nonexistent",
  };
  const image_ = (args: string[]) =>
    entrypoint.map((a) => (a === "node" ? process.execPath : a.startsWith("/") ? inRoot(a) : a)).concat(args);
  const run = (cmd: string[], extra: Record<string, string> = {}) =>
    spawnSync("unshare", jail(cmd), { cwd: app, env: { ...env, ...extra }, encoding: "utf8" });

  const probe = run(["touch", join(files.dir, "probe")]);
  assert.notEqual(probe.status, 0, "the root filesystem is read-only in the jail");
  assert.match(probe.stderr, /Read-only file system/);
  const id = run(["id", "-u"]);
  assert.equal(id.stdout.trim(), "1337", id.stderr);

  const version = run(image_(["--version"]));
  assert.equal(version.status, 0, version.stderr);
  assert.match(version.stdout, /^weft \d+\.\d+\.\d+ \(node v24\./);
  const inspect = run([process.execPath, join(app, "bin/meshca.js"), "inspect", files.cert]);
  assert.equal(inspect.status, 0, inspect.stderr);
  assert.match(inspect.stdout, /SPIFFE ID: {3}spiffe:\/\/weft\.local\/ns\/default\/sa\/frontend/);

  const child = spawn("unshare", jail(image_(["proxy", "--config", files.config])), {
    cwd: app,
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  const admin = await whenReady(t, child);
  const health = (extra: Record<string, string>) => run(["sh", "-c", healthcheck], extra);
  assert.equal(health({ WEFT_ADMIN: admin }).status, 0, "healthy while /ready says ready");
  assert.equal(await terminate(child), 0);
  assert.equal(health({ WEFT_ADMIN: admin }).status, 1, "unhealthy once the sidecar has stopped");
});
