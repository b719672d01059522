#!/usr/bin/env node
// Entry point for the `meshca` CLI: runs the compiled program in dist/ (`npm run build` in a checkout).
import { runCompiled } from "./run-compiled.js";

await runCompiled("meshca", "../dist/cli/meshca-main.js");
