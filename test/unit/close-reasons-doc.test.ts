/**
 * The README's close-reason table is complete: every reason in `CLOSE_REASONS` (the closed set that is
 * also the `reason` label) appears in it as a code span, so an operator can look up any reason they see.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { CLOSE_REASONS } from "../../src/proxy/connection/record.ts";

test("every close reason is explained in the README", () => {
  const readme = readFileSync("README.md", "utf8");
  const table = readme.slice(readme.indexOf("| reason | meaning |"));
  const missing = CLOSE_REASONS.filter((r) => !table.includes(`\`${r}\``));
  assert.deepEqual(missing, [], "add a row for each to the close-reason table in README.md");
  assert.match(table, /`svid_<rule>`/);
});
