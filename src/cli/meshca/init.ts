/** `meshca init`: create a trust domain (root CA, intermediate signing CA, trust bundle) in a CA directory. */
import { X509Certificate } from "node:crypto";
import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import type { Command } from "commander";
import { createTrustDomain } from "../../ca/authority.ts";
import { SpiffeId } from "../../ca/spiffe-id.ts";
import { TOKENS_FILE } from "../../ca/tokens.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { help, type MeshcaContext, parseCliDuration, usage } from "./context.ts";

export function registerInit(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path, storeAt, dirOption } = ctx;
  program
    .command("init")
    .description("create a trust domain: root CA, intermediate signing CA and trust bundle")
    .requiredOption("--trust-domain <td>", "trust domain name, e.g. weft.local")
    .addOption(dirOption())
    .addOption(jsonOption())
    .option(
      "--root-ttl <duration>",
      "lifetime of the root CA (default: the library's, 10 years)",
      parseCliDuration,
    )
    .option("--intermediate-ttl <duration>", "lifetime of the intermediate CA", parseCliDuration)
    .option("--force", "replace an existing CA in --dir (its issued certificates stop verifying)")
    .addHelpText(
      "after",
      help([
        "meshca init --trust-domain weft.local",
        "meshca init --trust-domain prod.example --dir /etc/weft/ca --intermediate-ttl 90d",
        "meshca init --trust-domain weft.local --force     # throw the old CA away",
      ]),
    )
    .action(
      async (opts: {
        trustDomain: string;
        dir: string;
        rootTtl?: number;
        intermediateTtl?: number;
        force?: boolean;
        json?: boolean;
      }) => {
        const store = storeAt(opts.dir);
        if ((await store.exists()) && !opts.force) {
          throw new WeftError(
            "E_EXISTS",
            `a CA already exists in ${path(opts.dir)}; pass --force to replace it`,
          );
        }
        let probe: SpiffeId;
        try {
          probe = SpiffeId.parse(`spiffe://${opts.trustDomain}`);
        } catch (e) {
          throw usage(`--trust-domain "${opts.trustDomain}": ${errorMessage(e)}`);
        }
        const material = await createTrustDomain({
          trustDomain: probe.trustDomain,
          ...(opts.rootTtl ? { rootTtlMs: opts.rootTtl } : {}),
          ...(opts.intermediateTtl ? { intermediateTtlMs: opts.intermediateTtl } : {}),
          clock: deps.clock,
        });
        await store.save(material, { force: Boolean(opts.force) });
        if (opts.force) await rm(resolve(path(opts.dir), TOKENS_FILE), { force: true });
        const root = new X509Certificate(material.rootCertPem);
        const result = {
          trustDomain: material.trustDomain,
          dir: path(opts.dir),
          root: {
            subject: root.subject.replaceAll("\n", ", "),
            notAfter: new Date(root.validTo).toISOString(),
            sha256: root.fingerprint256,
          },
        };
        ctx.emit(opts.json, result, () => {
          out(`created trust domain ${result.trustDomain} in ${result.dir}`);
          out(`  root CA:         ${result.root.subject}, valid until ${result.root.notAfter}`);
          out(`  root sha256:     ${result.root.sha256}`);
          out(`  trust bundle:    meshca bundle --dir ${opts.dir}`);
        });
      },
    );
}
