/**
 * Turns weft.yaml text (plus the environment, the only place it is read) into a validated, deep-frozen
 * `Config`, or every error at once, each naming its key: `timeouts.idle: "1x" is not a duration`.
 */
import { readFile } from "node:fs/promises";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import type * as z from "zod";
import { errorMessage, WeftError } from "../core/errors.ts";
import { type Config, configSchema } from "./schema.ts";

export interface ConfigIssue {
  key: string;
  message: string;
}

export class ConfigError extends WeftError {
  constructor(readonly issues: ConfigIssue[]) {
    super("E_CONFIG", issues.map((i) => `${i.key}: ${i.message}`).join("; "), { reason: "invalid" });
  }
}

/** `a.b[2].c` from a zod issue path. */
export function formatKey(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || "(top level)";
}

export function issuesFromZod(error: z.ZodError): ConfigIssue[] {
  return error.issues.map((i) => ({ key: formatKey(i.path), message: i.message }));
}

/** Parse YAML (or JSON, which is YAML) text into a plain value; syntax errors name line and column. */
export function parseYamlText(text: string, source: string): unknown {
  try {
    return parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : "";
    throw new ConfigError([
      { key: source, message: `not valid YAML${where}: ${(err as Error).message.split("\n")[0]}` },
    ]);
  }
}

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** The keys of weft.yaml that name files or directories: relative ones resolve against the config's folder. */
export const PATH_KEYS = [
  "identity.files.cert",
  "identity.files.key",
  "identity.files.bundle",
  "identity.ca.bundle",
  "identity.ca.tokenFile",
  "identity.ca.stateDir",
  "discovery.file",
] as const;

/** `config` with every relative path of `PATH_KEYS` made absolute against `baseDir`. */
function resolvePaths(config: Config, baseDir: string): Config {
  const out = structuredClone(config) as unknown as Record<string, Record<string, unknown>>;
  for (const key of PATH_KEYS) {
    const parts = key.split(".");
    let holder: Record<string, unknown> | undefined = out;
    for (const p of parts.slice(0, -1)) holder = holder?.[p] as Record<string, unknown> | undefined;
    const last = parts.at(-1)!;
    const v = holder?.[last];
    if (holder && typeof v === "string" && !isAbsolute(v)) holder[last] = resolve(baseDir, v);
  }
  return out as unknown as Config;
}

/**
 * Read and parse a weft.yaml: what `weft proxy`, `weft validate` and a reload all do. Relative paths in
 * it resolve against the file's own folder, not the working directory.
 */
export async function loadConfigFile(
  path: string,
  env: Readonly<Record<string, string | undefined>> = {},
): Promise<Config> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new WeftError("E_IO", `cannot read config ${path}: ${errorMessage(err)}`);
  }
  return parseConfig(text, env, path, { baseDir: dirname(resolve(path)) });
}

/**
 * Parse and validate. Environment overrides: `WEFT_LOG_LEVEL`, `WEFT_TRUST_DOMAIN`, `WEFT_CA_TOKEN`
 * (the join token, so it need not sit in a file), `WEFT_CA_ID` (the SPIFFE ID to request: an injected
 * pod builds it from its namespace and service account). Throws `ConfigError` listing every problem.
 */
export function parseConfig(
  text: string,
  env: Readonly<Record<string, string | undefined>> = {},
  source = "weft.yaml",
  options: { baseDir?: string } = {},
): Config {
  const raw = parseYamlText(text, source) ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError([
      { key: source, message: "must be a mapping of keys (trustDomain, identity, ...)" },
    ]);
  }
  const input = structuredClone(raw) as Record<string, unknown>;
  if (env.WEFT_TRUST_DOMAIN) input.trustDomain = env.WEFT_TRUST_DOMAIN;
  if (env.WEFT_LOG_LEVEL) input.log = { ...(input.log as object), level: env.WEFT_LOG_LEVEL };
  const identity = input.identity as { ca?: Record<string, unknown> } | undefined;
  if (env.WEFT_CA_TOKEN && identity?.ca) identity.ca.token = env.WEFT_CA_TOKEN;
  if (env.WEFT_CA_ID && identity?.ca) identity.ca.id = env.WEFT_CA_ID;
  const result = configSchema.safeParse(input);
  if (!result.success) throw new ConfigError(issuesFromZod(result.error));
  return deepFreeze(options.baseDir ? resolvePaths(result.data, options.baseDir) : result.data);
}
