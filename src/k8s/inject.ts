/**
 * Sidecar injection as one pure function over Kubernetes manifests (YAML text in, YAML text out), used
 * by `weft inject`/`weft uninject` and, on a Pod as JSON, by the `weft injector` admission webhook.
 *
 * Every pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, in `List`s and
 * multi-document files) gets:
 *   - init container `weft-init`: `weft iptables install` as root with NET_ADMIN/NET_RAW only; the app's
 *     probe ports are excluded from inbound capture (kubelet probes the pod IP in plaintext), each with a
 *     warning;
 *   - native sidecar `weft-proxy` (an init container with `restartPolicy: Always`, Kubernetes >= 1.29):
 *     UID 1337, startup probe on the admin port's `/ready`, its SPIFFE ID built from the pod's namespace
 *     and service account, its first certificate paid for with a projected service-account token
 *     (audience weft-ca), its config and the CA bundle from pod annotations through a downward-API volume;
 *   - label `weft.io/injected: "true"` (discovery dials such pods through their sidecar), Prometheus
 *     scrape annotations (unless the pod has its own), and `weft.io/status` recording what was added.
 * Only those keys are touched (comments and the rest of the text stay). Injecting an injected template
 * first removes the old injection, so inject∘inject = inject; uninject removes exactly what `weft.io/status`
 * records, so uninject∘inject = identity. hostNetwork pods and pods that opt out (`weft.io/inject: "false"`
 * as label or annotation) are skipped with a reason.
 */
import { Document, isMap, isSeq, parseAllDocuments, stringify, type YAMLMap, type YAMLSeq } from "yaml";
import { WeftError } from "../core/errors.ts";
import { INJECTED_LABEL } from "../discovery/k8s-rules.ts";

export const INJECT_ANNOTATION = "weft.io/inject";
export const STATUS_ANNOTATION = "weft.io/status";
export const CONFIG_ANNOTATION = "weft.io/sidecar-config";
export const BUNDLE_ANNOTATION = "weft.io/ca-bundle";
export const PROXY_UID = 1337;
export const ADMIN_PORT = 15000;
/** The metrics port (`listeners.metrics`): /metrics for Prometheus and /ready for the kubelet's probes. */
export const METRICS_PORT = 15020;
export const TUNNEL_PORT = 15008;
const INIT_NAME = "weft-init";
const PROXY_NAME = "weft-proxy";
const VOLUMES = { token: "weft-token", config: "weft-config" } as const;
const MOUNTS = { token: "/var/run/weft/token", config: "/etc/weft" } as const;

export interface InjectOptions {
  /** The Weft image (runs `weft`; the Dockerfile's). */
  readonly image: string;
  readonly trustDomain: string;
  /** `https://weft-ca.weft-system.svc:15443` */
  readonly caUrl: string;
  /** The mesh's trust bundle (PEM): public, carried in an annotation. */
  readonly caBundlePem: string;
  /** Audience of the projected token the CA checks (default weft-ca). */
  readonly tokenAudience?: string;
  readonly imagePullPolicy?: string;
  readonly logLevel?: string;
}

export interface InjectReport {
  readonly text: string;
  /** Pod templates changed. */
  readonly changed: number;
  readonly warnings: string[];
  /** `Kind/name: reason` for templates left alone on purpose. */
  readonly skipped: string[];
}

interface Status {
  /** Keys this injection created (removed whole on uninject). */
  created: string[];
  /** Annotations this injection added (removed on uninject). */
  annotations: string[];
}

type Json = Record<string, unknown>;

const WORKLOAD_TEMPLATE: Record<string, string[]> = {
  Deployment: ["spec", "template"],
  StatefulSet: ["spec", "template"],
  DaemonSet: ["spec", "template"],
  ReplicaSet: ["spec", "template"],
  ReplicationController: ["spec", "template"],
  Job: ["spec", "template"],
  CronJob: ["spec", "jobTemplate", "spec", "template"],
};

