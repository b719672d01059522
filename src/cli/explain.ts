/**
 * `weft explain`: asks a running sidecar (its admin port, `/explain`) what it would do with a connection
 * and why, and prints the answer; `--json` prints the sidecar's answer as it came. With `--peer-admin`
 * it also asks the server-side sidecar about this sidecar's identity on the endpoint's port, so one
 * command shows both ends' view (policy, and each side's recent refusals).
 */
import type { Command } from "commander";
import { WeftError } from "../core/errors.ts";
import type { EndedConnection } from "../proxy/connection/record.ts";
import type { InboundExplanation, OutboundExplanation } from "../proxy/explain.ts";
import { jsonOption, writeJson } from "./conventions.ts";
import type { WeftDeps } from "./weft.ts";

const DEFAULT_ADMIN = "127.0.0.1:15000";

interface ExplainOptions {
  readonly admin: string;
  readonly peerAdmin?: string;
  readonly service?: string;
  readonly from?: string;
  readonly port?: string;
  readonly json?: boolean;
}

async function ask(admin: string, query: Record<string, string>): Promise<unknown> {
  const url = `http://${admin}/explain?${new URLSearchParams(query).toString()}`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    throw new WeftError(
      "E_CONNECT",
      `cannot reach the sidecar's admin port at ${admin} (${cause}): is weft running there? (--admin host:port)`,
    );
  }
  const body = (await res.json().catch(() => undefined)) as { error?: string } | undefined;
  if (!res.ok) {
    throw new WeftError(
      res.status === 400 ? "E_USAGE" : "E_NOT_READY",
      `${admin}: ${body?.error ?? `HTTP ${res.status}`}`,
    );
  }
  return body;
}

/** `weft explain` on `program`. */
export function registerExplain(program: Command, deps: WeftDeps, exitCodes: string): void {
  program
    .command("explain")
    .description("what a running sidecar would do with a connection, and why (reads its admin port)")
    .argument("[destination]", "address:port an app would connect to (outbound)")
    .option("--service <name>", "explain an explicit listener's service instead of a destination")
    .option("--from <spiffe-id>", "server side: a client identity (with --port) arriving on this sidecar")
    .option("--port <port>", "with --from: the local app port; with --service: which service port")
    .option("--admin <host:port>", "the sidecar's admin address", DEFAULT_ADMIN)
    .option("--peer-admin <host:port>", "outbound: also ask the server-side sidecar (its admin address)")
    .addOption(jsonOption())
    .addHelpText(
      "after",
      `
Examples:
  weft explain 198.18.100.1:80                 # outbound: service, endpoints, identity, transport
  weft explain --service backend
  weft explain --from spiffe://weft.local/ns/default/sa/frontend --port 8080   # server side: policy
  weft explain 198.18.100.1:80 --peer-admin 198.18.0.10:15000 --json
${exitCodes}`,
    )
    .action(async (destination: string | undefined, o: ExplainOptions) => {
      const given = [destination !== undefined, o.service !== undefined, o.from !== undefined].filter(
        Boolean,
      );
      if (given.length !== 1) {
        throw new WeftError(
          "E_USAGE",
          "give one of: a destination address:port, --service <name>, --from <spiffe-id> --port <n>",
        );
      }
      if (o.from !== undefined && o.port === undefined) throw new WeftError("E_USAGE", "--from needs --port");
      const query: Record<string, string> =
        o.from !== undefined
          ? { peer: o.from, port: o.port! }
          : o.service !== undefined
            ? { service: o.service, ...(o.port ? { port: o.port } : {}) }
            : { dst: destination! };
      const answer = (await ask(o.admin, query)) as OutboundExplanation | InboundExplanation;
      let peer: InboundExplanation | undefined;
      if (o.peerAdmin && answer.kind === "outbound" && answer.decision === "mesh" && answer.localIdentity) {
        const port = answer.endpoints[0]?.port ?? answer.service?.targetPort;
        if (port !== undefined) {
          peer = (await ask(o.peerAdmin, {
            peer: answer.localIdentity,
            port: String(port),
          })) as InboundExplanation;
        }
      }
      if (o.json) {
        writeJson(deps.stdout, peer ? { ...answer, peerSide: peer } : answer);
      } else {
        deps.stdout.write(answer.kind === "outbound" ? renderOutbound(answer) : renderInbound(answer));
        if (peer) deps.stdout.write(`\nServer side (${o.peerAdmin}):\n${indent(renderInbound(peer))}`);
      }
    });
}

