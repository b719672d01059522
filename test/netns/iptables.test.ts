import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  buildRules,
  CHAINS,
  type Exec,
  installRules,
  uninstallRules,
} from "../../src/proxy/capture/iptables.ts";
import { type Host, requireRoot, run, testNetwork } from "../helpers/netns.ts";

const probe = fileURLToPath(new URL("./probes/original-dst-probe.ts", import.meta.url));
const tsx = fileURLToPath(new URL("../../node_modules/tsx/dist/cli.mjs", import.meta.url));

/** Runs iptables inside the host's namespace. */
function execIn(host: Host): Exec {
  return (cmd, args, input) =>
    run("ip", ["netns", "exec", host.ns, cmd, ...args], input === undefined ? {} : { input });
}

function ours(save: string): string {
  return save
    .split("\n")
    .filter((l) => l.includes("WEFT_"))
    .map((l) => l.replace(/\[\d+:\d+\]/, ""))
    .join("\n");
}

test("print shows the exact rules, with exclusions, for both families", () => {
  const r = buildRules({
    excludeOutboundPorts: [15443],
    excludeOutboundCidrs: ["198.19.0.0/16", "fd00:198:19::/48"],
    excludeInboundPorts: [22],
  });
  assert.match(r.v4, /-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN/);
  assert.match(r.v4, /-A WEFT_OUTPUT -d 198\.19\.0\.0\/16 -j RETURN/);
  assert.doesNotMatch(r.v4, /fd00:198:19/);
  assert.match(r.v6, /-A WEFT_OUTPUT -d fd00:198:19::\/48 -j RETURN/);
  assert.match(r.v4, /-A WEFT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001/);
  assert.match(r.v4, /-A WEFT_PREROUTING -p tcp --dport 15008 -j RETURN/);
  assert.match(r.v4, /-A WEFT_PREROUTING -p tcp --dport 22 -j RETURN/);
  assert.match(r.v4, /-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006/);
  assert.match(r.v4, /-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A PREROUTING -p tcp -j WEFT_PREROUTING\nCOMMIT/);
  assert.throws(() => buildRules({ outboundPort: 70000 }), /E_USAGE/);
  assert.throws(() => buildRules({ excludeOutboundCidrs: ["nonsense; rm"] }), /E_USAGE/);
});

for (const backend of ["nft", "legacy"] as const) {
  test(`install is idempotent, redirects non-proxy traffic only, and uninstall removes everything (${backend})`, async (t) => {
    if (!requireRoot(t)) return;
    const net = await testNetwork(t);
    const pod = await net.addHost("pod");
    const exec = execIn(pod);
    const save4 = () => pod.exec(`iptables-${backend}-save`, ["-t", "nat"]);
    const save6 = () => pod.exec(`ip6tables-${backend}-save`, ["-t", "nat"]);

    await installRules({ backend }, exec);
    const first4 = ours(await save4());
    const first6 = ours(await save6());
    for (const chain of Object.values(CHAINS)) assert.match(first4, new RegExp(`:${chain}`));
    assert.match(first4, /-A OUTPUT -p tcp -j WEFT_OUTPUT/);
    assert.match(first6, /-A PREROUTING -p tcp -j WEFT_PREROUTING/);
    await installRules({ backend }, exec);
    assert.equal(ours(await save4()), first4, "a second install changes nothing (IPv4)");
    assert.equal(ours(await save6()), first6, "a second install changes nothing (IPv6)");

    // Behaviour: an app's connection to a mesh address lands on 15001 with its original destination;
    // the proxy's own UID is not redirected (its connect fails: nothing listens at that address).
    const target = pod.ip4.replace(/\.\d+$/, ".77");
    if (backend === "nft") {
      const app = pod.spawn(process.execPath, [tsx, probe, "15001", `${target}:8080`]);
      await app.waitFor(/^done$/m, 30_000);
      assert.match(
        app.output(),
        new RegExp(`"dst":\\{"address":"${target.replace(/\./g, "\\.")}","port":8080\\}`),
      );
      const proxy = pod.spawn(process.execPath, [tsx, probe, "15002", `${target}:8080`], { uid: 1337 });
      await proxy.waitFor(/^done$/m, 30_000);
      assert.doesNotMatch(proxy.output(), /"ok":true/, "UID 1337 is not captured");
      assert.match(proxy.output(), /connectError/);
    }

    const removed = await uninstallRules({ backend }, exec);
    assert.match(removed, /-X WEFT_OUTPUT/);
    assert.equal(ours(await save4()), "", "no Weft rule left (IPv4)");
    assert.equal(ours(await save6()), "", "no Weft rule left (IPv6)");
    assert.match(await uninstallRules({ backend }, exec), /no Weft rules were installed/);
  });
}
