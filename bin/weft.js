#!/usr/bin/env -S node --initial-old-space-size=128
// Entry point for the `weft` CLI: runs the compiled program, bundled into dist/weft/ (`npm run build` in a
// checkout; scripts/build.mjs says why it is bundled).
// The node flags on the line above are SIDECAR_NODE_FLAGS (src/runtime/node-flags.ts); keep them equal.
import { runCompiled } from "./run-compiled.js";

await runCompiled("weft", "../dist/weft/weft.js");
