/** `meshca verify`: check a chain against a trust bundle and the SPIFFE X.509-SVID rules. */
import { type Command, Option } from "commander";
import { SpiffeId } from "../../ca/spiffe-id.ts";
import { bundleTrustDomain, parseBundle, verifySvid } from "../../ca/verify.ts";
import { errorMessage, isWeftError, WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { countdown, help, type MeshcaContext, readText, splitCertificates, usage } from "./context.ts";

export function registerVerify(program: Command, ctx: MeshcaContext): void {
  const { dirOption } = ctx;
  program
    .command("verify")
    .description("check a chain against a trust bundle and the SPIFFE X.509-SVID rules")
    .argument("<chain.pem>", "leaf first, then intermediates")
    .option("--bundle <file>", "trust bundle PEM (default: the bundle of the CA in --dir)")
    .option(
      "--trust-domain <td>",
      "trust domain of --bundle (default: the one its roots name, or the CA's in --dir); never taken from the leaf",
    )
    .option("--id <spiffe-id>", "also require this exact SPIFFE ID")
    .addOption(
      new Option("--role <role>", "also check the extended key usage for this TLS role").choices([
        "client",
        "server",
      ]),
    )
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help(
        [
          "meshca verify certs/issued/default-web/chain.pem",
          "meshca verify chain.pem --bundle bundle.pem --id spiffe://weft.local/ns/default/sa/web",
        ],
        `
EXIT CODES
  0  the chain is a valid X.509-SVID (its SPIFFE ID is printed)
  1  it is not (the broken rule is on stderr) or a file could not be read
  2  usage error`,
      ),
    )
    .action((file: string, opts: VerifyOptions) => verify(ctx, file, opts));
}

interface VerifyOptions {
  bundle?: string;
  trustDomain?: string;
  id?: string;
  role?: "client" | "server";
  dir: string;
  json?: boolean;
}

async function verify(ctx: MeshcaContext, file: string, opts: VerifyOptions): Promise<void> {
  const { deps, out, path, loadCa } = ctx;
  const chainPem = await readText(path(file), "chain");
  let expected: SpiffeId | undefined;
  if (opts.id !== undefined) {
    try {
      expected = SpiffeId.parse(opts.id);
    } catch (e) {
      throw usage(`--id "${opts.id}": ${errorMessage(e)}`);
    }
  }
  let bundlePem: string;
  let trustDomain = opts.trustDomain;
  if (opts.bundle) {
    bundlePem = await readText(path(opts.bundle), "bundle");
    // The trust domain comes from the bundle (or the operator), never from the leaf being judged:
    // otherwise a leaf of any trust domain signed under these roots would vouch for itself.
    const named = bundleTrustDomain(bundlePem);
    if (trustDomain !== undefined && named !== undefined && named !== trustDomain) {
      throw usage(`--trust-domain ${trustDomain} differs from the trust domain the bundle names (${named})`);
    }
    trustDomain ??= named;
    if (trustDomain === undefined) {
      throw usage(
        `the bundle ${path(opts.bundle)} names no trust domain (no spiffe:// URI SAN on its roots); give --trust-domain`,
      );
    }
  } else {
    const { ca } = await loadCa(opts.dir);
    bundlePem = ca.bundlePem();
    trustDomain ??= ca.trustDomain;
  }
  const bundle = parseBundle(bundlePem, trustDomain);
  let id: SpiffeId;
  try {
    id = verifySvid(chainPem, bundle, { now: new Date(deps.clock.now()), role: opts.role ?? "any" });
    if (expected && !id.equals(expected)) {
      throw new WeftError(
        "E_SVID",
        `the chain is valid but names ${id.toString()}, not ${expected.toString()}`,
        {
          reason: "unexpected_id",
        },
      );
    }
  } catch (e) {
    // A chain that is not valid is a result too: with --json it is printed, and the exit code is 1.
    if (opts.json && isWeftError(e, "E_SVID")) {
      ctx.emit(true, { valid: false, code: e.code, reason: e.reason, message: e.message }, () => {});
    }
    throw e;
  }
  const leaf = splitCertificates(chainPem, path(file))[0]!;
  const notAfter = new Date(leaf.validTo);
  ctx.emit(
    opts.json,
    { valid: true, spiffeId: id.toString(), trustDomain, notAfter: notAfter.toISOString() },
    () =>
      out(
        `valid: ${id.toString()} (expires ${notAfter.toISOString()}, ${countdown(notAfter, deps.clock.now())})`,
      ),
  );
}
