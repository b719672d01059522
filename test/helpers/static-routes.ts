/**
 * A small static route table for data-plane tests, so they do not depend on discovery's load balancer
 * and outlier detection: services with fixed endpoints, round-robin picking that honours `exclude`, and
 * a log of what was reported for each lease.
 */
import type {
  Endpoint,
  EndpointLease,
  PickContext,
  RouteTable,
  RouteTarget,
  Service,
  SocketAddr,
} from "../../src/discovery/types.ts";
import { formatAddr } from "../../src/discovery/types.ts";

export interface StaticEndpointInput {
  address: string;
  port: number;
  tunnelPort: number;
  identity?: string;
  sidecar?: boolean;
}

export interface StaticServiceInput {
  name: string;
  identity: string;
  ports: Array<number | { port: number; targetPort: number }>;
  vips?: string[];
  endpoints: StaticEndpointInput[];
  retries?: { attempts: number; deadlineMs: number };
}

export interface LeaseReport {
  service: string;
  endpoint: string;
  outcome: "success" | "failure" | "released";
  detail?: string | number;
}

export class StaticRouteTable implements RouteTable {
  readonly services: Service[];
  readonly reports: LeaseReport[] = [];
  private readonly next = new Map<string, number>();

  constructor(inputs: StaticServiceInput[]) {
    this.services = inputs.map((s) => ({
      name: s.name,
      namespace: "default",
      identity: s.identity,
      ports: s.ports.map((p) => (typeof p === "number" ? { port: p, targetPort: p } : p)),
      vips: s.vips ?? [],
      balancer: "round-robin",
      retries: s.retries ?? { attempts: 3, deadlineMs: 10_000 },
      endpoints: s.endpoints.map(
        (e): Endpoint => ({
          key: formatAddr(e.address, e.port),
          address: e.address,
          port: e.port,
          tunnelPort: e.tunnelPort,
          weight: 1,
          identity: e.identity ?? s.identity,
          sidecar: e.sidecar ?? true,
        }),
      ),
    }));
  }

  resolve(dst: SocketAddr): RouteTarget | undefined {
    for (const service of this.services) {
      for (const sp of service.ports) {
        if (service.vips.includes(dst.address) && sp.port === dst.port) {
          return { service, servicePort: sp.port, targetPort: sp.targetPort };
        }
      }
      for (const e of service.endpoints) {
        if (e.address === dst.address && e.port === dst.port) {
          const sp = service.ports.find((p) => p.targetPort === dst.port);
          return { service, servicePort: sp?.port ?? dst.port, targetPort: dst.port };
        }
      }
    }
    return undefined;
  }

  service(name: string): Service | undefined {
    return this.services.find((s) => s.name === name);
  }

  pick(serviceName: string, ctx: PickContext): EndpointLease | undefined {
    const service = this.service(serviceName);
    if (!service) return undefined;
    const candidates = service.endpoints.filter((e) => !ctx.exclude.has(e.key));
    if (candidates.length === 0) return undefined;
    const i = this.next.get(serviceName) ?? 0;
    this.next.set(serviceName, i + 1);
    const endpoint = candidates[i % candidates.length]!;
    const reports = this.reports;
    let released = false;
    return {
      endpoint,
      reportSuccess(ms) {
        reports.push({ service: serviceName, endpoint: endpoint.key, outcome: "success", detail: ms });
      },
      reportFailure(reason) {
        reports.push({ service: serviceName, endpoint: endpoint.key, outcome: "failure", detail: reason });
      },
      release() {
        if (released) return;
        released = true;
        reports.push({ service: serviceName, endpoint: endpoint.key, outcome: "released" });
      },
    };
  }
}
