/**
 * The Kubernetes discovery rules as one pure function: Services, EndpointSlices and Pods in, the
 * service table's declarations out (the same `ServiceConfig` the file and DNS sources produce).
 *
 * - One table entry per TCP service port: `<name>.<namespace>` for a one-port Service,
 *   `<name>.<namespace>:<port name>` when it has several. ClusterIP(s):port route to it; a headless
 *   Service (clusterIP None) has no VIP and is reached by pod IP (the table also routes endpoint
 *   addresses). ExternalName Services and UDP/SCTP ports are not Weft's business.
 * - A service port takes, from each of its EndpointSlices (label `kubernetes.io/service-name`), the slice
 *   port of the same name (both may be unnamed); a slice without it contributes nothing.
 * - `ready` absent counts as ready. Terminating endpoints that are still serving are used only when no
 *   endpoint is ready. FQDN slices are ignored; IPv4 and IPv6 slices both count. Endpoints are
 *   deduplicated by ip:port across slices.
 * - An endpoint backed by a Pod gets the identity `spiffe://<td>/ns/<pod namespace>/sa/<service
 *   account>` and is reached through its sidecar when the pod carries the injection label, in plaintext
 *   when it does not. An endpoint whose Pod is not known yet is held back until it is (the identity cannot
 *   be known without it). An endpoint with no Pod behind it (a hand-made slice) is dialled in plaintext.
 */
import type { Service as KubeService, Pod } from "kubernetes-types/core/v1.js";
import type { EndpointSlice } from "kubernetes-types/discovery/v1.js";
import { DEFAULT_TUNNEL_PORT, type EndpointConfig, type ServiceConfig } from "../config/services-schema.ts";
import type { BalancerKind } from "./types.ts";

/** Set on a pod (template) by `weft inject`: the pod runs Weft's sidecar. */
export const INJECTED_LABEL = "weft.io/injected";
/** Optional Service annotation choosing the balancer (round-robin, least-connections, ...). */
export const BALANCER_ANNOTATION = "weft.io/balancer";
/** Optional Pod annotation: the port its sidecar accepts tunnels on (default 15008). */
export const TUNNEL_PORT_ANNOTATION = "weft.io/tunnel-port";
export const SERVICE_NAME_LABEL = "kubernetes.io/service-name";

const BALANCERS: readonly BalancerKind[] = [
  "round-robin",
  "least-connections",
  "peak-ewma",
  "random",
  "source-hash",
];

export interface KubeObjects {
  readonly services: Iterable<KubeService>;
  readonly slices: Iterable<EndpointSlice>;
  /** Pods by `namespace/name`. */
  readonly pods: ReadonlyMap<string, Pod>;
}

export interface KubeRulesResult {
  readonly services: ServiceConfig[];
  /** Endpoints held back because their Pod is not known yet, as `namespace/pod`. */
  readonly heldBack: string[];
}

export function kubeIdentity(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

interface Candidate {
  readonly endpoint: EndpointConfig;
  readonly ready: boolean;
}

/** EndpointSlices (IPv4 and IPv6 only) by the `namespace/name` of the Service they belong to. */
function slicesByService(slices: Iterable<EndpointSlice>): Map<string, EndpointSlice[]> {
  const out = new Map<string, EndpointSlice[]>();
  for (const slice of slices) {
    const svc = slice.metadata?.labels?.[SERVICE_NAME_LABEL];
    if (!svc || (slice.addressType !== "IPv4" && slice.addressType !== "IPv6")) continue;
    const key = `${slice.metadata?.namespace}/${svc}`;
    const list = out.get(key) ?? [];
    list.push(slice);
    out.set(key, list);
  }
  return out;
}

/** The ClusterIP(s) of a Service: none for a headless one. */
function serviceVips(spec: NonNullable<KubeService["spec"]>): string[] {
  if (spec.clusterIP === "None") return [];
  return (spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : [])).filter(
    (ip) => ip !== "" && ip !== "None",
  );
}

/** The balancer the Service's annotation names, round-robin when it names none (or an unknown one). */
function balancerOf(svc: KubeService): BalancerKind {
  const annotated = svc.metadata?.annotations?.[BALANCER_ANNOTATION] as BalancerKind | undefined;
  return annotated && BALANCERS.includes(annotated) ? annotated : "round-robin";
}

type SliceEndpoint = NonNullable<EndpointSlice["endpoints"]>[number];
type Backing = Pick<EndpointConfig, "tunnelPort" | "sidecar" | "identity">;

/**
 * How an endpoint is reached, from the Pod behind it: its identity, whether it has a sidecar and on
 * which tunnel port. Undefined (and the pod added to `heldBack`) when that Pod is not known yet.
 */
