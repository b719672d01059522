/**
 * `parseAddrPort` (discovery/types.ts), the one reader of `address:port` text for the config's listen
 * addresses, `/explain?dst=` and `weft injector --listen`.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseAddrPort } from "../../src/discovery/types.ts";

test("parseAddrPort reads IPv4, bracketed IPv6 and (when asked) localhost, and nothing else", () => {
  assert.deepEqual(parseAddrPort("198.18.0.10:8080"), { address: "198.18.0.10", port: 8080 });
  assert.deepEqual(parseAddrPort("[fd00:198:18::1]:443"), { address: "fd00:198:18::1", port: 443 });
  assert.deepEqual(parseAddrPort("127.0.0.1:0"), { address: "127.0.0.1", port: 0 });
  assert.deepEqual(parseAddrPort("0.0.0.0:65535"), { address: "0.0.0.0", port: 65535 });
  assert.deepEqual(parseAddrPort("localhost:9001", { localhost: true }), {
    address: "127.0.0.1",
    port: 9001,
  });
  for (const bad of [
    "localhost:9001", // not asked for
    "198.18.0.10", // no port
    "198.18.0.10:65536",
    "198.18.0.10:99999",
    "198.18.0.10:-1",
    "198.18.0.10:1e3",
    "999.1.1.1:80", // not an IPv4 address
    "fd00::1:80", // IPv6 without brackets
    "[198.18.0.10]:80", // brackets hold IPv6 only
    "[fd00::1:80",
    "[zz::1]:80",
    "backend:80", // names are not addresses
    " 198.18.0.10:80",
    "",
  ]) {
    assert.equal(parseAddrPort(bad), undefined, bad);
    if (bad !== "localhost:9001") assert.equal(parseAddrPort(bad, { localhost: true }), undefined, bad);
  }
});
