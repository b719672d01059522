/**
 * The iptables rules that make a sidecar transparent, as `weft iptables install|uninstall|print` (what an
 * init container runs). Rules live in Weft's own nat chains, so installing replaces only them and
 * uninstalling leaves the rest of the table as it was:
 *
 *   OUTPUT     -p tcp → WEFT_OUTPUT:  proxy UID, loopback, excluded ports/CIDRs RETURN; the rest → WEFT_OUT_REDIRECT (→ 15001)
 *   PREROUTING -p tcp → WEFT_PREROUTING: tunnel, admin and excluded ports RETURN; app ports → WEFT_IN_REDIRECT (→ 15006)
 *
 * The chains are written in one `iptables-restore --noflush` call per family, so a reinstall swaps them
 * atomically; the jumps from OUTPUT/PREROUTING are added only when missing (install is idempotent).
 */
import { execFile } from "node:child_process";
import { WeftError } from "../../core/errors.ts";

export const CHAINS = {
  output: "WEFT_OUTPUT",
  outRedirect: "WEFT_OUT_REDIRECT",
  prerouting: "WEFT_PREROUTING",
  inRedirect: "WEFT_IN_REDIRECT",
} as const;

export type IptablesBackend = "auto" | "nft" | "legacy";

export interface IptablesOptions {
  /** The sidecar's UID: its own connections are never captured (default 1337). */
  readonly proxyUid: number;
  readonly outboundPort: number;
  readonly inboundPort: number;
  readonly tunnelPort: number;
  readonly adminPort: number;
  /** The Prometheus port (`listeners.metrics`), reached by scrapers from outside the pod. */
  readonly metricsPort: number;
  /** Outbound destination ports left alone (e.g. the CA server's). */
  readonly excludeOutboundPorts: readonly number[];
  /** Inbound ports left alone (besides the tunnel and admin ports). */
  readonly excludeInboundPorts: readonly number[];
  /** Outbound destination CIDRs left alone. */
  readonly excludeOutboundCidrs: readonly string[];
  /** Inbound ports to capture: every port ("*") or only these. */
  readonly includeInbound: "*" | readonly number[];
  /** Also write the IPv6 rules with ip6tables. */
  readonly ipv6: boolean;
  readonly backend: IptablesBackend;
}

export const DEFAULT_IPTABLES_OPTIONS: IptablesOptions = {
  proxyUid: 1337,
  outboundPort: 15001,
  inboundPort: 15006,
  tunnelPort: 15008,
  adminPort: 15000,
  metricsPort: 15020,
  excludeOutboundPorts: [],
  excludeInboundPorts: [],
  excludeOutboundCidrs: [],
  includeInbound: "*",
  ipv6: true,
  backend: "auto",
};

function isV6Cidr(cidr: string): boolean {
  return cidr.includes(":");
}

function checkOptions(o: IptablesOptions): void {
  const ports = [
    o.outboundPort,
    o.inboundPort,
    o.tunnelPort,
    o.adminPort,
    o.metricsPort,
    ...o.excludeInboundPorts,
    ...o.excludeOutboundPorts,
  ];
  if (o.includeInbound !== "*") ports.push(...o.includeInbound);
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535)
      throw new WeftError("E_USAGE", `port ${p} is not 1-65535`);
  }
  if (!Number.isInteger(o.proxyUid) || o.proxyUid < 0)
    throw new WeftError("E_USAGE", `uid ${o.proxyUid} is not valid`);
  for (const c of o.excludeOutboundCidrs) {
    if (!/^[0-9a-fA-F.:]+(\/\d{1,3})?$/.test(c))
      throw new WeftError("E_USAGE", `"${c}" is not a CIDR like 10.0.0.0/8`);
  }
}

