/**
 * The `meshca` command line: every operator action on a trust domain (init, issue, sign, join tokens,
 * the CA server, bundle, inspect, verify, PKCS#12 export, rotation). This module builds the program and
 * maps failures to exit codes; each verb (its help, examples and action) is a file in `meshca/`, and the
 * work is done by `src/ca/*`. Dependencies (streams, clock, cwd, env, logger, shutdown signal) are
 * injected so tests run it in-process; `meshca-main.ts` wires the real ones.
 *
 * Exit codes: 0 success, 1 failure (including "chain is invalid" from `verify`), 2 usage error.
 */
import { Command, CommanderError } from "commander";
import { isWeftError } from "../core/errors.ts";
import { applyConventions, errorLine, missingCommandLine, versionLine } from "./conventions.ts";
import { registerBundle } from "./meshca/bundle.ts";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, help, type MeshcaDeps, meshcaContext } from "./meshca/context.ts";
import { registerExport } from "./meshca/export-p12.ts";
import { registerInit } from "./meshca/init.ts";
import { registerInspect } from "./meshca/inspect.ts";
import { registerIssue } from "./meshca/issue.ts";
import { registerRevoke } from "./meshca/revoke.ts";
import { registerRotate } from "./meshca/rotate.ts";
import { registerServe } from "./meshca/serve.ts";
import { registerSign } from "./meshca/sign.ts";
import { registerToken } from "./meshca/token.ts";
import { registerVerify } from "./meshca/verify.ts";

export { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type MeshcaDeps } from "./meshca/context.ts";

/** Builds the `meshca` program. Parse with `parseAsync(argv, { from: "user" })`, or use `runMeshca`. */
export function buildMeshcaProgram(deps: MeshcaDeps): Command {
  const ctx = meshcaContext(deps);
  const program = new Command("meshca");
  program
    .description("Weft's certificate authority: SPIFFE identities for a trust domain")
    .version(versionLine("meshca"), "-V, --version", "print the version (and Node's and OpenSSL's)")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => deps.stdout.write(s),
      writeErr: (s) => deps.stderr.write(s),
    })
    .showSuggestionAfterError(true)
    .helpCommand(true)
    .addHelpText(
      "after",
      help([
        "meshca init --trust-domain weft.local",
        "meshca issue --ns default --sa web --ttl 24h",
        "meshca token create --id spiffe://weft.local/ns/default/sa/web",
        "meshca serve --listen 127.0.0.1:15443",
        "meshca inspect certs/issued/default-web/cert.pem",
      ]),
    );

  for (const register of [
    registerInit,
    registerIssue,
    registerSign,
    registerToken,
    registerServe,
    registerBundle,
    registerInspect,
    registerVerify,
    registerRevoke,
    registerExport,
    registerRotate,
  ]) {
    register(program, ctx);
  }
  applyConventions(program, deps.stdout);
  return program;
}

/** Runs `meshca` with `argv` (without node and script); returns the exit code and prints errors in one line. */
export async function runMeshca(argv: string[], deps: MeshcaDeps): Promise<number> {
  const program = buildMeshcaProgram(deps);
  try {
    await program.parseAsync(argv, { from: "user" });
    return EXIT_OK;
  } catch (e) {
    return exitCodeFor(e, deps);
  }
}

function exitCodeFor(e: unknown, deps: MeshcaDeps): number {
  if (e instanceof CommanderError) {
    // Commander already printed its message. --help and --version succeed; `commander.help` is help shown
    // because a command group was given without its subcommand, which is a usage error.
    if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return EXIT_OK;
    if (e.code === "commander.executeSubCommandAsync") return e.exitCode;
    const line = missingCommandLine("meshca", e.code);
    if (line) deps.stderr.write(`${line}\n`);
    return EXIT_USAGE;
  }
  deps.stderr.write(`${errorLine("meshca", e)}\n`);
  return isWeftError(e, "E_USAGE") ? EXIT_USAGE : EXIT_FAILURE;
}
