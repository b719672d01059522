/** `meshca export`: a PKCS#12 keystore (key + chain) for JVM and .NET applications. */
import type { Command } from "commander";
import { writeFileAtomic } from "../../ca/store.ts";
import { WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { fileExists, help, type MeshcaContext, readText, usage } from "./context.ts";

export function registerExport(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path } = ctx;
  program
    .command("export")
    .description("write a PKCS#12 keystore (key + chain) for JVM and .NET applications")
    .requiredOption("--p12 <out.p12>", "the keystore file to write (mode 0600)")
    .requiredOption("--cert <chain.pem>", "the identity's chain: leaf first")
    .requiredOption("--key <key.pem>", "the identity's private key")
    .option("--password-file <file>", "read the keystore password from this file (first line)")
    .option("--password-env <VAR>", "read the keystore password from this environment variable")
    .option(
      "--password <password>",
      "the password on the command line (visible to other users; needs --insecure)",
    )
    .option("--insecure", "allow --password")
    .option("--name <alias>", "the key entry's alias (friendly name)")
    .option("--force", "overwrite --p12 if it exists")
    .addHelpText(
      "after",
      help([
        "meshca export --p12 web.p12 --cert certs/issued/default-web/chain.pem --key certs/issued/default-web/key.pem --password-file pw.txt",
        "KS_PASS=... meshca export --p12 web.p12 --cert chain.pem --key key.pem --password-env KS_PASS --name web",
        "keytool -list -keystore web.p12 -storetype PKCS12 -storepass:file pw.txt",
      ]),
    )
    .addOption(jsonOption())
    .action(
      async (opts: {
        json?: boolean;
        p12: string;
        cert: string;
        key: string;
        passwordFile?: string;
        passwordEnv?: string;
        password?: string;
        insecure?: boolean;
        name?: string;
        force?: boolean;
      }) => {
        const sources = [opts.passwordFile, opts.passwordEnv, opts.password].filter((s) => s !== undefined);
        if (sources.length !== 1) {
          throw usage("give exactly one of --password-file, --password-env or --password (with --insecure)");
        }
        if (opts.password !== undefined && !opts.insecure) {
          throw usage(
            "--password puts the secret in the process list and shell history; use --password-file or --password-env, or add --insecure",
          );
        }
        let password: string;
        if (opts.passwordFile !== undefined) {
          password = (await readText(path(opts.passwordFile), "password")).split(/\r?\n/)[0]!;
        } else if (opts.passwordEnv !== undefined) {
          const value = deps.env[opts.passwordEnv];
          if (value === undefined) throw usage(`environment variable ${opts.passwordEnv} is not set`);
          password = value;
        } else {
          password = opts.password!;
        }
        if (password.length === 0) throw usage("the keystore password is empty");
        const target = path(opts.p12);
        if (!opts.force && (await fileExists(target))) {
          throw new WeftError("E_EXISTS", `${target} exists; pass --force to replace it`);
        }
        const chainPem = await readText(path(opts.cert), "chain");
        const keyPem = await readText(path(opts.key), "key");
        // Loaded on demand: node-forge is only needed here.
        const { exportPkcs12 } = await import("../../ca/pkcs12.ts");
        const der = exportPkcs12({
          keyPem,
          chainPem,
          password,
          ...(opts.name ? { friendlyName: opts.name } : {}),
        });
        await writeFileAtomic(target, der, 0o600);
        ctx.emit(opts.json, { file: target, bytes: der.length }, () =>
          out(`wrote ${target} (${der.length} bytes)`),
        );
      },
    );
}
