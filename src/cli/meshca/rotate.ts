/** `meshca rotate root | intermediate`: rotate a CA of the trust domain. */
import { X509Certificate } from "node:crypto";
import type { Command } from "commander";
import { rotateIntermediate, rotateRoot } from "../../ca/authority.ts";
import { WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { help, type MeshcaContext, parseCliDuration, splitCertificates, usage } from "./context.ts";

export function registerRotate(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path, storeAt, dirOption } = ctx;
  program
    .command("rotate")
    .description("rotate the root (new root joins the bundle beside the old one) or the intermediate")
    .argument("<which>", "root or intermediate")
    .option("--root-ttl <duration>", "lifetime of the new root", parseCliDuration)
    .option("--intermediate-ttl <duration>", "lifetime of the new intermediate", parseCliDuration)
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca rotate intermediate",
        "meshca rotate root          # then distribute the new bundle: meshca bundle --out ... --force",
        "# a running meshca serve signs with the new CA within 5 s",
      ]),
    )
    .action(
      async (
        which: string,
        opts: { rootTtl?: number; intermediateTtl?: number; dir: string; json?: boolean },
      ) => {
        if (which !== "root" && which !== "intermediate") {
          throw usage(`rotate takes "root" or "intermediate", not "${which}"`);
        }
        const store = storeAt(opts.dir);
        if (!(await store.exists())) {
          throw new WeftError(
            "E_IO",
            `no CA in ${path(opts.dir)}; create one with: meshca init --trust-domain <td>`,
          );
        }
        const material = await store.load();
        const ttl = {
          ...(opts.rootTtl ? { rootTtlMs: opts.rootTtl } : {}),
          ...(opts.intermediateTtl ? { intermediateTtlMs: opts.intermediateTtl } : {}),
          clock: deps.clock,
        };
        const next =
          which === "root" ? await rotateRoot(material, ttl) : await rotateIntermediate(material, ttl);
        await store.save(next, { force: true });
        const roots = splitCertificates(next.bundlePem, "bundle");
        const inter = new X509Certificate(next.intermediateCertPem);
        const result = {
          rotated: which,
          trustDomain: next.trustDomain,
          roots: roots.map((r) => ({
            sha256: r.fingerprint256,
            notAfter: new Date(r.validTo).toISOString(),
          })),
          intermediateNotAfter: new Date(inter.validTo).toISOString(),
        };
        ctx.emit(opts.json, result, () => {
          out(`rotated the ${which} of ${next.trustDomain}`);
          out(`  bundle now holds ${roots.length} root(s):`);
          for (const r of result.roots) out(`    ${r.sha256}  valid until ${r.notAfter}`);
          out(`  intermediate valid until ${result.intermediateNotAfter}`);
          if (which === "root")
            out("  distribute the new bundle to every sidecar: meshca bundle --out <file> --force");
        });
      },
    );
}
