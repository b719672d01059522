/**
 * `npm run demo [-- --keep-running] [-- --transparent]`: the local demo mesh on loopback (see
 * src/demo/demo.ts) or, with `--transparent` (root, Linux), the same mesh in network namespaces with
 * iptables capture (src/demo/transparent.ts). Ctrl-C stops it and everything it started.
 */
import { resolve } from "node:path";
import { runDemo } from "../demo/demo.ts";
import { runDemoTransparent, transparentDemoUnavailable } from "../demo/transparent.ts";

const HELP = `Usage: npm run demo [-- --keep-running] [-- --dir <dir>]
       sudo npm run demo -- --transparent [--keep-running] [--dir <dir>]

Without options: runs a CA, three backends and four Weft sidecars on loopback (no root, no Docker) and
shows identities, load balancing, an ejection and its return, and metrics.

Options:
  --transparent   the namespace version (root, Linux): a CA pod, a frontend pod (a curl loop) and two
                  backend pods (nginx), each in its own network namespace with iptables capture and a
                  sidecar as UID 1337, started by the same scripts as docker-compose (examples/pod/*.sh)
  --keep-running  leave the mesh up after the script until Ctrl-C
  --dir <dir>     working directory (default .demo; with --transparent a temp dir, removed at the end)
  -h, --help      this help

Ctrl-C stops every process the demo started (and deletes its namespaces).
`;

const argv = process.argv.slice(2);
const known = new Set(["--help", "-h", "--keep-running", "--transparent", "--dir"]);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  if (!known.has(a)) {
    process.stderr.write(`demo: unknown option ${a}\n\n${HELP}`);
    process.exit(2);
  }
  if (a === "--dir") {
    if (argv[i + 1] === undefined || argv[i + 1]!.startsWith("-")) {
      process.stderr.write("demo: --dir needs a directory\n");
      process.exit(2);
    }
    i++;
  }
}
const args = new Set(argv);
if (args.has("--help") || args.has("-h")) {
  process.stdout.write(HELP);
  process.exit(0);
}
const dirIndex = argv.indexOf("--dir");
const givenDir = dirIndex >= 0 ? resolve(argv[dirIndex + 1]!) : undefined;
const interrupted = new Promise<void>((res) => {
  process.once("SIGINT", () => res());
  process.once("SIGTERM", () => res());
});
const out = (l: string) => process.stdout.write(`${l}\n`);
try {
  if (args.has("--transparent")) {
    const why = transparentDemoUnavailable();
    if (why !== undefined) {
      process.stderr.write(`demo: ${why}\n`);
      process.exit(1);
    }
    await runDemoTransparent({
      out,
      interrupted,
      keepRunning: args.has("--keep-running"),
      ...(givenDir === undefined ? {} : { dir: givenDir }),
    });
  } else {
    await runDemo({
      dir: givenDir ?? resolve(".demo"),
      keepRunning: args.has("--keep-running"),
      out,
      interrupted,
    });
  }
  process.exit(0);
} catch (err) {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exit(1);
}
