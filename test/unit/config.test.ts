import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { formatDuration, parseDuration, parseSize } from "../../src/config/units.ts";

const minimal = `
trustDomain: weft.local
identity:
  files: { cert: c.pem, key: k.pem, bundle: b.pem }
`;

test("a minimal config gets every default, in milliseconds and bytes", () => {
  const c = parseConfig(minimal);
  assert.equal(c.listeners.outbound.port, 15001);
  assert.equal(c.listeners.inbound.port, 15006);
  assert.equal(c.listeners.tunnel.port, 15008);
  assert.equal(c.listeners.admin.port, 15000);
  assert.equal(c.listeners.admin.address, "127.0.0.1");
  assert.equal(c.timeouts.handshake, 10_000);
  assert.equal(c.timeouts.idle, 3_600_000);
  assert.equal(c.limits.earlyDataBytes, 65_536);
  assert.equal(c.outlierDetection.consecutiveFailures, 5);
  assert.equal(c.outlierDetection.baseEjectionTime, 30_000);
  assert.equal(c.outlierDetection.maxEjectionPercent, 10);
  assert.equal(c.retries.attempts, 3);
  assert.deepEqual(c.upstream.sessionKeepalive, { interval: 10_000, timeout: 5_000 });
  assert.equal(c.inbound.mode, "strict");
  assert.equal(c.outboundPolicy, "allow-any");
  assert.equal(c.memory.idleReclaim, "light");
  assert.ok(Object.isFrozen(c.timeouts));
});

test("memory.idleReclaim takes light, deep or off, and names itself when wrong", () => {
  for (const mode of ["light", "deep", "off"]) {
    assert.equal(parseConfig(`${minimal}memory: { idleReclaim: ${mode} }\n`).memory.idleReclaim, mode);
  }
  assert.throws(
    () => parseConfig(`${minimal}memory: { idleReclaim: always }\n`),
    (err: unknown) => err instanceof ConfigError && err.issues.some((i) => i.key === "memory.idleReclaim"),
  );
});

test("every error is reported at once, each naming its key", () => {
  const text = `
trustDomain: Weft Local
identity: {}
timeouts: { idle: 1x, connect: -5 }
upstream: { sessionKeepalive: { interval: 30s, timeout: 0 } }
listeners:
  tunnel: { port: 70000 }
  explicit: [ { listen: "nohost", service: backend } ]
bogus: 1
services:
  - name: backend
    ports: [8080]
    endpoints: [ { address: 198.18.0.300 } ]
  - name: backend
    ports: [8080]
    dns: { name: backend }
`;
  assert.throws(
    () => parseConfig(text),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, "E_CONFIG");
      const keys = err.issues.map((i) => i.key);
      for (const k of [
        "trustDomain",
        "identity",
        "timeouts.idle",
        "timeouts.connect",
        "listeners.tunnel.port",
        "listeners.explicit[0].listen",
        "services[0].endpoints[0].address",
        "services[1].name",
        "upstream.sessionKeepalive.timeout",
      ]) {
        assert.ok(keys.includes(k), `expected an error for ${k}, got ${keys.join(", ")}`);
      }
      assert.ok(
        err.issues.some((i) => i.message.includes("bogus")),
        "unknown key reported",
      );
      return true;
    },
  );
});

test("YAML syntax errors say where", () => {
  assert.throws(
    () => parseConfig("trustDomain: [unclosed"),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /not valid YAML/);
      return true;
    },
  );
});

test("environment overrides log level and trust domain", () => {
  const c = parseConfig(minimal, { WEFT_LOG_LEVEL: "debug", WEFT_TRUST_DOMAIN: "example.org" });
  assert.equal(c.log.level, "debug");
  assert.equal(c.trustDomain, "example.org");
});

test("units: durations and sizes", () => {
  assert.equal(parseDuration("250ms"), 250);
  assert.equal(parseDuration("1h30m"), 5_400_000);
  assert.equal(parseDuration(42), 42);
  assert.throws(() => parseDuration("10 parsecs"), /E_CONFIG/);
  assert.throws(() => parseDuration(""), /E_CONFIG/);
  assert.equal(parseSize("64KiB"), 65_536);
  assert.equal(parseSize(10), 10);
  assert.throws(() => parseSize("lots"), /E_CONFIG/);
  assert.equal(formatDuration(86_400_000 + 3_600_000 * 2 + 60_000 * 5), "1d 2h");
  assert.equal(formatDuration(59_000), "59s");
});

test("endpoints that end up identical (address, app port, tunnel port) are an error naming both", () => {
  const text = `${minimal}
services:
  - name: backend
    ports: [8080]
    endpoints:
      - { address: 127.0.0.1, tunnelPort: 15018 }
      - { address: 127.0.0.1, port: 8080, tunnelPort: 15028 }
      - { address: 127.0.0.1, port: 8080, tunnelPort: 15018 }
      - { address: "::ffff:127.0.0.1", tunnelPort: 15028 }
      - { address: "::1" }
      - { address: "0:0:0:0:0:0:0:1", port: 8080 }
`;
  assert.throws(
    () => parseConfig(text),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const issues = err.issues.map((i) => `${i.key}: ${i.message}`);
      assert.deepEqual(issues, [
        "services[0].endpoints[2]: same address, port and tunnelPort as endpoints[0] (127.0.0.1:8080 via 15018); give each endpoint its own port or tunnelPort",
        "services[0].endpoints[3]: same address, port and tunnelPort as endpoints[1] (127.0.0.1:8080 via 15028); give each endpoint its own port or tunnelPort",
        "services[0].endpoints[5]: same address, port and tunnelPort as endpoints[4] (::1:8080 via 15008); give each endpoint its own port or tunnelPort",
      ]);
      return true;
    },
  );
  // One address, one app port, two sidecars: two endpoints.
  const ok = parseConfig(`${minimal}
services:
  - name: backend
    ports: [8080]
    endpoints: [ { address: 127.0.0.1, tunnelPort: 15018 }, { address: 127.0.0.1, tunnelPort: 15028 } ]
`);
  assert.equal(ok.services[0]?.endpoints?.length, 2);
});
