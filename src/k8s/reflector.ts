/**
 * A reflector keeps a local copy of one Kubernetes resource collection in step with the API server, the
 * way client-go's does: list (in pages), then watch from the list's resourceVersion with bookmarks, and
 * hand every change to a handler as add / update / delete.
 *
 * - A watch the server ends (its timeoutSeconds) starts again at once from the last resourceVersion seen
 *   (bookmarks move it forward without an object).
 * - 410 Gone (the version was compacted away, or the API server restarted and its watch cache starts
 *   later) forces a re-list; the new list is diffed against the copy, so the handler sees exactly the
 *   deletes, updates and adds that were missed, never a duplicate add.
 * - Any other failure (server down, refused, broken stream) waits a capped exponential backoff with
 *   jitter before the next attempt: delay n is base·2^(n-1) scaled by a random factor in [0.5, 1),
 *   capped at `maxMs`, reset once a watch has delivered anything.
 * - `synced` resolves after the first complete list has been handed to the handler.
 */
import type { Clock, TimerHandle } from "../core/clock.ts";
import { errorMessage, isWeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import { isGone, type KubeApi, type KubeList, type KubeObject, type WatchEvent } from "./client.ts";

export interface ReflectorHandler<T> {
  onAdd(obj: T): void;
  onUpdate(oldObj: T, newObj: T): void;
  onDelete(obj: T): void;
  /** After the first list and after every re-list has been applied (one batch boundary). */
  onResync?(): void;
}

export interface BackoffSettings {
  /** First delay (default 250 ms). */
  readonly initialMs: number;
  /** Largest delay (default 30 s). */
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffSettings = { initialMs: 250, maxMs: 30_000 };

/** The delay before retry number `failures` (1-based): base·2^(n-1)·[0.5, 1), capped. */
export function backoffDelay(failures: number, s: BackoffSettings, random: () => number): number {
  const exp = Math.min(s.maxMs, s.initialMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(exp * (0.5 + 0.5 * random()));
}

export interface ReflectorOptions<T extends KubeObject> {
  readonly api: KubeApi;
  /** Short name for logs and metrics, e.g. `endpointslices`. */
  readonly resource: string;
  /** The collection path, e.g. `/apis/discovery.k8s.io/v1/endpointslices`. */
  readonly path: string;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  readonly handler: ReflectorHandler<T>;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: Pick<WeftMetrics, "kubeWatchRestarts" | "kubeRelists" | "kubeWatchEvents" | "kubeSynced">;
  readonly random?: () => number;
  readonly backoff?: BackoffSettings;
  /** Items per list page (default 500). */
  readonly pageSize?: number;
  /** The server ends each watch after a random time in [min, 2·min) seconds (default 300). */
  readonly watchTimeoutSeconds?: number;
}

/** `namespace/name` (or `name` for cluster-scoped objects). */
export function objectKey(obj: KubeObject): string {
  const m = obj.metadata ?? {};
  return m.namespace ? `${m.namespace}/${m.name}` : (m.name ?? "");
}

export class Reflector<T extends KubeObject> {
  readonly synced: Promise<void>;
  private resolveSynced!: () => void;
  private readonly items = new Map<string, T>();
  private rv = "";
  private needList = true;
  private failures = 0;
  private stopped = true;
  private loop: Promise<void> | undefined;
  private controller = new AbortController();
  private sleeping: { timer: TimerHandle; wake: () => void } | undefined;
  private readonly random: () => number;
  private readonly backoff: BackoffSettings;
  private attempts = 0;

  constructor(private readonly o: ReflectorOptions<T>) {
    this.synced = new Promise((resolve) => {
      this.resolveSynced = resolve;
    });
    this.random = o.random ?? Math.random;
    this.backoff = o.backoff ?? DEFAULT_BACKOFF;
  }

  /** The local copy (read-only). */
  get store(): ReadonlyMap<string, T> {
    return this.items;
  }

  get resourceVersion(): string {
    return this.rv;
  }

  /** Requests made to the API server (lists and watches), for tests of the backoff. */
  get requestAttempts(): number {
    return this.attempts;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.controller = new AbortController();
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.controller.abort();
    this.sleeping?.timer.cancel();
    this.sleeping?.wake();
    await this.loop;
    this.o.metrics.kubeSynced.set({ resource: this.o.resource }, 0);
  }

  private async run(): Promise<void> {
    const log = this.o.logger;
    while (!this.stopped) {
      try {
        if (this.needList) {
          await this.list();
          this.needList = false;
        }
        const delivered = await this.watchOnce();
        if (this.stopped) break;
        if (delivered) this.failures = 0;
        this.o.metrics.kubeWatchRestarts.inc({ resource: this.o.resource, reason: "closed" });
        if (!delivered) {
          // A watch that ended with nothing delivered is treated as a failure so a server that closes
          // every watch at once cannot make this loop spin.
          this.failures++;
          await this.sleep(backoffDelay(this.failures, this.backoff, this.random));
        }
      } catch (err) {
        if (this.stopped) break;
        if (isGone(err)) {
          log.info(
            { resource: this.o.resource, resource_version: this.rv },
            "watch expired (410): re-listing",
          );
          this.needList = true;
          this.o.metrics.kubeRelists.inc({ resource: this.o.resource, reason: "expired" });
          continue;
        }
        this.failures++;
        const delay = backoffDelay(this.failures, this.backoff, this.random);
        this.o.metrics.kubeWatchRestarts.inc({ resource: this.o.resource, reason: "error" });
        const fields = {
          resource: this.o.resource,
          err: errorMessage(err),
          code: isWeftError(err) ? err.code : undefined,
          failures: this.failures,
          retry_in_ms: delay,
        };
        if (this.failures === 1 || this.failures % 10 === 0)
          log.warn(fields, "kubernetes watch failed; retrying");
        else log.debug(fields, "kubernetes watch failed; retrying");
        await this.sleep(delay);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        this.sleeping = undefined;
        resolve();
      };
      this.sleeping = { timer: this.o.clock.setTimeout(wake, ms), wake };
    });
  }

  private async list(): Promise<void> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = "";
    do {
      this.attempts++;
      const page: KubeList<T> = await this.o.api.request<KubeList<T>>({
        method: "GET",
        path: this.o.path,
        query: {
          limit: this.o.pageSize ?? 500,
          continue: cont,
          labelSelector: this.o.labelSelector,
          fieldSelector: this.o.fieldSelector,
        },
        signal: this.controller.signal,
      });
      for (const item of page.items ?? []) fresh.set(objectKey(item), item);
      rv = page.metadata?.resourceVersion ?? rv;
      cont = page.metadata?.continue || undefined;
    } while (cont);
    const first = this.rv === "";
    if (first) this.o.metrics.kubeRelists.inc({ resource: this.o.resource, reason: "initial" });
    // Diff the fresh list against the copy: deletes first, then updates and adds.
    const h = this.o.handler;
    for (const [key, old] of [...this.items]) {
      if (!fresh.has(key)) {
        this.items.delete(key);
        h.onDelete(old);
      }
    }
    for (const [key, obj] of fresh) {
      const old = this.items.get(key);
      this.items.set(key, obj);
      if (!old) h.onAdd(obj);
      else if (old.metadata?.resourceVersion !== obj.metadata?.resourceVersion) h.onUpdate(old, obj);
    }
    this.rv = rv;
    h.onResync?.();
    this.o.metrics.kubeSynced.set({ resource: this.o.resource }, 1);
    this.o.logger.debug({ resource: this.o.resource, items: fresh.size, resource_version: rv }, "listed");
    this.resolveSynced();
  }

  /** One watch from the current resourceVersion; true when it delivered at least one event. */
  private async watchOnce(): Promise<boolean> {
    let delivered = false;
    const base = this.o.watchTimeoutSeconds ?? 300;
    this.attempts++;
    await this.o.api.watch<T>(
      this.o.path,
      {
        resourceVersion: this.rv,
        allowWatchBookmarks: true,
        timeoutSeconds: Math.floor(base * (1 + this.random())),
        labelSelector: this.o.labelSelector,
        fieldSelector: this.o.fieldSelector,
      },
      (e) => {
        delivered = true;
        this.failures = 0;
        this.apply(e);
      },
      this.controller.signal,
    );
    return delivered;
  }

  private apply(e: WatchEvent<T>): void {
    const obj = e.object;
    const rv = obj.metadata?.resourceVersion;
    this.o.metrics.kubeWatchEvents.inc({ resource: this.o.resource, type: e.type });
    if (e.type === "BOOKMARK") {
      if (rv) this.rv = rv;
      return;
    }
    const key = objectKey(obj);
    const old = this.items.get(key);
    const h = this.o.handler;
    if (e.type === "DELETED") {
      this.items.delete(key);
      if (old) h.onDelete(obj);
    } else {
      this.items.set(key, obj);
      if (old) h.onUpdate(old, obj);
      else h.onAdd(obj);
    }
    if (rv) this.rv = rv;
  }
}
