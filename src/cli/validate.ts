/**
 * `weft validate`: everything `weft proxy` would find wrong with a weft.yaml, found before it starts.
 * The schema comes first (every key, every error at once, from config/load.ts); then what the schema
 * cannot see: identity files present, regular, readable by the proxy UID (not by whoever runs validate),
 * the key matching the certificate, the chain a valid X.509-SVID of the trust domain today; the services
 * file parsed; listeners that would clash on a port; explicit listeners naming a service (or port) that
 * no source declares; two services claiming one address. Each finding names the key (and file) to fix.
 */
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { stringify as stringifyYaml } from "yaml";
import { type FileUser, unreadableBy } from "../config/file-access.ts";
import { ConfigError, loadConfigFile } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import type { ServiceConfig } from "../config/services-schema.ts";
import type { Clock } from "../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../core/errors.ts";
import { parseServicesFile } from "../discovery/file-source.ts";
import { formatAddr } from "../discovery/types.ts";
import { redact } from "../proxy/admin.ts";
import { DEFAULT_IPTABLES_OPTIONS } from "../proxy/capture/iptables.ts";
import { loadIdentity } from "../proxy/identity/source.ts";
import { writeJson } from "./conventions.ts";
import { ExitCode, type WeftDeps } from "./weft.ts";

const PROXY_UID = DEFAULT_IPTABLES_OPTIONS.proxyUid;

/** A certificate with less than this share of its lifetime left is reported as a warning. */
const EXPIRY_WARNING_SHARE = 0.1;

export interface Finding {
  readonly severity: "error" | "warning";
  /** The weft.yaml key to fix (`identity.files.key`), or the services file's key. */
  readonly key: string;
  readonly message: string;
}

export interface CheckOptions {
  readonly clock: Clock;
  /** Check readability as this user (the sidecar's); undefined = as the current process. */
  readonly proxyUser?: FileUser;
}

const error = (key: string, message: string): Finding => ({ severity: "error", key, message });

/** Every finding for a config that passed the schema. */
export async function checkConfig(config: Config, o: CheckOptions): Promise<Finding[]> {
  const findings: Finding[] = [];
  const readable = async (key: string, path: string, want: "file" | "directory" = "file") => {
    const why = await unreadableBy(path, o.proxyUser, want);
    if (why) findings.push(error(key, `${path} ${why}`));
    return why === undefined;
  };

  const files = config.identity.files;
  if (files) {
    const ok = [
      await readable("identity.files.cert", files.cert),
      await readable("identity.files.key", files.key),
      await readable("identity.files.bundle", files.bundle),
    ];
    if (ok.every(Boolean)) findings.push(...(await checkIdentityFiles(config, files, o.clock)));
  }
  const ca = config.identity.ca;
  if (ca) {
    await readable("identity.ca.bundle", ca.bundle);
    if (ca.tokenFile !== undefined && ca.token === undefined)
      await readable("identity.ca.tokenFile", ca.tokenFile);
  }

  let fileServices: ServiceConfig[] = [];
  if (config.discovery.file !== undefined && (await readable("discovery.file", config.discovery.file))) {
    try {
      fileServices = parseServicesFile(await readFile(config.discovery.file, "utf8"), config.discovery.file);
    } catch (err) {
      if (err instanceof ConfigError) {
        for (const i of err.issues) findings.push(error("discovery.file", `${i.key}: ${i.message}`));
      } else findings.push(error("discovery.file", errorMessage(err)));
    }
  }

  findings.push(...portClashes(config));
  // The services file wins over weft.yaml for a name declared in both (as discovery merges them).
  const services = new Map<string, ServiceConfig>();
  for (const s of [...config.services, ...fileServices]) services.set(s.name, s);
  config.listeners.explicit.forEach((e, i) => {
    const s = services.get(e.service);
    const key = `listeners.explicit[${i}]`;
    if (!s) {
      const known = [...services.keys()].join(", ") || "none";
      findings.push(error(`${key}.service`, `no service named ${e.service} (declared: ${known})`));
    } else if (e.port !== undefined && !s.ports.some((p) => p.port === e.port)) {
      const ports = s.ports.map((p) => p.port).join(", ");
      findings.push(error(`${key}.port`, `service ${e.service} has no port ${e.port} (its ports: ${ports})`));
    }
  });
  findings.push(...addressCollisions(config.services, fileServices, config.discovery.file));
  return findings;
}

