/**
 * The `weft` program: `weft proxy` runs a sidecar from weft.yaml, `weft validate` checks a config and
 * reports every error, `weft iptables install|uninstall|print` manages the capture rules (what an init
 * container runs). Built as a function of its dependencies so tests run it in-process; `weft-main.ts`
 * wires the real process. Exit codes: 0 ok, 1 failure, 2 usage.
 */

import { Command, CommanderError, Option } from "commander";
import type { Clock } from "../core/clock.ts";
import { isWeftError, WeftError } from "../core/errors.ts";
import type { Logger, LogLevel } from "../core/log.ts";
import {
  buildRules,
  DEFAULT_IPTABLES_OPTIONS,
  type IptablesBackend,
  type IptablesOptions,
  runIptablesCommand,
} from "../proxy/capture/iptables.ts";
import {
  applyConventions,
  errorLine,
  jsonOption,
  missingCommandLine,
  versionLine,
  writeJson,
} from "./conventions.ts";
import { registerExplain } from "./explain.ts";
import type { ValidateOptions } from "./validate.ts";
import { registerKubernetesCommands } from "./weft-k8s.ts";

export interface WeftDeps {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly clock: Clock;
  /** Resolves when the process is asked to stop (SIGTERM/SIGINT). */
  readonly waitForShutdown: () => Promise<void>;
  /** Reads standard input (`weft inject -f -`). */
  readonly readStdin?: () => Promise<string>;
  /** Told the injector's URL once `weft injector` listens (tests). */
  readonly onInjector?: (url: string) => void;
  /**
   * Subscribe to reload requests (SIGHUP in the real process): weft.yaml, the identity files and the
   * services file are read again. Without it, only file changes reload.
   */
  readonly onReload?: (listener: () => void) => void;
  /** Subscribe to signals the process ignores (SIGUSR1, SIGUSR2), to log them. */
  readonly onIgnoredSignal?: (listener: (signal: NodeJS.Signals) => void) => void;
  /** Logger factory: the sidecar's level comes from its config. */
  readonly makeLogger?: (level: LogLevel) => Logger;
}

/** Thrown by a command that already printed its result (e.g. as JSON) and only needs to set the exit code. */
export class ExitCode extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

const EXIT_CODES = `
Exit codes:
  0  success
  1  failure (one line on stderr: weft: E_CODE: what failed)
  2  usage error`;

function ports(value: string): number[] {
  if (value.trim() === "") return [];
  return value.split(",").map((p) => {
    const n = Number(p.trim());
    if (!Number.isInteger(n) || n < 1 || n > 65535)
      throw new WeftError("E_USAGE", `"${p}" is not a port (1-65535)`);
    return n;
  });
}

export function buildWeftProgram(deps: WeftDeps): Command {
  const program = new Command("weft")
    .description("Weft sidecar: transparent mutual-TLS TCP proxy with SPIFFE identities")
    .version(versionLine("weft"), "-V, --version", "print the version (and Node's and OpenSSL's)")
    .exitOverride()
    .configureOutput({ writeOut: (s) => deps.stdout.write(s), writeErr: (s) => deps.stderr.write(s) })
    .showHelpAfterError(false);

  program
    .command("proxy")
    .description("run the sidecar until SIGTERM/SIGINT, then drain live connections")
    .requiredOption("-c, --config <file>", "weft.yaml")
    .addHelpText(
      "after",
      `
Examples:
  weft proxy --config /etc/weft/weft.yaml
  WEFT_LOG_LEVEL=debug weft proxy -c weft.yaml
${EXIT_CODES}`,
    )
    .action(async (opts: { config: string }) => {
      // Loaded when it runs: `weft --help` or `weft iptables` need none of the sidecar's code.
      const { runProxy } = await import("./weft-proxy.ts");
      await runProxy(opts.config, deps);
    });

  program
    .command("validate")
    .description(
      "check a weft.yaml and what it points at (files, keys, services, ports): every error at once",
    )
    .requiredOption("-c, --config <file>", "weft.yaml")
    .option("--print", "print the effective config (defaults filled in, paths resolved, secrets redacted)")
    .addOption(jsonOption())
    .option(
      "--proxy-uid <uid>",
      "check that files are readable by this UID (default: 1337 when run as root, else the current user)",
    )
    .option("--proxy-gid <gid>", "the proxy user's group (default: the same number as --proxy-uid)")
    .addHelpText(
      "after",
      `\nExamples:\n  weft validate -c weft.yaml\n  weft validate -c weft.yaml --print\n  weft validate -c weft.yaml --json --proxy-uid 1337\n${EXIT_CODES}`,
    )
    .action(async (opts: ValidateOptions) => {
      const { runValidate } = await import("./validate.ts");
      await runValidate(opts, deps);
    });

  registerExplain(program, deps, EXIT_CODES);

  registerIptables(program, deps);
  registerKubernetesCommands(program, deps, EXIT_CODES);
  applyConventions(program, deps.stdout);
  return program;
}

