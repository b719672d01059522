/**
 * Discovery source `k8s`: three reflectors (Services, EndpointSlices, Pods; cluster-wide or in the
 * configured namespaces) whose local copies are turned into the service table by `kubeServices` every
 * time any of them changes. Changes that arrive together (one read from a watch stream, one re-list)
 * are folded into one table rebuild. `synced` resolves when all three collections have been listed and
 * the first table is in place.
 */
import type { Service as KubeService, Pod } from "kubernetes-types/core/v1.js";
import type { EndpointSlice } from "kubernetes-types/discovery/v1.js";
import type { ServiceConfig } from "../config/services-schema.ts";
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import { type KubeApi, type KubeObject, resourcePath } from "../k8s/client.ts";
import { type BackoffSettings, objectKey, Reflector, type ReflectorHandler } from "../k8s/reflector.ts";
import { kubeServices } from "./k8s-rules.ts";

export interface K8sSourceOptions {
  readonly api: KubeApi;
  readonly trustDomain: string;
  /** Namespaces to watch; empty = all. */
  readonly namespaces: readonly string[];
  readonly onServices: (services: ServiceConfig[]) => void;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random?: () => number;
  readonly backoff?: BackoffSettings;
  readonly watchTimeoutSeconds?: number;
  /** Every change a reflector applies, for tests that check what the watch delivered. */
  readonly onChange?: (resource: string, kind: "add" | "update" | "delete", key: string) => void;
}

const RESOURCES = [
  { resource: "services", apiVersion: "v1" },
  { resource: "endpointslices", apiVersion: "discovery.k8s.io/v1" },
  { resource: "pods", apiVersion: "v1" },
] as const;

export class K8sSource {
  readonly synced: Promise<void>;
  private readonly reflectors = new Map<string, Reflector<KubeObject>[]>();
  private scheduled = false;
  private ready = false;
  private lastHeld = "";
  private last: { services: ServiceConfig[]; heldBack: string[] } = { services: [], heldBack: [] };

  constructor(private readonly o: K8sSourceOptions) {
    const namespaces = o.namespaces.length > 0 ? o.namespaces : [undefined];
    for (const { resource, apiVersion } of RESOURCES) {
      const list: Reflector<KubeObject>[] = [];
      for (const ns of namespaces) {
        list.push(
          new Reflector<KubeObject>({
            api: o.api,
            resource,
            path: resourcePath(apiVersion, resource, ns),
            handler: this.handler(resource),
            clock: o.clock,
            logger: o.logger,
            metrics: o.metrics,
            ...(o.random ? { random: o.random } : {}),
            ...(o.backoff ? { backoff: o.backoff } : {}),
            ...(o.watchTimeoutSeconds !== undefined ? { watchTimeoutSeconds: o.watchTimeoutSeconds } : {}),
          }),
        );
      }
      this.reflectors.set(resource, list);
    }
    this.synced = Promise.all([...this.reflectors.values()].flat().map((r) => r.synced)).then(() => {
      this.ready = true;
      this.rebuild();
    });
  }

  private handler(resource: string): ReflectorHandler<KubeObject> {
    const note = (kind: "add" | "update" | "delete", obj: KubeObject) => {
      this.o.onChange?.(resource, kind, objectKey(obj));
      this.schedule();
    };
    return {
      onAdd: (obj) => note("add", obj),
      onUpdate: (_old, obj) => note("update", obj),
      onDelete: (obj) => note("delete", obj),
    };
  }

  /** The reflectors of one resource (tests read their attempt counts). */
  reflectorsOf(resource: "services" | "endpointslices" | "pods"): readonly Reflector<KubeObject>[] {
    return this.reflectors.get(resource) ?? [];
  }

  /** The declarations last handed to the table, and the pods whose endpoints were held back. */
  lastServices(): readonly ServiceConfig[] {
    return this.last.services;
  }

  lastHeldBack(): readonly string[] {
    return this.last.heldBack;
  }

  start(): void {
    for (const r of [...this.reflectors.values()].flat()) r.start();
  }

  async stop(): Promise<void> {
    await Promise.all([...this.reflectors.values()].flat().map((r) => r.stop()));
  }

  private schedule(): void {
    if (!this.ready || this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.rebuild();
    });
  }

  private items<T>(resource: string): T[] {
    const out: T[] = [];
    for (const r of this.reflectors.get(resource) ?? []) for (const v of r.store.values()) out.push(v as T);
    return out;
  }

  private rebuild(): void {
    const pods = new Map<string, Pod>();
    for (const p of this.items<Pod>("pods")) pods.set(objectKey(p), p);
    const { services, heldBack } = kubeServices(
      {
        services: this.items<KubeService>("services"),
        slices: this.items<EndpointSlice>("endpointslices"),
        pods,
      },
      this.o.trustDomain,
    );
    const held = heldBack.join(",");
    if (held !== this.lastHeld && heldBack.length > 0) {
      this.o.logger.debug(
        { pods: heldBack.slice(0, 20), count: heldBack.length },
        "endpoints held back until their pod is known",
      );
    }
    this.lastHeld = held;
    this.last = { services, heldBack };
    this.o.onServices(services);
  }
}
