#!/usr/bin/env -S node --initial-old-space-size=128 --min-semi-space-size=8
// Entry point for the `weft` CLI: registers tsx so the TypeScript sources run without a build step.
// The node flags on the line above are SIDECAR_NODE_FLAGS (src/runtime/node-flags.ts); keep them equal.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/weft-main.ts");
