import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { drawRange, freePort } from "../../src/core/ports.ts";

test("freePort draws outside the ephemeral range: below it, above it when it starts low, else port 0", async () => {
  assert.deepEqual(drawRange({ low: 32_768, high: 60_999 }), { from: 10_000, to: 32_767 });
  // A tuned host whose range starts low: above it.
  assert.deepEqual(drawRange({ low: 1_024, high: 40_000 }), { from: 40_001, to: 65_535 });
  // No room on either side: the kernel chooses (port 0).
  assert.equal(drawRange({ low: 1_024, high: 65_535 }), undefined);
  assert.equal(drawRange({ low: 11_000, high: 64_000 }), undefined);

  const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
    .trim()
    .split(/\s+/)
    .map(Number);
  const range = drawRange({ low: low!, high: high! });
  for (let i = 0; i < 20; i++) {
    const p = await freePort();
    assert.ok(p >= 1 && p <= 65_535);
    if (range) assert.ok(p >= range.from && p <= range.to, `${p} outside ${range.from}-${range.to}`);
    assert.ok(p < 15_000 || p > 15_999, `${p} is one of Weft's well-known ports`);
  }
});