function usage(message: string): WeftError {
  return new WeftError("E_USAGE", message);
}

/** A child map of `parent`, created (and noted in `created` as `path`) when absent and `create` is set. */
function childMap(doc: Document, parent: YAMLMap, key: string, create: false): YAMLMap | undefined;
function childMap(
  doc: Document,
  parent: YAMLMap,
  key: string,
  create: true,
  created: string[],
  path: string,
): YAMLMap;
function childMap(
  doc: Document,
  parent: YAMLMap,
  key: string,
  create: boolean,
  created?: string[],
  path?: string,
): YAMLMap | undefined {
  const node = parent.get(key, true);
  if (isMap(node)) return node;
  if (
    node !== undefined &&
    node !== null &&
    !(typeof node === "object" && (node as { value?: unknown }).value === null)
  ) {
    throw usage(`${path ?? key} is not a mapping`);
  }
  if (!create) return undefined;
  const made = doc.createNode({}) as YAMLMap;
  parent.set(key, made);
  created?.push(path!);
  return made;
}

function childSeq(
  doc: Document,
  parent: YAMLMap,
  key: string,
  created: string[] | undefined,
  path: string,
): YAMLSeq | undefined {
  const node = parent.get(key, true);
  if (isSeq(node)) return node;
  if (
    node !== undefined &&
    node !== null &&
    !(typeof node === "object" && (node as { value?: unknown }).value === null)
  ) {
    throw usage(`${path} is not a list`);
  }
  if (!created) return undefined;
  const made = doc.createNode([]) as YAMLSeq;
  parent.set(key, made);
  created.push(path);
  return made;
}

function itemName(item: unknown): string | undefined {
  return isMap(item) ? (item.get("name") as string | undefined) : undefined;
}

interface Probe {
  httpGet?: { port?: number | string };
  tcpSocket?: { port?: number | string };
  grpc?: { port?: number };
}

/** The app's probe ports (resolved by name against its container ports), and warnings for each. */
function probePorts(spec: Json, where: string): { ports: number[]; warnings: string[] } {
  const ports = new Set<number>();
  const warnings: string[] = [];
  const containers = [...((spec.containers as Json[]) ?? [])];
  for (const c of containers) {
    const named = new Map<string, number>();
    for (const p of (c.ports as Json[]) ?? [])
      if (typeof p.name === "string") named.set(p.name, p.containerPort as number);
    for (const kind of ["livenessProbe", "readinessProbe", "startupProbe"] as const) {
      const probe = c[kind] as Probe | undefined;
      const raw = probe?.httpGet?.port ?? probe?.tcpSocket?.port ?? probe?.grpc?.port;
      if (raw === undefined) continue;
      const port = typeof raw === "number" ? raw : /^\d+$/.test(raw) ? Number(raw) : named.get(raw);
      if (port === undefined) {
        warnings.push(
          `${where}: container ${c.name} ${kind} names port "${raw}", which it does not declare; it stays captured`,
        );
        continue;
      }
      if (!ports.has(port)) {
        warnings.push(
          `${where}: port ${port} (${c.name} ${kind}) is excluded from inbound capture so kubelet's plaintext probes reach the app; every connection to that port bypasses the mesh`,
        );
      }
      ports.add(port);
    }
  }
  return { ports: [...ports].sort((a, b) => a - b), warnings };
}

function appPorts(spec: Json): number[] {
  const out = new Set<number>();
  for (const c of (spec.containers as Json[]) ?? []) {
    for (const p of (c.ports as Json[]) ?? []) {
      if (((p.protocol as string | undefined) ?? "TCP") === "TCP" && typeof p.containerPort === "number") {
        out.add(p.containerPort);
      }
    }
  }
  return [...out].sort((a, b) => a - b);
}