async function checkIdentityFiles(
  config: Config,
  files: NonNullable<Config["identity"]["files"]>,
  clock: Clock,
): Promise<Finding[]> {
  const [keyPem, chainPem, bundlePem] = await Promise.all([
    readFile(files.key, "utf8"),
    readFile(files.cert, "utf8"),
    readFile(files.bundle, "utf8"),
  ]);
  try {
    const id = loadIdentity({ keyPem, chainPem, bundlePem }, config.trustDomain, clock);
    const left = id.notAfter - clock.now();
    if (left < (id.notAfter - id.notBefore) * EXPIRY_WARNING_SHARE) {
      return [
        {
          severity: "warning",
          key: "identity.files.cert",
          message: `${files.cert} (${id.id}) expires in ${Math.max(0, Math.round(left / 60_000))} min, at ${new Date(id.notAfter).toISOString()}`,
        },
      ];
    }
    return [];
  } catch (err) {
    const reason = isWeftError(err) ? err.reason : "";
    if (reason === "bad_key") return [error("identity.files.key", `${files.key}: ${errorMessage(err)}`)];
    if (reason === "key_mismatch") {
      return [error("identity.files.key", `${files.key} does not match the certificate in ${files.cert}`)];
    }
    if (reason === "empty_bundle" || reason === "bad_bundle") {
      return [error("identity.files.bundle", `${files.bundle}: ${errorMessage(err)}`)];
    }
    if (reason === "wrong_trust_domain") {
      return [
        error(
          "identity.files.cert",
          `${files.cert}: ${errorMessage(err)} (trustDomain is ${config.trustDomain})`,
        ),
      ];
    }
    if (reason === "untrusted_root") {
      return [error("identity.files.cert", `${files.cert}: ${errorMessage(err)} ${files.bundle}`)];
    }
    return [error("identity.files.cert", `${files.cert}: ${errorMessage(err)}`)];
  }
}

interface Bound {
  readonly key: string;
  readonly address: string;
  readonly port: number;
}

function overlaps(a: string, b: string): boolean {
  const any = (x: string) => x === "0.0.0.0" || x === "::";
  if (a === b) return true;
  // `::` takes IPv4 too on Linux (dual stack); 0.0.0.0 takes every IPv4 address.
  if (a === "::" || b === "::") return true;
  return (any(a) && isIP(b) === 4) || (any(b) && isIP(a) === 4);
}

/** Two enabled listeners that would bind the same port on overlapping addresses (port 0 = any, never clashes). */
export function portClashes(config: Config): Finding[] {
  const l = config.listeners;
  const bound: Bound[] = [];
  for (const name of ["outbound", "inbound", "tunnel"] as const) {
    if (l[name].enabled)
      bound.push({ key: `listeners.${name}`, address: l[name].address, port: l[name].port });
  }
  bound.push({ key: "listeners.admin", address: l.admin.address, port: l.admin.port });
  if (l.metrics.enabled) {
    bound.push({ key: "listeners.metrics", address: l.metrics.address, port: l.metrics.port });
  }
  l.explicit.forEach((e, i) => {
    bound.push({ key: `listeners.explicit[${i}].listen`, address: e.listen.address, port: e.listen.port });
  });
  const out: Finding[] = [];
  for (let i = 0; i < bound.length; i++) {
    for (let j = 0; j < i; j++) {
      const a = bound[j]!;
      const b = bound[i]!;
      if (a.port !== 0 && a.port === b.port && overlaps(a.address, b.address)) {
        out.push(
          error(
            b.key,
            `${formatAddr(b.address, b.port)} clashes with ${a.key} (${formatAddr(a.address, a.port)}): both would bind port ${b.port}`,
          ),
        );
      }
    }
  }
  return out;
}

