/** `meshca sign`: sign a workload CSR offline and print or write the chain. */
import type { Command } from "commander";
import { SpiffeId } from "../../ca/spiffe-id.ts";
import { writeFileAtomic } from "../../ca/store.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { fileExists, help, type MeshcaContext, parseCliDuration, readText, usage } from "./context.ts";

export function registerSign(program: Command, ctx: MeshcaContext): void {
  const { dirOption } = ctx;
  program
    .command("sign")
    .description("sign a workload CSR (PEM) and print the chain (leaf + intermediate)")
    .argument("<csr.pem>", "the CSR file; it must ask for exactly one SPIFFE ID")
    .option(
      "--id-allow <pattern>",
      "only sign IDs matching this ID or pattern (* = one path segment); default: any ID of the trust domain",
    )
    .option("--ttl <duration>", "certificate lifetime (default 24h)", parseCliDuration)
    .option("--out <chain.pem>", "write the chain here instead of stdout")
    .option("--force", "overwrite --out if it exists")
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca sign web.csr --id-allow 'spiffe://weft.local/ns/default/sa/*' > web-chain.pem",
        "meshca sign api.csr --ttl 1h --out api-chain.pem",
      ]),
    )
    .action((csrFile: string, opts: SignOptions) => sign(ctx, csrFile, opts));
}

interface SignOptions {
  idAllow?: string;
  ttl?: number;
  out?: string;
  force?: boolean;
  dir: string;
  json?: boolean;
}

async function sign(ctx: MeshcaContext, csrFile: string, opts: SignOptions): Promise<void> {
  const { deps, err, path, loadCa } = ctx;
  const { ca } = await loadCa(opts.dir);
  const csrPem = await readText(path(csrFile), "CSR");
  if (opts.idAllow !== undefined) {
    try {
      SpiffeId.parse(opts.idAllow.replaceAll("*", "x"));
    } catch (e) {
      throw usage(`--id-allow "${opts.idAllow}": ${errorMessage(e)}`);
    }
  }
  if (opts.out && !opts.force && (await fileExists(path(opts.out)))) {
    throw new WeftError("E_EXISTS", `${path(opts.out)} exists; pass --force to replace it`);
  }
  const allow = opts.idAllow;
  const issued = await ca.signCsr(csrPem, {
    authorize: (id) => {
      const ok =
        allow === undefined ? true : allow.includes("*") ? id.matches(allow) : id.toString() === allow;
      if (!ok) {
        throw new WeftError(
          "E_CSR_IDENTITY",
          `the CSR asks for ${id.toString()}, which --id-allow ${allow} does not allow`,
          {
            reason: "not_allowed",
          },
        );
      }
    },
    ...(opts.ttl ? { ttlMs: opts.ttl } : {}),
  });
  await ctx.recordIssued(opts.dir, ca, issued);
  if (opts.out) {
    await writeFileAtomic(path(opts.out), issued.chainPem, 0o644);
    err(
      `signed ${issued.id.toString()} serial ${issued.serial}, valid until ${issued.notAfter.toISOString()}: ${path(opts.out)}`,
    );
  } else if (opts.json) {
    ctx.emit(
      true,
      {
        spiffeId: issued.id.toString(),
        serial: issued.serial,
        notAfter: issued.notAfter.toISOString(),
        chainPem: issued.chainPem,
      },
      () => {},
    );
  } else {
    deps.stdout.write(issued.chainPem.endsWith("\n") ? issued.chainPem : `${issued.chainPem}\n`);
    err(
      `signed ${issued.id.toString()} serial ${issued.serial}, valid until ${issued.notAfter.toISOString()}`,
    );
  }
}
