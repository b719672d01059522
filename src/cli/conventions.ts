/**
 * What every Weft command line does the same way, for `weft` and `meshca` alike:
 * - `--version` prints the version with the Node and OpenSSL it runs on (what a bug report needs);
 * - `--json` on every command that prints data: one JSON document on stdout instead of the text;
 * - every error is one line `name: E_CODE: what failed and the fix` on stderr, usage errors from the
 *   argument parser included (exit 2), and errors that are not a WeftError get a code too;
 * - a closed stdout (`meshca inspect x.pem | head -1`) ends the process quietly with exit 0;
 * - `completion bash|zsh` prints a completion script built from the program's own commands and options.
 */
import { readFileSync } from "node:fs";
import { Argument, type Command, Option } from "commander";
import { errorMessage, WeftError } from "../core/errors.ts";

/** The package's version, from the package.json two folders up (src/cli/ and dist/cli/ alike). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version?: string;
  };
  return pkg.version ?? "unknown";
}

/** `weft 0.1.0 (node v24.21.0, OpenSSL 3.5.8)`. */
export function versionLine(name: string): string {
  return `${name} ${packageVersion()} (node ${process.version}, OpenSSL ${process.versions.openssl})`;
}

/** A fresh `--json` option (commander options cannot be shared between commands). */
export function jsonOption(): Option {
  return new Option("--json", "print the result as one JSON document on stdout");
}

/** Writes `data` as indented JSON and a newline. */
export function writeJson(stream: { write(text: string): unknown }, data: unknown): void {
  stream.write(`${JSON.stringify(data, null, 2)}\n`);
}

/**
 * The `E_CODE: message` of anything thrown: a WeftError as it is; a system error (EACCES, ENOSPC, ...)
 * as E_IO; anything else, which is a defect, as E_INTERNAL with what to do about it.
 */
export function codedMessage(err: unknown): string {
  if (err instanceof WeftError) return err.message;
  const sys = err as Partial<NodeJS.ErrnoException> | null;
  if (typeof sys?.code === "string" && typeof sys.syscall === "string") return `E_IO: ${errorMessage(err)}`;
  return `E_INTERNAL: ${errorMessage(err)} (unexpected: please report it with the output of --version)`;
}

/** `name: E_CODE: message` on one line. */
export function errorLine(name: string, err: unknown): string {
  return `${name}: ${codedMessage(err).replaceAll(/\s*\n\s*/g, " ")}`;
}

/** The full command path, e.g. `weft iptables install`. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

function allCommands(cmd: Command): Command[] {
  return [cmd, ...cmd.commands.flatMap(allCommands)];
}

/**
 * Applies the conventions to a built program: the parser's own errors ("unknown option", "missing
 * required argument", ...) become `name: E_USAGE: ... (see \`<command> --help\`)`, and the
 * `completion` command is added. Call once every command is registered.
 */
export function applyConventions(program: Command, stdout: { write(text: string): unknown }): void {
  const name = program.name();
  program
    .command("completion")
    .description("print a shell completion script (bash or zsh)")
    .addArgument(new Argument("<shell>", "the shell").choices(["bash", "zsh"]))
    .addHelpText(
      "after",
      `
Examples:
  source <(${name} completion bash)                       # this shell; put it in ~/.bashrc to keep it
  ${name} completion zsh > "\${fpath[1]}/_${name}"          # zsh, then start a new shell`,
    )
    .action((shell: "bash" | "zsh") => {
      stdout.write(completionScript(program, shell));
    });
  for (const cmd of allCommands(program)) {
    const path = commandPath(cmd);
    cmd.configureOutput({
      ...cmd.configureOutput(),
      outputError: (text, write) => {
        const what = text
          .replace(/^error:\s*/, "")
          .replaceAll(/\s*\n\s*/g, " ")
          .trim();
        write(`${name}: E_USAGE: ${what} (see \`${path} --help\`)\n`);
      },
    });
  }
}

/**
 * The line for a CommanderError that is a usage error commander did not print itself: a command group
 * given without its command (commander printed the group's help instead). Undefined otherwise.
 */
export function missingCommandLine(name: string, code: string): string | undefined {
  return code === "commander.help"
    ? `${name}: E_USAGE: a command is missing; the help above lists the commands (see \`${name} --help\`)`
    : undefined;
}

/** Ends the process quietly (exit 0) when `stream`'s reader has gone: `... | head -1`. */
export function exitQuietlyOnClosedPipe(
  stream: NodeJS.WritableStream,
  exit: (code: number) => void = (code) => process.exit(code),
): void {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") exit(0);
    else throw err;
  });
}

interface Node {
  /** Words after the program name, space-separated ("" for the program itself). */
  readonly path: string;
  readonly subcommands: string[];
  /** Every option spelling, --help included. */
  readonly options: string[];
  /** Options that take a value: a fixed list of values, files (a path placeholder), or nothing to offer. */
  readonly values: Array<{ flags: string[]; offer: readonly string[] }>;
  /** The choices of the first positional argument, when fixed. */
  readonly argChoices?: readonly string[];
}

