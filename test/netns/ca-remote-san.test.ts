/**
 * The CA server for more than one host, in network namespaces: `meshca serve --listen 0.0.0.0:15443`
 * on one host, a CA client on another host reaching it by its 198.18.x.y address. Without `--san` the
 * server warns at start, and the client's error names the SANs the certificate has and the `--san` to
 * add; with `--san <address>` the client gets its certificate.
 */
import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { meshcaWorkspace } from "../helpers/cli.ts";
import { requireRoot, testNetwork } from "../helpers/netns.ts";

const REPO = resolve(import.meta.dirname, "../..");
const WEB = "spiffe://weft.local/ns/default/sa/web";

test("netns: a CA on 0.0.0.0 reached by a non-loopback address: warned and named without --san, served with it", async (t) => {
  if (!requireRoot(t)) return;
  const { cwd: dir, ok } = await meshcaWorkspace(t);
  await ok("init", "--trust-domain", "weft.local");
  await ok("bundle", "--out", "bundle.pem");
  const net = await testNetwork(t);
  const caHost = await net.addHost("ca");
  const client = await net.addHost("client");
  const url = `https://${caHost.ip4}:15443`;
  const once = async (token: string) => {
    const p = client.spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(REPO, "test/helpers/ca-client-once.ts"),
        url,
        join(dir, "bundle.pem"),
        token,
        WEB,
      ],
      { cwd: REPO },
    );
    await p.exited;
    return p.output();
  };
  const token = async () => (await ok("token", "create", "--id", WEB)).stdout.trim();

  const serve = (...extra: string[]) =>
    caHost.spawn(
      process.execPath,
      [
        join(REPO, "bin/meshca.js"),
        "serve",
        "--dir",
        join(dir, "certs"),
        "--listen",
        "0.0.0.0:15443",
        ...extra,
      ],
      { cwd: REPO },
    );

  const bare = serve();
  await bare.waitFor(/serving weft\.local/, 20_000);
  assert.match(bare.output(), /warning: listening on 0\.0\.0\.0 without --san/);
  const refused = await once(await token());
  assert.match(
    refused,
    new RegExp(
      `failed: .*names localhost, 127\\.0\\.0\\.1, (::1|0:0:0:0:0:0:0:1), not ${caHost.ip4.replaceAll(".", "\\.")}; start meshca serve with --san ${caHost.ip4.replaceAll(".", "\\.")}`,
    ),
  );
  await bare.kill("SIGTERM");
  await bare.exited;

  const named = serve("--san", caHost.ip4);
  await named.waitFor(/serving weft\.local/, 20_000);
  assert.doesNotMatch(named.output(), /warning/);
  const served = await once(await token());
  assert.match(served, new RegExp(`obtained ${WEB}`));
  await named.kill("SIGTERM");
});
