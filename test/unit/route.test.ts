import assert from "node:assert/strict";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { origDstAddr } from "../../src/proxy/addresses.ts";
import {
  type AppTarget,
  decideAppAddress,
  decideInbound,
  decideOutbound,
  endpointAppPort,
  type InboundSettings,
} from "../../src/proxy/outbound/route.ts";
import { StaticRouteTable } from "../helpers/static-routes.ts";

const table = new StaticRouteTable([
  {
    name: "backend",
    identity: "spiffe://weft.local/ns/default/sa/backend",
    ports: [8080, { port: 80, targetPort: 8081 }],
    vips: ["198.18.10.1"],
    endpoints: [{ address: "198.18.0.5", port: 8080, tunnelPort: 15008 }],
  },
]);

test("decideOutbound, as a table", () => {
  const cases: Array<{
    name: string;
    req: Parameters<typeof decideOutbound>[0];
    policy: "allow-any" | "registry-only";
    want: string;
    servicePort?: number;
    targetPort?: number;
  }> = [
    {
      name: "VIP and service port -> mesh",
      req: { dst: origDstAddr({ address: "198.18.10.1", port: 8080 }) },
      policy: "registry-only",
      want: "mesh",
      servicePort: 8080,
      targetPort: 8080,
    },
    {
      name: "VIP and a port with another target port -> mesh, target port mapped",
      req: { dst: origDstAddr({ address: "198.18.10.1", port: 80 }) },
      policy: "registry-only",
      want: "mesh",
      servicePort: 80,
      targetPort: 8081,
    },
    {
      name: "an endpoint's own address -> mesh",
      req: { dst: origDstAddr({ address: "198.18.0.5", port: 8080 }) },
      policy: "registry-only",
      want: "mesh",
      targetPort: 8080,
    },
    {
      name: "unknown destination, allow-any -> passthrough",
      req: { dst: origDstAddr({ address: "198.18.99.9", port: 443 }) },
      policy: "allow-any",
      want: "passthrough",
    },
    {
      name: "unknown destination, registry-only -> no_route",
      req: { dst: origDstAddr({ address: "198.18.99.9", port: 443 }) },
      policy: "registry-only",
      want: "deny:no_route",
    },
    {
      name: "a VIP on a port the service does not have -> passthrough under allow-any",
      req: { dst: origDstAddr({ address: "198.18.10.1", port: 9999 }) },
      policy: "allow-any",
      want: "passthrough",
    },
    {
      name: "loop is refused even under allow-any",
      req: { dst: origDstAddr({ address: "127.0.0.1", port: 15001 }), loop: true },
      policy: "allow-any",
      want: "deny:loop",
    },
    {
      name: "no destination at all -> no_route",
      req: {},
      policy: "allow-any",
      want: "deny:no_route",
    },
    {
      name: "explicit service, default port -> its first port",
      req: { explicit: { service: "backend" } },
      policy: "registry-only",
      want: "mesh",
      servicePort: 8080,
      targetPort: 8080,
    },
    {
      name: "explicit service and port -> that port's target",
      req: { explicit: { service: "backend", port: 80 } },
      policy: "registry-only",
      want: "mesh",
      servicePort: 80,
      targetPort: 8081,
    },
    {
      name: "explicit unknown service",
      req: { explicit: { service: "nope" } },
      policy: "allow-any",
      want: "deny:unknown_service",
    },
    {
      name: "explicit unknown port",
      req: { explicit: { service: "backend", port: 1 } },
      policy: "allow-any",
      want: "deny:unknown_port",
    },
  ];
  for (const c of cases) {
    const r = decideOutbound(c.req, table, { outboundPolicy: c.policy });
    const got = r.kind === "deny" ? `deny:${r.reason}` : r.kind;
    assert.equal(got, c.want, c.name);
    if (r.kind === "mesh") {
      assert.equal(r.target.service.name, "backend", c.name);
      if (c.servicePort !== undefined) assert.equal(r.target.servicePort, c.servicePort, c.name);
      if (c.targetPort !== undefined) assert.equal(r.target.targetPort, c.targetPort, c.name);
    }
    if (r.kind === "passthrough") assert.deepEqual(r.dst, c.req.dst, c.name);
  }
});

