// Shared by bin/weft.js and bin/meshca.js: imports the compiled entry module, and when it is not there
// (a checkout where `npm run build` has not run yet) says so in the CLIs' error form instead of a stack
// trace. Plain JavaScript: it runs before anything is compiled.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export async function runCompiled(name, entry) {
  const url = new URL(entry, import.meta.url);
  if (!existsSync(fileURLToPath(url))) {
    process.stderr.write(
      `${name}: E_NOT_BUILT: ${fileURLToPath(url)} is missing; in a checkout run \`npm run build\` first (npm ci installs the compiler)\n`,
    );
    process.exitCode = 1;
    return;
  }
  await import(url.href);
}