/** The sidecar's weft.yaml (its SPIFFE ID comes from WEFT_CA_ID, set from the downward API). */
function sidecarConfig(o: InjectOptions, inbound: number[]): string {
  const config = {
    trustDomain: o.trustDomain,
    identity: {
      ca: {
        url: o.caUrl,
        bundle: `${MOUNTS.config}/bundle.pem`,
        id: `spiffe://${o.trustDomain}/ns/unset/sa/unset`,
        kubernetesTokenFile: `${MOUNTS.token}/token`,
      },
    },
    // The admin port (config, certs, log level, explain) stays on loopback; probes and Prometheus use
    // the metrics port, which serves only /metrics and /ready.
    listeners: {
      admin: { address: "127.0.0.1", port: ADMIN_PORT },
      metrics: { address: "0.0.0.0", port: METRICS_PORT },
    },
    // The app's declared ports are the tunnel's allow-list (none declared: any port). Probe ports stay in
    // it: only their plaintext capture is skipped, mesh connections to them still arrive by the tunnel.
    inbound: { mode: "permissive", ports: inbound.map((port) => ({ port })) },
    discovery: { kubernetes: {} },
    log: { level: o.logLevel ?? "info" },
  };
  return stringify(config);
}

function initContainer(o: InjectOptions, excluded: number[]): Json {
  return {
    name: INIT_NAME,
    image: o.image,
    ...(o.imagePullPolicy ? { imagePullPolicy: o.imagePullPolicy } : {}),
    args: [
      "iptables",
      "install",
      "--proxy-uid",
      String(PROXY_UID),
      ...(excluded.length > 0 ? ["--exclude-inbound-ports", excluded.join(",")] : []),
    ],
    securityContext: {
      runAsUser: 0,
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"], add: ["NET_ADMIN", "NET_RAW"] },
    },
    resources: { requests: { cpu: "10m", memory: "32Mi" }, limits: { cpu: "100m", memory: "64Mi" } },
  };
}

function proxyContainer(o: InjectOptions): Json {
  return {
    name: PROXY_NAME,
    image: o.image,
    ...(o.imagePullPolicy ? { imagePullPolicy: o.imagePullPolicy } : {}),
    restartPolicy: "Always",
    args: ["proxy", "--config", `${MOUNTS.config}/weft.yaml`],
    env: [
      { name: "WEFT_POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
      { name: "WEFT_POD_SERVICE_ACCOUNT", valueFrom: { fieldRef: { fieldPath: "spec.serviceAccountName" } } },
      {
        name: "WEFT_CA_ID",
        value: `spiffe://${o.trustDomain}/ns/$(WEFT_POD_NAMESPACE)/sa/$(WEFT_POD_SERVICE_ACCOUNT)`,
      },
    ],
    ports: [
      { name: "weft-tunnel", containerPort: TUNNEL_PORT, protocol: "TCP" },
      { name: "weft-metrics", containerPort: METRICS_PORT, protocol: "TCP" },
    ],
    startupProbe: {
      httpGet: { path: "/ready", port: METRICS_PORT },
      periodSeconds: 1,
      failureThreshold: 120,
    },
    readinessProbe: { httpGet: { path: "/ready", port: METRICS_PORT }, periodSeconds: 5 },
    securityContext: {
      runAsUser: PROXY_UID,
      runAsGroup: PROXY_UID,
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
    },
    volumeMounts: [
      { name: VOLUMES.token, mountPath: MOUNTS.token, readOnly: true },
      { name: VOLUMES.config, mountPath: MOUNTS.config, readOnly: true },
    ],
    resources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { memory: "256Mi" } },
  };
}

function volumes(o: InjectOptions): Json[] {
  return [
    {
      name: VOLUMES.token,
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: o.tokenAudience ?? "weft-ca",
              expirationSeconds: 3600,
              path: "token",
            },
          },
        ],
      },
    },
    {
      name: VOLUMES.config,
      downwardAPI: {
        items: [
          { path: "weft.yaml", fieldRef: { fieldPath: `metadata.annotations['${CONFIG_ANNOTATION}']` } },
          { path: "bundle.pem", fieldRef: { fieldPath: `metadata.annotations['${BUNDLE_ANNOTATION}']` } },
        ],
      },
    },
  ];
}