function completionTree(program: Command): Node[] {
  return allCommands(program).map((cmd) => {
    const path = commandPath(cmd).split(" ").slice(1).join(" ");
    const spellings = (o: Option) => [o.long, o.short].filter((s): s is string => Boolean(s));
    const visible = cmd.options.filter((o) => !o.hidden);
    const first = cmd.registeredArguments[0];
    return {
      path,
      subcommands: cmd.commands.map((c) => c.name()),
      options: [...visible.flatMap(spellings), "--help"],
      values: visible
        .filter((o) => o.required || o.optional)
        .map((o) => ({
          flags: spellings(o),
          offer: o.argChoices ?? (PATH_PLACEHOLDER.test(o.flags) ? ["@files"] : ["@none"]),
        })),
      ...(first?.argChoices ? { argChoices: first.argChoices } : {}),
    };
  });
}

/** An option value that names a file or folder: `<file>`, `<dir>`, `<cert.pem>`, `<out.p12>`, ... */
const PATH_PLACEHOLDER = /<[^>]*(file|dir|path|\.pem|\.p12|\.csr)[^>]*>/i;

const shellWord = (s: string) => (/^[A-Za-z0-9_./:=@+-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);

/** The shell functions that answer from the command tree: subcommands, options, argument choices, values. */
function completionTables(fn: string, nodes: Node[]): string {
  const arm = (path: string, body: string) => `    ${path === "" ? "''" : shellWord(path)}) ${body} ;;`;
  const table = (what: string, pick: (n: Node) => string[] | undefined) =>
    [
      `${fn}_${what}() {`,
      '  case "$1" in',
      ...nodes.flatMap((n) => {
        const words = pick(n);
        return words && words.length > 0 ? [arm(n.path, `echo ${words.map(shellWord).join(" ")}`)] : [];
      }),
      "  esac",
      "}",
    ].join("\n");
  // `<path>|<option>`: the option's fixed values, `@files` or `@none`.
  const valueTable = [
    `${fn}_values() {`,
    '  case "$1|$2" in',
    ...nodes.flatMap((n) =>
      n.values.flatMap((v) =>
        v.flags.map((f) => `    ${shellWord(`${n.path}|${f}`)}) echo ${v.offer.map(shellWord).join(" ")} ;;`),
      ),
    ),
    "    *) return 1 ;;",
    "  esac",
    "}",
  ].join("\n");
  return [
    table("subcommands", (n) => n.subcommands),
    table("options", (n) => n.options),
    table("argchoices", (n) => (n.argChoices ? [...n.argChoices] : undefined)),
    valueTable,
  ].join("\n");
}

/**
 * A completion script for `program`: subcommands, then each command's options; an option's fixed
 * values (`--backend auto|nft|legacy`), files for any other option value, fixed argument values
 * (`completion bash|zsh`). One table in shell `case` form, walked by a bash or a zsh function.
 */
export function completionScript(program: Command, shell: "bash" | "zsh"): string {
  const name = program.name();
  const fn = `_${name.replaceAll(/[^A-Za-z0-9_]/g, "_")}`;
  const data = completionTables(fn, completionTree(program));
  // The command path: the words before the cursor that name a subcommand of the path so far.
  // (Not `path`: in zsh that is the PATH array.)
  /** A shell parameter expansion, `${name}` in the script (not a placeholder of this template). */
  const shellVar = (name: string) => `$\{${name}}`;
  const walk = (words: string, from: string, to: string) => `  local cmdpath="" i w subs
  for ((i = ${from}; i < ${to}; i++)); do
    w=${words}
    subs=" $(${fn}_subcommands "$cmdpath") "
    if [[ $w != -* && $subs == *" $w "* ]]; then cmdpath="\${cmdpath:+$cmdpath }$w"; fi
  done`;
  if (shell === "bash") {
    return `# bash completion for ${name} (${name} completion bash)
${data}
${fn}_complete() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} values
${walk(shellVar("COMP_WORDS[i]"), "1", "COMP_CWORD")}
  if values=$(${fn}_values "$cmdpath" "$prev"); then
    case $values in
      @files) COMPREPLY=($(compgen -f -- "$cur")) ;;
      @none) COMPREPLY=() ;;
      *) COMPREPLY=($(compgen -W "$values" -- "$cur")) ;;
    esac
    return
  fi
  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "$(${fn}_options "$cmdpath")" -- "$cur")); return; fi
  COMPREPLY=($(compgen -W "$(${fn}_subcommands "$cmdpath") $(${fn}_argchoices "$cmdpath")" -- "$cur"))
}
complete -o default -F ${fn}_complete ${name}
`;
  }
  return `#compdef ${name}
# zsh completion for ${name} (${name} completion zsh > "\${fpath[1]}/_${name}")
${data}
${fn}() {
  local values
${walk(shellVar("words[i]"), "2", "CURRENT")}
  if values=$(${fn}_values "$cmdpath" "\${words[CURRENT-1]}"); then
    case $values in
      @files) _files ;;
      @none) ;;
      *) compadd -- \${=values} ;;
    esac
    return
  fi
  if [[ \${words[CURRENT]} == -* ]]; then compadd -- $(${fn}_options "$cmdpath"); return; fi
  local -a words_here
  words_here=($(${fn}_subcommands "$cmdpath") $(${fn}_argchoices "$cmdpath"))
  if (( \${#words_here} )); then compadd -- $words_here; else _files; fi
}
if [[ $funcstack[1] == ${fn} ]]; then ${fn} "$@"; else compdef ${fn} ${name}; fi
`;
}