/** The chain bodies for one family, as iptables-restore input (without the jumps into them). */
function chainRules(o: IptablesOptions, family: 4 | 6): string[] {
  const loopback = family === 4 ? "127.0.0.0/8" : "::1/128";
  const lines = [
    "*nat",
    `:${CHAINS.output} - [0:0]`,
    `:${CHAINS.outRedirect} - [0:0]`,
    `:${CHAINS.prerouting} - [0:0]`,
    `:${CHAINS.inRedirect} - [0:0]`,
    `-A ${CHAINS.outRedirect} -p tcp -j REDIRECT --to-ports ${o.outboundPort}`,
    `-A ${CHAINS.inRedirect} -p tcp -j REDIRECT --to-ports ${o.inboundPort}`,
    // Inbound: the mesh's own ports reach the sidecar untouched.
    `-A ${CHAINS.prerouting} -p tcp --dport ${o.tunnelPort} -j RETURN`,
    `-A ${CHAINS.prerouting} -p tcp --dport ${o.adminPort} -j RETURN`,
    `-A ${CHAINS.prerouting} -p tcp --dport ${o.metricsPort} -j RETURN`,
    ...o.excludeInboundPorts.map((p) => `-A ${CHAINS.prerouting} -p tcp --dport ${p} -j RETURN`),
    ...(o.includeInbound === "*"
      ? [`-A ${CHAINS.prerouting} -p tcp -j ${CHAINS.inRedirect}`]
      : o.includeInbound.map((p) => `-A ${CHAINS.prerouting} -p tcp --dport ${p} -j ${CHAINS.inRedirect}`)),
    // Outbound: the proxy's own traffic, loopback and exclusions leave as they are.
    `-A ${CHAINS.output} -m owner --uid-owner ${o.proxyUid} -j RETURN`,
    `-A ${CHAINS.output} -o lo -j RETURN`,
    `-A ${CHAINS.output} -d ${loopback} -j RETURN`,
    ...o.excludeOutboundCidrs
      .filter((c) => isV6Cidr(c) === (family === 6))
      .map((c) => `-A ${CHAINS.output} -d ${c} -j RETURN`),
    ...o.excludeOutboundPorts.map((p) => `-A ${CHAINS.output} -p tcp --dport ${p} -j RETURN`),
    `-A ${CHAINS.output} -p tcp -j ${CHAINS.outRedirect}`,
  ];
  return lines;
}

const JUMPS = [
  ["OUTPUT", CHAINS.output],
  ["PREROUTING", CHAINS.prerouting],
] as const;

/** The exact rules, for `print` and for review: chains plus the two jumps, per family. */
export function buildRules(opts: Partial<IptablesOptions> = {}): { v4: string; v6: string } {
  const o = { ...DEFAULT_IPTABLES_OPTIONS, ...opts };
  checkOptions(o);
  const render = (family: 4 | 6) =>
    [...chainRules(o, family), ...JUMPS.map(([from, to]) => `-A ${from} -p tcp -j ${to}`), "COMMIT", ""].join(
      "\n",
    );
  return { v4: render(4), v6: o.ipv6 ? render(6) : "" };
}

export type Exec = (cmd: string, args: readonly string[], input?: string) => Promise<string>;