function backingOf(
  e: SliceEndpoint,
  slice: EndpointSlice,
  pods: ReadonlyMap<string, Pod>,
  trustDomain: string,
  heldBack: Set<string>,
): Backing | undefined {
  const ref = e.targetRef;
  // No Pod behind it (a hand-made slice): dialled in plaintext.
  if (!ref || (ref.kind ?? "Pod") !== "Pod" || !ref.name)
    return { tunnelPort: DEFAULT_TUNNEL_PORT, sidecar: false };
  const podKey = `${ref.namespace ?? slice.metadata?.namespace}/${ref.name}`;
  const pod = pods.get(podKey);
  if (!pod) {
    heldBack.add(podKey);
    return undefined;
  }
  const podNs = pod.metadata?.namespace ?? "default";
  const annotated = Number(pod.metadata?.annotations?.[TUNNEL_PORT_ANNOTATION]);
  return {
    identity: kubeIdentity(trustDomain, podNs, pod.spec?.serviceAccountName || "default"),
    sidecar: pod.metadata?.labels?.[INJECTED_LABEL] === "true",
    tunnelPort:
      Number.isInteger(annotated) && annotated > 0 && annotated < 65536 ? annotated : DEFAULT_TUNNEL_PORT,
  };
}

/** Every ready or terminating-but-serving address of the Service's slices for the port named `portName`. */
function candidatesFor(
  slices: readonly EndpointSlice[],
  portName: string,
  objects: KubeObjects,
  trustDomain: string,
  heldBack: Set<string>,
): Candidate[] {
  const candidates: Candidate[] = [];
  for (const slice of slices) {
    const slicePort = (slice.ports ?? []).find(
      (p) => (p.name ?? "") === portName && (p.protocol ?? "TCP") === "TCP" && p.port !== undefined,
    );
    if (!slicePort) continue;
    for (const e of slice.endpoints ?? []) {
      const c = e.conditions ?? {};
      const ready = c.ready ?? true;
      const terminatingServing = !ready && c.terminating === true && c.serving === true;
      if (!ready && !terminatingServing) continue;
      const backing = backingOf(e, slice, objects.pods, trustDomain, heldBack);
      if (!backing) continue;
      const { identity, sidecar, tunnelPort } = backing;
      for (const address of e.addresses ?? []) {
        candidates.push({
          ready,
          endpoint: {
            address,
            port: slicePort.port!,
            tunnelPort,
            weight: 1,
            sidecar,
            ...(identity ? { identity } : {}),
          },
        });
      }
    }
  }
  return candidates;
}

/** The ready candidates (the serving terminating ones only when none is ready), one per ip:port, sorted. */
function chooseEndpoints(candidates: readonly Candidate[]): EndpointConfig[] {
  const anyReady = candidates.some((c) => c.ready);
  const seen = new Set<string>();
  const endpoints: EndpointConfig[] = [];
  for (const c of candidates) {
    if (c.ready !== anyReady) continue;
    const key = `${c.endpoint.address}|${c.endpoint.port}`;
    if (seen.has(key)) continue;
    seen.add(key);
    endpoints.push(c.endpoint);
  }
  return endpoints.sort((a, b) => `${a.address}|${a.port}`.localeCompare(`${b.address}|${b.port}`));
}

type ServicePort = NonNullable<NonNullable<KubeService["spec"]>["ports"]>[number];

/** The table entry of one TCP port of a Service. */
function portEntry(
  svc: KubeService,
  sp: ServicePort,
  slices: readonly EndpointSlice[],
  objects: KubeObjects,
  trustDomain: string,
  heldBack: Set<string>,
): ServiceConfig {
  const name = svc.metadata?.name;
  const namespace = svc.metadata?.namespace ?? "default";
  const spec = svc.spec!;
  const portName = sp.name ?? "";
  const endpoints = chooseEndpoints(candidatesFor(slices, portName, objects, trustDomain, heldBack));
  const numericTarget = typeof sp.targetPort === "number" ? sp.targetPort : undefined;
  const targetPort = endpoints[0]?.port ?? numericTarget ?? sp.port;
  const entryName =
    spec.ports!.length === 1 ? `${name}.${namespace}` : `${name}.${namespace}:${portName || sp.port}`;
  const identity = endpoints.find((e) => e.identity)?.identity;
  return {
    name: entryName,
    namespace,
    ...(identity ? { identity } : {}),
    ports: [{ port: sp.port, targetPort, ...(portName ? { name: portName } : {}) }],
    vips: serviceVips(spec),
    balancer: balancerOf(svc),
    endpoints,
  };
}

/** The table entries that Kubernetes' objects describe. */
export function kubeServices(objects: KubeObjects, trustDomain: string): KubeRulesResult {
  const byService = slicesByService(objects.slices);
  const heldBack = new Set<string>();
  const out: ServiceConfig[] = [];
  const sorted = [...objects.services].sort((a, b) =>
    `${a.metadata?.namespace}/${a.metadata?.name}`.localeCompare(
      `${b.metadata?.namespace}/${b.metadata?.name}`,
    ),
  );
  for (const svc of sorted) {
    const name = svc.metadata?.name;
    const namespace = svc.metadata?.namespace ?? "default";
    const spec = svc.spec;
    if (!name || !spec || spec.type === "ExternalName" || !spec.ports || spec.ports.length === 0) continue;
    const slices = byService.get(`${namespace}/${name}`) ?? [];
    for (const sp of spec.ports) {
      if ((sp.protocol ?? "TCP") !== "TCP") continue;
      out.push(portEntry(svc, sp, slices, objects, trustDomain, heldBack));
    }
  }
  return { services: out, heldBack: [...heldBack].sort() };
}
