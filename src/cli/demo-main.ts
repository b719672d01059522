/**
 * `npm run demo [-- --keep-running]`: the local demo mesh (see src/demo/demo.ts). Ctrl-C stops it and
 * everything it started.
 */
import { resolve } from "node:path";
import { runDemo } from "../demo/demo.ts";

const args = new Set(process.argv.slice(2));
if (args.has("--help") || args.has("-h")) {
  process.stdout.write(
    "Usage: npm run demo [-- --keep-running] [-- --dir <dir>]\n\nRuns a CA, two backends and three Weft sidecars on loopback and shows identities, load balancing, an ejection and metrics.\n",
  );
  process.exit(0);
}
const dirIndex = process.argv.indexOf("--dir");
const dir = resolve(dirIndex > 0 ? process.argv[dirIndex + 1]! : ".demo");
const interrupted = new Promise<void>((res) => {
  process.once("SIGINT", () => res());
  process.once("SIGTERM", () => res());
});
try {
  await runDemo({
    dir,
    keepRunning: args.has("--keep-running"),
    out: (l) => process.stdout.write(`${l}\n`),
    interrupted,
  });
  process.exit(0);
} catch (err) {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exit(1);
}