/** Runs a command (stdin optional) with /usr/sbin on PATH; rejects with its stderr. */
export const defaultExec: Exec = async (cmd, args, input) => {
  const env = { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` };
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, [...args], { env, maxBuffer: 8 << 20 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(new Error(String(stderr || err.message).trim()), { exitCode: err.code }));
      else resolve(stdout);
    });
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin?.on("error", () => {});
    child.stdin?.end(input ?? "");
  });
};

function binaries(backend: IptablesBackend, family: 4 | 6): { ipt: string; restore: string } {
  const base = family === 4 ? "iptables" : "ip6tables";
  const suffix = backend === "auto" ? "" : `-${backend}`;
  return { ipt: `${base}${suffix}`, restore: `${base}${suffix}-restore` };
}

async function chainExists(exec: Exec, ipt: string, chain: string): Promise<boolean> {
  return exec(ipt, ["-w", "-t", "nat", "-n", "-L", chain]).then(
    () => true,
    () => false,
  );
}

async function jumpExists(exec: Exec, ipt: string, from: string, to: string): Promise<boolean> {
  return exec(ipt, ["-w", "-t", "nat", "-C", from, "-p", "tcp", "-j", to]).then(
    () => true,
    () => false,
  );
}

function failed(what: string, err: unknown): WeftError {
  const msg = (err as Error).message;
  const hint = /ENOENT|not found/.test(msg)
    ? " (is iptables installed? choose the backend with --backend nft|legacy)"
    : /Permission denied|not permitted/.test(msg)
      ? " (needs root or CAP_NET_ADMIN)"
      : "";
  return new WeftError("E_IPTABLES", `${what} failed: ${msg.split("\n")[0]}${hint}`, { cause: err });
}

/** Write (or atomically replace) Weft's chains and add the jumps that are missing. */
export async function installRules(
  opts: Partial<IptablesOptions> = {},
  exec: Exec = defaultExec,
): Promise<string> {
  const o = { ...DEFAULT_IPTABLES_OPTIONS, ...opts };
  checkOptions(o);
  const families: Array<4 | 6> = o.ipv6 ? [4, 6] : [4];
  const applied: string[] = [];
  for (const family of families) {
    const { ipt, restore } = binaries(o.backend, family);
    const jumps: string[] = [];
    for (const [from, to] of JUMPS) {
      if (!(await chainExists(exec, ipt, to)) || !(await jumpExists(exec, ipt, from, to))) {
        jumps.push(`-A ${from} -p tcp -j ${to}`);
      }
    }
    const input = [...chainRules(o, family), ...jumps, "COMMIT", ""].join("\n");
    try {
      await exec(restore, ["-w", "--noflush"], input);
    } catch (err) {
      throw failed(`${restore} (IPv${family})`, err);
    }
    applied.push(input);
  }
  return applied.join("\n");
}

/** Remove the jumps and Weft's chains; a no-op where they are absent. */
export async function uninstallRules(
  opts: Partial<IptablesOptions> = {},
  exec: Exec = defaultExec,
): Promise<string> {
  const o = { ...DEFAULT_IPTABLES_OPTIONS, ...opts };
  const families: Array<4 | 6> = o.ipv6 ? [4, 6] : [4];
  const removed: string[] = [];
  for (const family of families) {
    const { ipt } = binaries(o.backend, family);
    for (const [from, to] of JUMPS) {
      // Bounded: at most a few duplicate jumps could exist (e.g. from manual edits).
      for (let i = 0; i < 16 && (await jumpExists(exec, ipt, from, to)); i++) {
        await exec(ipt, ["-w", "-t", "nat", "-D", from, "-p", "tcp", "-j", to]).catch((err) => {
          throw failed(`${ipt} -D ${from}`, err);
        });
        removed.push(`IPv${family}: -D ${from} -p tcp -j ${to}`);
      }
    }
    for (const chain of Object.values(CHAINS)) {
      if (await chainExists(exec, ipt, chain)) {
        await exec(ipt, ["-w", "-t", "nat", "-F", chain]).catch((err) => {
          throw failed(`${ipt} -F ${chain}`, err);
        });
      }
    }
    for (const chain of Object.values(CHAINS)) {
      if (await chainExists(exec, ipt, chain)) {
        await exec(ipt, ["-w", "-t", "nat", "-X", chain]).catch((err) => {
          throw failed(`${ipt} -X ${chain}`, err);
        });
        removed.push(`IPv${family}: -X ${chain}`);
      }
    }
  }
  return removed.length > 0 ? `${removed.join("\n")}\n` : "no Weft rules were installed\n";
}

/** The entry point of `weft iptables <action>`: returns what to print. */
export async function runIptablesCommand(
  action: "install" | "uninstall" | "print",
  opts: Partial<IptablesOptions> = {},
  deps: { exec?: Exec } = {},
): Promise<string> {
  const exec = deps.exec ?? defaultExec;
  if (action === "print") {
    const r = buildRules(opts);
    return `# IPv4 (iptables-restore --noflush)\n${r.v4}${r.v6 ? `\n# IPv6 (ip6tables-restore --noflush)\n${r.v6}` : ""}`;
  }
  if (action === "install") {
    await installRules(opts, exec);
    return "Weft iptables rules installed\n";
  }
  return uninstallRules(opts, exec);
}
