/**
 * What every `meshca` verb shares: the injected outside world (MeshcaDeps), the per-run context built from
 * it (output, path resolution, the CA directory and its token store), help text and argument parsers,
 * and the file helpers. One file per verb beside this one registers its command on the program.
 */
import { X509Certificate } from "node:crypto";
import { access, readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { InvalidArgumentError, Option } from "commander";
import { CertificateAuthority, type KeyAlgorithm } from "../../ca/authority.ts";
import { KEY_ALGORITHMS as ALL_KEY_ALGORITHMS } from "../../ca/key-policy.ts";
import { SERIALS_FILE, SerialStore } from "../../ca/serials.ts";
import { CaStore } from "../../ca/store.ts";
import { TOKENS_FILE, TokenStore } from "../../ca/tokens.ts";
import { formatDuration, parseDuration } from "../../config/units.ts";
import type { Clock } from "../../core/clock.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import { writeJson } from "../conventions.ts";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

const DEFAULT_DIR = "certs";
export const KEY_ALGORITHMS: KeyAlgorithm[] = [...ALL_KEY_ALGORITHMS];

/** What the CLI needs from the outside world. */
export interface MeshcaDeps {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  clock: Clock;
  /** Relative paths (`--dir`, files) resolve against this. */
  cwd: string;
  env: Record<string, string | undefined>;
  /** Used by `serve` for its JSON log lines. */
  logger: Logger;
  /** `serve` runs until this resolves (SIGINT/SIGTERM in the real entry point). */
  waitForShutdown: () => Promise<void>;
  /** Called once `serve` listens, with its URL (tests use it instead of parsing stdout). */
  onServing?: (info: { url: string; port: number }) => void;
}

/** What a verb's action uses, built once per program from MeshcaDeps. */
export interface MeshcaContext {
  deps: MeshcaDeps;
  out(line: string): void;
  err(line: string): void;
  /** A user-given path, resolved against `deps.cwd`. */
  path(p: string): string;
  storeAt(dir: string): CaStore;
  /** The CA in `dir`, or E_IO naming the `meshca init` that makes one. */
  loadCa(dir: string): Promise<{ store: CaStore; ca: CertificateAuthority }>;
  tokenStore(dir: string, trustDomain: string): TokenStore;
  /** The record of issued certificates of the CA in `dir` (revocation, root retirement). */
  serialStore(dir: string): SerialStore;
  /** Record a certificate this command issued from the CA in `dir`. */
  recordIssued(
    dir: string,
    ca: CertificateAuthority,
    cert: { serial: string; id: { toString(): string }; notAfter: Date },
  ): Promise<void>;
  /** A fresh `--dir <dir>` option (commander options cannot be shared between commands). */
  dirOption(): Option;
  /** A command's result: `data` as one JSON document with `--json`, else the human text `human` prints. */
  emit(json: boolean | undefined, data: unknown, human: () => void): void;
}

export function meshcaContext(deps: MeshcaDeps): MeshcaContext {
  const path = (p: string) => resolve(deps.cwd, p);
  const storeAt = (dir: string) => new CaStore(path(dir));
  return {
    deps,
    out: (line) => void deps.stdout.write(`${line}\n`),
    err: (line) => void deps.stderr.write(`${line}\n`),
    path,
    storeAt,
    async loadCa(dir) {
      const store = storeAt(dir);
      if (!(await store.exists())) {
        throw new WeftError(
          "E_IO",
          `no CA in ${path(dir)}; create one with: meshca init --trust-domain <td> --dir ${dir}`,
        );
      }
      const material = await store.load();
      return { store, ca: new CertificateAuthority(material, { clock: deps.clock }) };
    },
    tokenStore: (dir, trustDomain) =>
      new TokenStore({ file: resolve(path(dir), TOKENS_FILE), clock: deps.clock, trustDomain }),
    serialStore: (dir) => new SerialStore(resolve(path(dir), SERIALS_FILE), deps.clock),
    recordIssued: (dir, ca, cert) =>
      new SerialStore(resolve(path(dir), SERIALS_FILE), deps.clock).record({
        serial: cert.serial,
        id: cert.id.toString(),
        notAfter: cert.notAfter,
        root: ca.rootFingerprint(),
      }),
    dirOption: () => new Option("--dir <dir>", "CA directory").default(DEFAULT_DIR),
    emit: (json, data, human) => (json ? writeJson(deps.stdout, data) : human()),
  };
}

const EXIT_CODES_HELP = `
EXIT CODES
  0  success
  1  failure (the error is one line on stderr)
  2  usage error (unknown option, missing or malformed argument)`;

export function help(examples: string[], exitCodes = EXIT_CODES_HELP): string {
  return `\nEXAMPLES\n${examples.map((e) => `  ${e}`).join("\n")}\n${exitCodes}\n`;
}

/** A duration with a unit (`30s`, `15m`, `24h`, `7d`, `1h30m`), for option parsers; rejects bare numbers. */
export function parseCliDuration(value: string): number {
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(value.trim())) {
    throw new InvalidArgumentError(`"${value}" is not a duration; use e.g. 30s, 15m, 24h, 7d`);
  }
  const ms = parseDuration(value);
  if (ms <= 0) throw new InvalidArgumentError("a duration must be above zero");
  return ms;
}

export function parsePositiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new InvalidArgumentError(`"${value}" is not a whole number of at least 1`);
  }
  return Number(value);
}

export function usage(message: string): WeftError {
  return new WeftError("E_USAGE", message);
}

export async function fileExists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

export async function readText(p: string, what: string): Promise<string> {
  try {
    return await readFile(p, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new WeftError(
      "E_IO",
      `cannot read the ${what} file ${p}: ${code === "ENOENT" ? "no such file" : errorMessage(e)}`,
    );
  }
}

/** Every certificate in a PEM text, in order. Throws E_PEM when there is none or one is malformed. */
export function splitCertificates(pem: string, source: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new WeftError("E_PEM", `${source} holds no PEM certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (e) {
      throw new WeftError("E_PEM", `certificate ${i + 1} in ${source} is malformed: ${errorMessage(e)}`);
    }
  });
}

/** `expires in 23h 59m` / `expired 2h ago` / `not valid for another 5m`. */
export function countdown(notAfter: Date, now: number): string {
  const left = notAfter.getTime() - now;
  return left > 0 ? `expires in ${formatDuration(left)}` : `expired ${formatDuration(-left)} ago`;
}