/** Two services claiming one VIP:port or one endpoint address:port: connections to it would go to either. */
export function addressCollisions(
  configServices: readonly ServiceConfig[],
  fileServices: readonly ServiceConfig[],
  file: string | undefined,
): Finding[] {
  const owners = new Map<string, { service: string; key: string }>();
  const out: Finding[] = [];
  // Services redeclared in the file replace those of weft.yaml, as in discovery.
  const fileNames = new Set(fileServices.map((s) => s.name));
  const all = [
    ...configServices.map((s, i) => ({ s, key: `services[${i}]` })).filter(({ s }) => !fileNames.has(s.name)),
    ...fileServices.map((s, i) => ({ s, key: `discovery.file (${file}): services[${i}]` })),
  ];
  for (const { s, key } of all) {
    const claims = new Set<string>();
    for (const p of s.ports) {
      for (const v of s.vips) claims.add(formatAddr(v, p.port));
    }
    for (const e of s.endpoints ?? []) claims.add(formatAddr(e.address, e.port ?? s.ports[0]!.targetPort));
    for (const addr of claims) {
      const prior = owners.get(addr);
      if (prior && prior.service !== s.name) {
        out.push(
          error(
            key,
            `service ${s.name} claims ${addr}, which service ${prior.service} (${prior.key}) already owns`,
          ),
        );
      } else if (!prior) owners.set(addr, { service: s.name, key });
    }
  }
  return out;
}

export interface ValidateOptions {
  readonly config: string;
  readonly print?: boolean;
  readonly json?: boolean;
  readonly proxyUid?: string;
  readonly proxyGid?: string;
}

function proxyUser(o: ValidateOptions): FileUser | undefined {
  const num = (flag: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0)
      throw new WeftError("E_USAGE", `${flag} "${v}" is not a user or group number`);
    return n;
  };
  if (o.proxyUid === undefined) {
    if (o.proxyGid !== undefined) throw new WeftError("E_USAGE", "--proxy-gid needs --proxy-uid");
    return process.getuid?.() === 0 ? { uid: PROXY_UID, gid: PROXY_UID } : undefined;
  }
  const uid = num("--proxy-uid", o.proxyUid);
  return { uid, gid: o.proxyGid === undefined ? uid : num("--proxy-gid", o.proxyGid) };
}

/**
 * The action of `weft validate`: exit 0 when `weft proxy` would start (warnings go to stderr), 1 with
 * every problem listed (`weft: E_CONFIG: ...`), `--json` for the same as one JSON document on stdout.
 */
export async function runValidate(o: ValidateOptions, deps: WeftDeps): Promise<void> {
  const user = proxyUser(o);
  let config: Config;
  try {
    config = await loadConfigFile(o.config, deps.env);
  } catch (err) {
    if (!(o.json && (err instanceof ConfigError || isWeftError(err)))) throw err;
    const problems =
      err instanceof ConfigError
        ? err.issues.map((i) => ({ severity: "error", key: i.key, message: i.message }))
        : [{ severity: "error", key: o.config, message: errorMessage(err) }];
    writeJson(deps.stdout, { config: o.config, valid: false, problems });
    throw new ExitCode(1);
  }
  const findings = await checkConfig(config, { clock: deps.clock, ...(user ? { proxyUser: user } : {}) });
  const errors = findings.filter((f) => f.severity === "error");
  if (o.json) {
    writeJson(deps.stdout, {
      config: o.config,
      valid: errors.length === 0,
      problems: findings,
      checkedAs: user ? { uid: user.uid, gid: user.gid } : { uid: process.getuid?.() ?? null },
      ...(o.print ? { effective: redact(config) } : {}),
    });
    if (errors.length > 0) throw new ExitCode(1);
    return;
  }
  for (const w of findings.filter((f) => f.severity === "warning")) {
    deps.stderr.write(`weft: warning: ${w.key}: ${w.message}\n`);
  }
  if (errors.length > 0) throw new ConfigError(errors.map((e) => ({ key: e.key, message: e.message })));
  if (o.print) deps.stdout.write(stringifyYaml(redact(config)));
  else {
    const as = user ? `, files readable by UID ${user.uid}` : "";
    deps.stdout.write(
      `${o.config}: valid (trust domain ${config.trustDomain}, ${config.services.length} services${as})\n`,
    );
  }
}
