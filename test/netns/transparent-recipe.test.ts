/**
 * The transparent-mode recipe of docs/transparent-mode.md, run step by step inside network namespaces:
 * a database-like app that listens on its pod IP only (redis-server --bind <pod IP>, as postgres with
 * listen_addresses = '<pod IP>'), file identities from `meshca issue`, `weft validate` as root, the
 * capture rules, and the sidecar as UID 1337 (examples/pod/sidecar.sh with IDENTITY_DIR and
 * IDENTITY_DIR). What a user hit before: identity files written by root in a 0700 folder are unreadable
 * by UID 1337 (validate as root now says so, naming the UID); `meshca issue --owner 1337` fixes it; an
 * app bound to its pod IP only is reached (transparent mode dials the pod address the connection was
 * sent to); the extra-YAML hook cannot repeat the `inbound:` key the script writes (it says so instead
 * of writing a broken weft.yaml).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { apps, createPodCluster, WEFT_HOME } from "../../src/netns/pods.ts";
import { weftCli } from "../helpers/cli.ts";
import { eventually } from "../helpers/eventually.ts";
import { namespacesOf, requireRoot } from "../helpers/netns.ts";

const run = promisify(execFile);
const TD = "weft.local";
const CLIENT = `spiffe://${TD}/ns/default/sa/client`;

async function validate(config: string): Promise<{ code: number; out: string }> {
  const r = await weftCli("validate", "-c", config);
  return { code: r.code, out: r.stdout + r.stderr };
}

const meshca = (...args: string[]) => run(process.execPath, [join(WEFT_HOME, "bin/meshca.js"), ...args]);

test("netns: the transparent recipe with file identities and an app on its pod IP", async (t) => {
  if (!requireRoot(t)) return;
  const cluster = await createPodCluster({ workloads: ["client"], tokenUses: 2 });
  t.after(async () => {
    await cluster.destroy();
    assert.deepEqual(await namespacesOf(cluster.net.id), [], "no namespace left behind");
  });
  const caDir = join(cluster.dir, "ca");

  // Step 2 as a user first did it: as root, without --owner. The folder is 0700, the key 0600, root's.
  const rootOnly = join(cluster.dir, "identity-root");
  await meshca("issue", "--dir", caDir, "--ns", "default", "--sa", "db", "--out", rootOnly);
  const config = (identity: string) =>
    [
      `trustDomain: ${TD}`,
      `identity: { files: { cert: ${identity}/chain.pem, key: ${identity}/key.pem, bundle: ${identity}/bundle.pem } }`,
      "inbound: { appAddress: 198.18.0.99 }",
      "",
    ].join("\n");
  await writeFile(join(cluster.dir, "weft-root.yaml"), config(rootOnly));
  const refused = await validate(join(cluster.dir, "weft-root.yaml"));
  assert.equal(refused.code, 1, "weft validate, run as root, checks as the proxy UID");
  assert.match(
    refused.out,
    /identity\.files\.key: \S+key\.pem is not readable by UID 1337 \(the proxy user\)/,
  );

  // Step 2 as the recipe says: --owner 1337. validate passes, still run as root.
  const identity = join(cluster.dir, "identity-db");
  await meshca(
    "issue",
    "--dir",
    caDir,
    "--ns",
    "default",
    "--sa",
    "db",
    "--out",
    identity,
    "--owner",
    "1337",
  );
  await writeFile(join(cluster.dir, "weft-db.yaml"), config(identity));
  const ok = await validate(join(cluster.dir, "weft-db.yaml"));
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /files readable by UID 1337/);

  // The extra-YAML hook cannot repeat a key sidecar.sh writes: a clear refusal, not a broken weft.yaml.
  const clash = await run("sh", [join(WEFT_HOME, "examples/pod/sidecar.sh")], {
    env: {
      ...process.env,
      WEFT_SA: "db",
      IDENTITY_DIR: identity,
      WEFT_EXTRA_YAML: "inbound: { mode: permissive }",
    },
  }).catch((e: { code: number; stderr: string }) => e);
  assert.equal((clash as { code: number }).code, 2);
  assert.match(
    (clash as { stderr: string }).stderr,
    /repeats the key inbound, which sidecar\.sh writes itself; use APP_ADDRESS/,
  );

  // Steps 3-6: the db pod: redis bound to its pod IP only, capture rules, the sidecar as UID 1337 with
  // the file identity; only the client may reach 6379.
  const db = await cluster.addPod({
    name: "db",
    sa: "db",
    app: (dir, ip4) => apps.redis(dir, 6379, ip4),
    identityDir: identity,
    extraYaml: [
      "policy:",
      "  default: deny",
      `  rules: [ { name: db-clients, ports: [6379], allow: ["${CLIENT}"] } ]`,
    ],
  });
  assert.match(
    await db.exec("ss", ["-Hltn", "sport = :6379"]),
    new RegExp(`${db.ip4.replace(/\./g, "\\.")}:6379`),
  );
  assert.doesNotMatch(await db.exec("ss", ["-Hltn", "sport = :6379"]), /(0\.0\.0\.0|127\.0\.0\.1):6379/);
  const certs = JSON.parse(await db.admin("/certs")) as { spiffeId: string; source: string };
  assert.equal(certs.spiffeId, `spiffe://${TD}/ns/default/sa/db`);
  assert.equal(certs.source, "files");

  // Step 7: a client pod reaches the db by its address, transparently, through mTLS.
  await cluster.writeServices([{ name: "db", ports: [6379], endpoints: [{ address: db.ip4 }] }]);
  const client = await cluster.addPod({ name: "client", sa: "client" });
  let last = "";
  await eventually(
    () =>
      `the client to reach redis on the db pod's IP through the mesh (redis-cli: ${last}; client sidecar: ${client.sidecar?.output().slice(-1500)}; db sidecar: ${db.sidecar?.output().slice(-1500)})`,
    async () => {
      last = (
        await client.exec("redis-cli", ["-h", db.ip4, "-p", "6379", "PING"]).catch((e: Error) => e.message)
      ).trim();
      return last === "PONG";
    },
    { timeoutMs: 30_000, intervalMs: 100 },
  );
  assert.equal(
    (await client.exec("redis-cli", ["-h", db.ip4, "-p", "6379", "SET", "recipe", "ok"])).trim(),
    "OK",
  );
  const metrics = await db.exec("curl", ["-s", `http://${db.ip4}:15020/metrics`]);
  assert.match(
    metrics,
    new RegExp(
      `weft_policy_allowed_total\\{peer_identity="${CLIENT.replace(/[./]/g, "\\$&")}",port="6379",rule="db-clients"\\} [1-9]`,
    ),
  );
  assert.match(
    metrics,
    /weft_tcp_connections_closed_total\{direction="inbound",service="db",peer_identity="spiffe:\/\/weft\.local\/ns\/default\/sa\/client",reason="closed"\} [1-9]/,
  );
});
