/** `meshca bundle`: print or write the trust bundle. */
import type { Command } from "commander";
import { writeFileAtomic } from "../../ca/store.ts";
import { WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { fileExists, help, type MeshcaContext, splitCertificates } from "./context.ts";

export function registerBundle(program: Command, ctx: MeshcaContext): void {
  const { deps, err, path, loadCa, dirOption } = ctx;
  program
    .command("bundle")
    .description("print the trust bundle (every root of the trust domain, PEM)")
    .option("--out <file>", "write it to a file instead of stdout")
    .option("--force", "overwrite --out if it exists")
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca bundle > bundle.pem",
        "meshca bundle --out /etc/weft/bundle.pem --force",
        "meshca bundle --json | jq -r '.roots[].sha256'",
      ]),
    )
    .action(async (opts: { out?: string; force?: boolean; dir: string; json?: boolean }) => {
      const { ca } = await loadCa(opts.dir);
      const pem = ca.bundlePem();
      if (opts.json && !opts.out) {
        const roots = splitCertificates(pem, "the bundle").map((r) => ({
          subject: r.subject.replaceAll("\n", ", "),
          notAfter: new Date(r.validTo).toISOString(),
          sha256: r.fingerprint256,
        }));
        ctx.emit(true, { trustDomain: ca.trustDomain, roots, pem }, () => {});
        return;
      }
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