test("decideInbound, as a table", () => {
  const base: InboundSettings = {
    trustDomain: "weft.local",
    policy: {
      default: "allow-trust-domain",
      rules: [
        { ports: [5432], allow: ["spiffe://weft.local/ns/default/sa/backend"] },
        { ports: [9000], allow: ["spiffe://weft.local/ns/*/sa/frontend"] },
      ],
    },
    ports: [
      { port: 8080, proxyProtocol: "v2" },
      { port: 5432, proxyProtocol: "none" },
      { port: 9000, proxyProtocol: "none" },
    ],
    reservedPorts: [15000, 15001, 15006, 15008],
  };
  const deny: InboundSettings = { ...base, policy: { default: "deny", rules: base.policy.rules } };
  const cases: Array<{ name: string; peer: string; port: number; s?: InboundSettings; want: string }> = [
    {
      name: "same trust domain, uncovered port",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 8080,
      want: "allow:v2",
    },
    {
      name: "inbound.ports is an allow-list: another port is refused",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 7000,
      want: "deny:port_not_allowed:not_in_inbound_ports",
    },
    {
      name: "no inbound.ports: any port but the proxy's own",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 7000,
      s: { ...base, ports: [] },
      want: "allow:none",
    },
    {
      name: "other trust domain, uncovered port",
      peer: "spiffe://other.test/ns/a/sa/b",
      port: 8080,
      want: "deny:policy_denied:other_trust_domain",
    },
    {
      name: "covered port, allowed id",
      peer: "spiffe://weft.local/ns/default/sa/backend",
      port: 5432,
      want: "allow:none",
    },
    {
      name: "covered port, another id",
      peer: "spiffe://weft.local/ns/default/sa/frontend",
      port: 5432,
      want: "deny:policy_denied:not_in_rules",
    },
    {
      name: "pattern matches within one segment",
      peer: "spiffe://weft.local/ns/shop/sa/frontend",
      port: 9000,
      want: "allow:none",
    },
    {
      name: "pattern does not cross segments",
      peer: "spiffe://weft.local/ns/a/b/sa/frontend",
      port: 9000,
      want: "deny:policy_denied:not_in_rules",
    },
    {
      name: "default deny, uncovered port",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 8080,
      s: deny,
      want: "deny:policy_denied:default_deny",
    },
    {
      name: "default deny, covered port still allowed",
      peer: "spiffe://weft.local/ns/default/sa/backend",
      port: 5432,
      s: deny,
      want: "allow:none",
    },
    {
      name: "the proxy's own port wins over the allow-list",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 15008,
      s: { ...base, ports: [{ port: 15008, proxyProtocol: "none" }] },
      want: "deny:forbidden_port:proxy_port",
    },
    {
      name: "the proxy's own admin port is never reachable",
      peer: "spiffe://weft.local/ns/a/sa/b",
      port: 15000,
      want: "deny:forbidden_port:proxy_port",
    },
  ];
  for (const c of cases) {
    const d = decideInbound(SpiffeId.parse(c.peer), c.port, c.s ?? base);
    const got = d.kind === "allow" ? `allow:${d.proxyProtocol}` : `deny:${d.reason}:${d.why}`;
    assert.ok(d.rule.length > 0, `${c.name}: the decision names its rule`);
    assert.equal(got, c.want, c.name);
    if (d.kind === "deny" && d.reason === "policy_denied") {
      assert.equal(d.detail, `${c.peer} may not reach port ${c.port}`);
    }
  }
});

test("decideAppAddress, as a table: transparent mode dials the original destination if it is this pod's", () => {
  const local = { has: (a: string) => a === "10.0.0.5" || a === "fd00::5" || a === "127.0.0.1" };
  const transparent = { mode: "original-destination" as const, local };
  const cases: Array<[string, string, AppTarget, string]> = [
    [
      "explicit mode: appAddress whatever was named",
      "10.9.9.9",
      { mode: "app-address", appAddress: "127.0.0.1" },
      "allow:127.0.0.1",
    ],
    ["the pod's own address", "10.0.0.5", transparent, "allow:10.0.0.5"],
    ["the pod's own IPv6 address", "fd00::5", transparent, "allow:fd00::5"],
    ["IPv4-mapped form of the pod's address", "::ffff:10.0.0.5", transparent, "allow:10.0.0.5"],
    ["loopback, though local", "127.0.0.1", transparent, "deny:loopback_destination"],
    ["IPv6 loopback", "::1", transparent, "deny:loopback_destination"],
    ["another host", "10.0.0.6", transparent, "deny:destination_not_local"],
  ];
  for (const [name, dst, target, want] of cases) {
    const d = decideAppAddress(dst, target);
    assert.equal(d.kind === "allow" ? `allow:${d.address}` : `deny:${d.reason}`, want, name);
  }
});

test("the app port named on an endpoint: its own port overrides the first port's target only", () => {
  const service = table.service("backend")!;
  const first = { service, servicePort: 8080, targetPort: 8080 };
  const second = { service, servicePort: 80, targetPort: 8081 };
  assert.equal(endpointAppPort(first, { port: 8080 }), 8080);
  assert.equal(endpointAppPort(first, { port: 9090 }), 9090);
  assert.equal(endpointAppPort(second, { port: 9090 }), 8081);
});