/** Remove an earlier injection from one template; true when there was one. */
function uninjectTemplate(template: YAMLMap): boolean {
  const meta = template.get("metadata", true);
  if (!isMap(meta)) return false;
  const annotations = meta.get("annotations", true);
  const raw = isMap(annotations) ? annotations.get(STATUS_ANNOTATION) : undefined;
  if (typeof raw !== "string") return false;
  let status: Status;
  try {
    status = JSON.parse(raw) as Status;
  } catch {
    throw usage(`${STATUS_ANNOTATION} is not JSON: remove the injection by hand`);
  }
  const spec = template.get("spec", true);
  if (isMap(spec)) {
    const ours: [string, string[]][] = [
      ["initContainers", [INIT_NAME, PROXY_NAME]],
      ["volumes", Object.values(VOLUMES)],
    ];
    for (const [key, names] of ours) {
      const seq = spec.get(key, true);
      if (isSeq(seq)) seq.items = seq.items.filter((i) => !names.includes(itemName(i) ?? ""));
    }
  }
  const labels = meta.get("labels", true);
  if (isMap(labels)) labels.delete(INJECTED_LABEL);
  if (isMap(annotations)) {
    for (const k of status.annotations ?? []) annotations.delete(k);
    annotations.delete(STATUS_ANNOTATION);
  }
  // Remove what the injection created, innermost first.
  for (const path of [...(status.created ?? [])].reverse()) {
    const [top, key] = path.split(".") as [string, string | undefined];
    if (key === undefined) template.delete(top);
    else {
      const parent = template.get(top, true);
      if (isMap(parent)) parent.delete(key);
    }
  }
  return true;
}

/** Why this template is not injected, if it is not to be. */
function skipReason(meta: Json, spec: Json): string | undefined {
  const labels = (meta.labels as Record<string, string> | undefined) ?? {};
  const annotations = (meta.annotations as Record<string, string> | undefined) ?? {};
  if (labels[INJECT_ANNOTATION] === "false" || annotations[INJECT_ANNOTATION] === "false") {
    return `opted out (${INJECT_ANNOTATION}: "false")`;
  }
  if (spec.hostNetwork === true) {
    return "hostNetwork: the pod shares the node's network namespace, capture would take the node's traffic";
  }
  return undefined;
}

function injectTemplate(
  doc: Document,
  template: YAMLMap,
  o: InjectOptions,
  where: string,
  report: MutableReport,
): void {
  uninjectTemplate(template);
  const js = template.toJSON() as Json;
  const metaJs = (js.metadata as Json | undefined) ?? {};
  const specJs = (js.spec as Json | undefined) ?? {};
  const skip = skipReason(metaJs, specJs);
  if (skip) {
    report.skipped.push(`${where}: ${skip}`);
    return;
  }
  if (!Array.isArray(specJs.containers) || specJs.containers.length === 0) {
    throw usage(`${where}: the pod template has no containers`);
  }
  const probes = probePorts(specJs, where);
  report.warnings.push(...probes.warnings);
  const status: Status = { created: [], annotations: [] };
  const meta = childMap(doc, template, "metadata", true, status.created, "metadata");
  const spec = childMap(doc, template, "spec", false)!;
  const labels = childMap(doc, meta, "labels", true, status.created, "metadata.labels");
  const annotations = childMap(doc, meta, "annotations", true, status.created, "metadata.annotations");
  labels.set(INJECTED_LABEL, "true");
  const added: Record<string, string> = {
    [CONFIG_ANNOTATION]: sidecarConfig(o, appPorts(specJs)),
    [BUNDLE_ANNOTATION]: o.caBundlePem,
  };
  const own = (metaJs.annotations as Record<string, string> | undefined) ?? {};
  if (!Object.keys(own).some((k) => k.startsWith("prometheus.io/"))) {
    Object.assign(added, {
      "prometheus.io/scrape": "true",
      "prometheus.io/port": String(METRICS_PORT),
      "prometheus.io/path": "/metrics",
    });
  }
  for (const [k, v] of Object.entries(added)) {
    annotations.set(k, v);
    status.annotations.push(k);
  }
  const inits = childSeq(doc, spec, "initContainers", status.created, "spec.initContainers")!;
  inits.items.unshift(doc.createNode(initContainer(o, probes.ports)), doc.createNode(proxyContainer(o)));
  const vols = childSeq(doc, spec, "volumes", status.created, "spec.volumes")!;
  for (const v of volumes(o)) vols.items.push(doc.createNode(v));
  annotations.set(STATUS_ANNOTATION, JSON.stringify(status));
  report.changed++;
}

