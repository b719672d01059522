import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { requireRoot, testNetwork } from "../helpers/netns.ts";

const probe = fileURLToPath(new URL("./probes/original-dst-probe.ts", import.meta.url));
const tsx = fileURLToPath(new URL("../../node_modules/tsx/dist/cli.mjs", import.meta.url));

test("outbound capture reads the original destination for IPv4 and IPv6 after an iptables REDIRECT", async (t) => {
  if (!requireRoot(t)) return;
  const net = await testNetwork(t);
  const pod = await net.addHost("pod");
  const v4 = pod.ip4.replace(/\.\d+$/, ".99");
  const v6 = pod.ip6.replace(/::[0-9a-f]+$/, "::99");
  await pod.exec("iptables", [
    "-t",
    "nat",
    "-A",
    "OUTPUT",
    "-p",
    "tcp",
    "-d",
    v4,
    "--dport",
    "8080",
    "-j",
    "REDIRECT",
    "--to-ports",
    "15001",
  ]);
  await pod.exec("ip6tables", [
    "-t",
    "nat",
    "-A",
    "OUTPUT",
    "-p",
    "tcp",
    "-d",
    v6,
    "--dport",
    "8443",
    "-j",
    "REDIRECT",
    "--to-ports",
    "15001",
  ]);

  const p = pod.spawn(process.execPath, [
    tsx,
    probe,
    "15001",
    `${v4}:8080`,
    `[${v6}]:8443`,
    "127.0.0.1:15001",
  ]);
  await p.waitFor(/^done$/m, 30_000);
  const lines = p
    .output()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as { ok: boolean; dst?: { address: string; port: number }; reason?: string });
  assert.equal(lines.length, 3, p.output());
  assert.deepEqual(lines[0], { ok: true, local: "::ffff:127.0.0.1", dst: { address: v4, port: 8080 } });
  assert.equal(lines[1]?.ok, true, JSON.stringify(lines[1]));
  assert.deepEqual(lines[1]?.dst, { address: v6, port: 8443 });
  // Not redirected: the kernel has no NAT entry, or hands back the socket's own address: a loop.
  const direct = lines[2]!;
  assert.ok(
    (!direct.ok && direct.reason === "not_redirected") || (direct.ok && direct.dst?.port === 15001),
    JSON.stringify(direct),
  );
});
