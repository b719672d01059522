import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { missingNodeFlags, SIDECAR_NODE_FLAGS } from "../../src/runtime/node-flags.ts";

const flags = SIDECAR_NODE_FLAGS.join(" ");

test("every launcher of `weft proxy` passes SIDECAR_NODE_FLAGS to node", () => {
  // The places that cannot import the list carry a literal copy.
  assert.ok(SIDECAR_NODE_FLAGS.length > 0);
  const shebang = readFileSync("bin/weft.js", "utf8").split("\n")[0];
  assert.equal(shebang, `#!/usr/bin/env -S node ${flags}`);
  const entrypoint = /^ENTRYPOINT \[(.*)\]$/m.exec(readFileSync("Dockerfile", "utf8"))?.[1];
  assert.equal(
    entrypoint,
    ["node", ...SIDECAR_NODE_FLAGS, "/opt/weft/bin/weft.js"].map((a) => `"${a}"`).join(", "),
  );
  assert.match(
    readFileSync("examples/pod/sidecar.sh", "utf8"),
    new RegExp(`^exec node ${flags} "\\$\\{WEFT_HOME`, "m"),
  );
  // The TypeScript launchers use the list itself.
  for (const f of ["src/demo/demo.ts", "bench/peers.ts"]) {
    assert.match(readFileSync(f, "utf8"), /\.\.\.(\(o\.nodeFlags \?\? )?SIDECAR_NODE_FLAGS/, f);
  }
});

test("missingNodeFlags names what node was started without", () => {
  assert.deepEqual(missingNodeFlags([...SIDECAR_NODE_FLAGS, "--inspect"]), []);
  assert.deepEqual(missingNodeFlags([]), [...SIDECAR_NODE_FLAGS]);
  // Another value of a flag is not the flag.
  const [first, ...rest] = SIDECAR_NODE_FLAGS;
  assert.deepEqual(missingNodeFlags([`${first!.split("=")[0]}=1`, ...rest]), [first]);
});
