import assert from "node:assert/strict";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import { mayReach } from "../../src/proxy/tunnel/policy.ts";

const id = (text: string): SpiffeId => SpiffeId.parse(text);

test("SPIFFE ID patterns: * stays within one segment, everything else is literal", () => {
  const cases: Array<[string, string, boolean]> = [
    ["spiffe://weft.local/ns/default/sa/web", "spiffe://weft.local/ns/default/sa/web", true],
    ["spiffe://weft.local/ns/default/sa/web", "spiffe://weft.local/ns/default/sa/web2", false],
    ["spiffe://weft.local/ns/*/sa/web", "spiffe://weft.local/ns/shop/sa/web", true],
    ["spiffe://weft.local/ns/*/sa/web", "spiffe://weft.local/ns/a/b/sa/web", false],
    ["spiffe://weft.local/ns/default/sa/web-*", "spiffe://weft.local/ns/default/sa/web-1", true],
    ["spiffe://weft.local/ns/default/sa/*", "spiffe://weft.local/ns/default/sa/x/y", false],
    ["spiffe://weft.local/ns/default/sa/a.b", "spiffe://weft.local/ns/default/sa/aXb", false],
    ["spiffe://weft.local/*", "spiffe://weft.localhost/x", false],
  ];
  for (const [pattern, peer, want] of cases)
    assert.equal(id(peer).matches(pattern), want, `${pattern} ~ ${peer}`);
});

test("trust domain of an ID; a string that is not a SPIFFE ID never becomes a peer", () => {
  assert.equal(id("spiffe://weft.local/ns/a/sa/b").trustDomain, "weft.local");
  assert.equal(id("spiffe://weft.local").trustDomain, "weft.local");
  assert.throws(() => id("https://weft.local/x"), { code: "E_SPIFFE_ID", reason: "wrong_scheme" });
});

test("rules covering a port replace the default for that port", () => {
  const policy = {
    default: "allow-trust-domain" as const,
    rules: [
      { ports: [5432], allow: ["spiffe://weft.local/ns/default/sa/api"] },
      { allow: ["spiffe://other.test/ns/x/sa/y"] },
    ],
  };
  // The port-less rule covers every port: only its identity and, on 5432, api get in. The decision names
  // the rule (by index, or its name when it has one); a denial names every rule that covered the port.
  assert.deepEqual(mayReach(policy, "weft.local", id("spiffe://weft.local/ns/default/sa/api"), 5432), {
    allowed: true,
    rule: "rules[0]",
  });
  assert.deepEqual(mayReach(policy, "weft.local", id("spiffe://other.test/ns/x/sa/y"), 5432), {
    allowed: true,
    rule: "rules[1]",
  });
  assert.deepEqual(mayReach(policy, "weft.local", id("spiffe://weft.local/ns/default/sa/web"), 5432), {
    allowed: false,
    why: "not_in_rules",
    rule: "rules[0],rules[1]",
  });
  assert.deepEqual(mayReach(policy, "weft.local", id("spiffe://weft.local/ns/default/sa/api"), 80), {
    allowed: false,
    why: "not_in_rules",
    rule: "rules[1]",
  });
  const named = {
    default: "allow-trust-domain" as const,
    rules: [{ name: "db-clients", ports: [5432], allow: ["spiffe://weft.local/ns/default/sa/api"] }],
  };
  assert.deepEqual(mayReach(named, "weft.local", id("spiffe://weft.local/ns/default/sa/api"), 5432), {
    allowed: true,
    rule: "db-clients",
  });
  assert.deepEqual(mayReach(named, "weft.local", id("spiffe://weft.local/ns/default/sa/api"), 80), {
    allowed: true,
    rule: "default",
  });
  assert.deepEqual(
    mayReach({ default: "deny", rules: [] }, "weft.local", id("spiffe://weft.local/ns/a/sa/b"), 80),
    {
      allowed: false,
      why: "default_deny",
      rule: "default",
    },
  );
});
