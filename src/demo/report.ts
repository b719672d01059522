/**
 * What both demos print, in one place so the loopback and the namespace demo read the same: a
 * sidecar's identity, the spread of a phase's answers over the backends, an endpoint's state, and the
 * lines of the metrics worth showing.
 */

/** Tallies answers by who gave them; a failed request counts apart. */
export class Spread {
  private readonly byName = new Map<string, number>();
  private failed = 0;

  answered(name: string): void {
    this.byName.set(name, (this.byName.get(name) ?? 0) + 1);
  }

  fail(): void {
    this.failed++;
  }

  /** `backend-1: 10, backend-2: 10, failed: 0`: backends by name, failures last. */
  toString(): string {
    const names = [...this.byName].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}: ${v}`);
    return [...names, `failed: ${this.failed}`].join(", ");
  }
}

/** One sidecar's certificate as its admin `/certs` body shows it, and where to reach it. */
export function identityLine(name: string, certsBody: string, where: string): string {
  const certs = JSON.parse(certsBody) as { spiffeId?: string; serial?: string };
  return `   ${name.padEnd(10)} ${String(certs.spiffeId ?? "")}  serial ${String(certs.serial ?? "").slice(0, 12)}…  ${where}`;
}

/** An endpoint of the frontend's admin `/endpoints`, as the demos read it. */
export interface EndpointView {
  readonly key: string;
  readonly state: string;
  readonly timesEjected: number;
}

/** Every endpoint of an admin `/endpoints` body, over all services. */
export function endpointsIn(body: string): EndpointView[] {
  return (JSON.parse(body) as Array<{ endpoints: EndpointView[] }>).flatMap((s) => s.endpoints);
}

/** `endpoint <key> [<name>] <state> (ejected N×)`, the key padded to `keyWidth`. */
export function endpointLine(e: EndpointView, keyWidth: number, name?: string): string {
  const who = name === undefined ? "" : `${name.padEnd(10)} `;
  return `   endpoint ${e.key.padEnd(keyWidth)} ${who}${e.state} (ejected ${e.timesEjected}×)`;
}

const INBOUND_CLOSED = /^weft_tcp_connections_closed_total\{direction="inbound"/;
const RESILIENCE = /^weft_(outlier_ejections_total|upstream_connect_retries_total)\{/;

/**
 * The metrics lines that tell the demo's story: a backend's inbound connections by peer identity (at
 * most `inboundMax`), the frontend's ejections and retries. Takes both sidecars' `/metrics` text.
 */
export function metricsHighlights(
  backendMetrics: string,
  frontendMetrics: string,
  inboundMax?: number,
): string[] {
  const inbound = backendMetrics.split("\n").filter((l) => INBOUND_CLOSED.test(l));
  return [
    ...inbound.slice(0, inboundMax ?? inbound.length).map((l) => `   backend-1: ${l}`),
    ...frontendMetrics
      .split("\n")
      .filter((l) => RESILIENCE.test(l))
      .map((l) => `   frontend:  ${l}`),
  ];
}