function indent(text: string): string {
  return text
    .split("\n")
    .map((l) => (l ? `  ${l}` : l))
    .join("\n");
}

function row(label: string, value: string): string {
  return `  ${label.padEnd(10)} ${value}\n`;
}

function recentLines(recent: readonly EndedConnection[], title: string): string {
  if (recent.length === 0) return `  ${title}: none\n`;
  let out = `  ${title}:\n`;
  for (const e of recent) {
    const where = [e.src && `from ${e.src}`, e.dst && `to ${e.dst}`, e.endpoint && `via ${e.endpoint}`]
      .filter(Boolean)
      .join(" ");
    const who = e.peerIdentity !== "none" ? ` peer ${e.peerIdentity}` : "";
    out += `    ${e.at}  ${e.direction} ${e.service} ${where}${who}: ${e.reason}${e.error ? ` (${e.error})` : ""}\n`;
  }
  return out;
}

export function renderOutbound(a: OutboundExplanation): string {
  let out = `Outbound ${a.destination}${a.localIdentity ? ` from ${a.localIdentity}` : ""}\n`;
  if (a.decision === "deny") {
    out += row("decision", `deny (${a.reason}): ${a.detail}`);
    return out + recentLines(a.recent, "recent refusals like it");
  }
  if (a.decision === "passthrough") {
    out += row("decision", `passthrough: ${a.detail}`);
    out += row("transport", a.transport);
    return out + recentLines(a.recent, "recent connections that did not end normally");
  }
  const s = a.service!;
  out += row("decision", `mesh: ${a.detail}`);
  out += row(
    "service",
    `${s.name}, port ${s.port} -> target port ${s.targetPort}${s.source ? ` (from ${s.source})` : ""}`,
  );
  out += row("identity", `each endpoint's sidecar must prove ${s.identity}`);
  out += row("transport", a.transport);
  out += row(
    "retries",
    `${s.retries.attempts} attempt${s.retries.attempts === 1 ? "" : "s"} within ${s.retries.deadlineMs} ms, ${s.balancer}`,
  );
  out += "  endpoints:\n";
  for (const e of a.endpoints) {
    const parts = [e.key.padEnd(22), e.state.padEnd(9), `weight ${e.weight}`];
    parts.push(e.sidecar ? `tunnel ${e.tunnelPort}` : "plaintext (no sidecar)");
    if (e.identity !== s.identity) parts.push(`identity ${e.identity}`);
    if (e.activeConnections !== undefined) parts.push(`active ${e.activeConnections}`);
    if (e.ejectedUntil) parts.push(`ejected until ${e.ejectedUntil}`);
    if (e.timesEjected) parts.push(`ejected ${e.timesEjected}x`);
    if (e.consecutiveFailures) parts.push(`${e.consecutiveFailures} consecutive failures`);
    out += `    ${parts.join("  ")}\n`;
  }
  if (a.endpoints.length === 0) out += "    (none)\n";
  return out + recentLines(a.recent, "recent connections that did not end normally");
}

export function renderInbound(a: InboundExplanation): string {
  let out = `Inbound ${a.peerIdentity} -> port ${a.port}${a.localIdentity ? ` at ${a.localIdentity}` : ""}\n`;
  out +=
    a.decision === "allow"
      ? row("decision", `allow: ${a.detail}`)
      : row("decision", `deny (${a.reason}, ${a.why}): ${a.detail}`);
  const names = a.rule.split(",");
  const used = a.rules.filter((r) => names.includes(r.name));
  if (used.length === 0) {
    out += row(
      "rule",
      a.rule === "proxy_port"
        ? "the port is one of the proxy's own"
        : `default: ${a.policyDefault} (no rule covers port ${a.port})`,
    );
  }
  for (const r of used) {
    const ports = r.ports === "all" ? "all ports" : `ports ${r.ports.join(", ")}`;
    out += row("rule", `${r.name} (${ports}; allow ${r.allow.join(", ")})`);
  }
  if (a.app) out += row("app", `${a.app.address}:${a.app.port}, PROXY header: ${a.app.proxyProtocol}`);
  return out + recentLines(a.recent, "recent refusals of this identity on this port");
}