/** `weft iptables install|uninstall|print`: the capture rules, with every port and exclusion as an option. */
function registerIptables(program: Command, deps: WeftDeps): void {
  const ipt = program
    .command("iptables")
    .description("install, remove or print the iptables rules that redirect a pod's TCP to the sidecar");
  const common = (c: Command) =>
    c
      .option(
        "--proxy-uid <uid>",
        "UID the sidecar runs as (never captured)",
        String(DEFAULT_IPTABLES_OPTIONS.proxyUid),
      )
      .option(
        "--outbound-port <port>",
        "outbound capture port",
        String(DEFAULT_IPTABLES_OPTIONS.outboundPort),
      )
      .option("--inbound-port <port>", "inbound capture port", String(DEFAULT_IPTABLES_OPTIONS.inboundPort))
      .option(
        "--tunnel-port <port>",
        "mesh tunnel port (not captured)",
        String(DEFAULT_IPTABLES_OPTIONS.tunnelPort),
      )
      .option("--admin-port <port>", "admin port (not captured)", String(DEFAULT_IPTABLES_OPTIONS.adminPort))
      .option(
        "--metrics-port <port>",
        "Prometheus port (not captured)",
        String(DEFAULT_IPTABLES_OPTIONS.metricsPort),
      )
      .option("--exclude-outbound-ports <list>", "comma-separated destination ports left alone", "")
      .option("--exclude-inbound-ports <list>", "comma-separated inbound ports left alone", "")
      .option("--exclude-outbound-cidrs <list>", "comma-separated destination CIDRs left alone", "")
      .option("--include-inbound-ports <list>", "capture only these inbound ports ('*' = all)", "*")
      .option("--no-ipv6", "do not write ip6tables rules")
      .addOption(
        new Option("--backend <backend>", "iptables backend")
          .choices(["auto", "nft", "legacy"])
          .default("auto"),
      )
      .addHelpText(
        "after",
        `
Examples:
  weft iptables print
  weft iptables install --exclude-outbound-ports 15443 --exclude-inbound-ports 22
  weft iptables uninstall
${EXIT_CODES}`,
      );
  for (const action of ["install", "uninstall", "print"] as const) {
    const cmd = common(ipt.command(action).description(`${action} Weft's nat rules`));
    if (action === "print") cmd.addOption(jsonOption());
    cmd.action(async (o: Record<string, string | boolean>) => {
      const options = iptablesOptions(o);
      if (o.json) {
        const rules = buildRules(options);
        writeJson(deps.stdout, { ipv4: rules.v4, ipv6: rules.v6 || null });
        return;
      }
      deps.stdout.write(await runIptablesCommand(action, options));
    });
  }
}

/** The rules' options from the command line; E_USAGE for a port that is not one. */
function iptablesOptions(o: Record<string, string | boolean>): Partial<IptablesOptions> {
  const num = (k: string) => {
    const n = Number(o[k]);
    if (!Number.isInteger(n) || n < 0 || n > 65535)
      throw new WeftError("E_USAGE", `--${k} "${o[k]}" is not a number`);
    return n;
  };
  const include = String(o.includeInboundPorts);
  return {
    proxyUid: num("proxyUid"),
    outboundPort: num("outboundPort"),
    inboundPort: num("inboundPort"),
    tunnelPort: num("tunnelPort"),
    adminPort: num("adminPort"),
    metricsPort: num("metricsPort"),
    excludeOutboundPorts: ports(String(o.excludeOutboundPorts)),
    excludeInboundPorts: ports(String(o.excludeInboundPorts)),
    excludeOutboundCidrs: String(o.excludeOutboundCidrs)
      .split(",")
      .map((c) => c.trim())
      .filter(Boolean),
    includeInbound: include === "*" ? "*" : ports(include),
    ipv6: o.ipv6 !== false,
    backend: o.backend as IptablesBackend,
  };
}

/** config/load.ts's ConfigError, known without loading that module (and zod with it). */
function isConfigError(err: unknown): err is WeftError & { issues: Array<{ key: string; message: string }> } {
  return isWeftError(err, "E_CONFIG") && Array.isArray((err as { issues?: unknown }).issues);
}

/** Run the program; resolves with the exit code. */
export async function runWeft(argv: readonly string[], deps: WeftDeps): Promise<number> {
  const program = buildWeftProgram(deps);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.exitCode === 0)
        return 0;
      const line = missingCommandLine("weft", err.code);
      if (line) deps.stderr.write(`${line}\n`);
      return 2;
    }
    if (err instanceof ExitCode) return err.exitCode;
    if (isConfigError(err)) {
      deps.stderr.write(`weft: E_CONFIG: the config has ${err.issues.length} problem(s):\n`);
      for (const i of err.issues) deps.stderr.write(`  ${i.key}: ${i.message}\n`);
      return 1;
    }
    deps.stderr.write(`${errorLine("weft", err)}\n`);
    return err instanceof WeftError && err.code === "E_USAGE" ? 2 : 1;
  }
}
