/** `meshca bundle`: print or write the trust bundle. */
import type { Command } from "commander";
import { writeFileAtomic } from "../../ca/store.ts";
import { WeftError } from "../../core/errors.ts";
import { fileExists, help, type MeshcaContext } from "./context.ts";

export function registerBundle(program: Command, ctx: MeshcaContext): void {
  const { deps, err, path, loadCa, dirOption } = ctx;
  program
    .command("bundle")
    .description("print the trust bundle (every root of the trust domain, PEM)")
    .option("--out <file>", "write it to a file instead of stdout")
    .option("--force", "overwrite --out if it exists")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help(["meshca bundle > bundle.pem", "meshca bundle --out /etc/weft/bundle.pem --force"]),
    )
    .action(async (opts: { out?: string; force?: boolean; dir: string }) => {
      const { ca } = await loadCa(opts.dir);
      const pem = ca.bundlePem();
      if (opts.out) {
        if (!opts.force && (await fileExists(path(opts.out)))) {
          throw new WeftError("E_EXISTS", `${path(opts.out)} exists; pass --force to replace it`);
        }
        await writeFileAtomic(path(opts.out), pem, 0o644);
        err(`wrote the ${ca.trustDomain} bundle to ${path(opts.out)}`);
      } else {
        deps.stdout.write(pem.endsWith("\n") ? pem : `${pem}\n`);
      }
    });
}