interface MutableReport {
  changed: number;
  warnings: string[];
  skipped: string[];
}

/** Every pod template in one object (recursing into `List`s): its map and a name for messages. */
function templatesOf(node: unknown, where: string): { template: YAMLMap; where: string }[] {
  if (!isMap(node)) return [];
  const kind = node.get("kind");
  const name = (node.getIn(["metadata", "name"]) as string | undefined) ?? "(unnamed)";
  const here = `${String(kind)}/${name}`;
  if (kind === "List" || (typeof kind === "string" && kind.endsWith("List"))) {
    const items = node.get("items", true);
    if (!isSeq(items)) return [];
    return items.items.flatMap((item, i) => templatesOf(item, `${where}items[${i}] `));
  }
  if (kind === "Pod") return [{ template: node, where: `${where}${here}` }];
  const path = typeof kind === "string" ? WORKLOAD_TEMPLATE[kind] : undefined;
  if (!path) return [];
  const template = node.getIn(path, true);
  if (!isMap(template)) throw usage(`${where}${here}: ${path.join(".")} is missing or not a mapping`);
  return [{ template, where: `${where}${here}` }];
}

function transform(
  text: string,
  fn: (doc: Document, t: YAMLMap, where: string, r: MutableReport) => void,
): InjectReport {
  const docs = parseAllDocuments(text, { uniqueKeys: true });
  if (!Array.isArray(docs)) throw usage("the input is not YAML");
  const report: MutableReport = { changed: 0, warnings: [], skipped: [] };
  docs.forEach((doc, i) => {
    if (doc.errors.length > 0) {
      const e = doc.errors[0]!;
      const line = e.linePos ? ` at line ${e.linePos[0].line}` : "";
      throw usage(`document ${i + 1} is not valid YAML${line}: ${e.message.split("\n")[0]}`);
    }
    for (const { template, where } of templatesOf(
      doc.contents,
      docs.length > 1 ? `document ${i + 1}: ` : "",
    )) {
      fn(doc, template, where, report);
    }
  });
  return { text: docs.map((d) => d.toString({ lineWidth: 0 })).join(""), ...report };
}

/** `weft inject`: the manifests with every pod template injected. */
export function injectManifests(text: string, options: InjectOptions): InjectReport {
  return transform(text, (doc, template, where, r) => injectTemplate(doc, template, options, where, r));
}

/** `weft uninject`: the manifests with every injection removed. */
export function uninjectManifests(text: string): InjectReport {
  return transform(text, (_doc, template, _where, r) => {
    if (uninjectTemplate(template)) r.changed++;
  });
}

/** The injection of one Pod given as JSON (the webhook's input); the same function as the CLI's. */
export function injectPodObject(pod: Json, options: InjectOptions): { pod: Json; report: InjectReport } {
  const doc = new Document(pod);
  const report: MutableReport = { changed: 0, warnings: [], skipped: [] };
  const name = ((pod.metadata as Json | undefined)?.name ??
    (pod.metadata as Json | undefined)?.generateName ??
    "(unnamed)") as string;
  injectTemplate(doc, doc.contents as YAMLMap, options, `Pod/${name}`, report);
  return { pod: doc.toJS() as Json, report: { text: "", ...report } };
}
