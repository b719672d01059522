/**
 * The reflector on a manual clock with a scripted API: capped exponential backoff with jitter while the
 * API server is down (at most 6 attempts in 3 s even with the shortest jitter), the 410 re-list with a
 * diff (deletes, updates, adds; no duplicate add), and bookmarks moving the resourceVersion.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { WeftError } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { WeftMetrics } from "../../src/core/metrics.ts";
import { type KubeApi, KubeApiError, type KubeObject, type WatchEvent } from "../../src/k8s/client.ts";
import { backoffDelay, DEFAULT_BACKOFF, Reflector } from "../../src/k8s/reflector.ts";

const flush = () => new Promise((r) => setImmediate(r));
const obj = (name: string, rv: string): KubeObject => ({
  metadata: { name, namespace: "ns", resourceVersion: rv },
});

interface Script {
  list: () => Promise<{ metadata: { resourceVersion: string }; items: KubeObject[] }>;
  watch: (rv: string, on: (e: WatchEvent<KubeObject>) => void) => Promise<void>;
}

function fakeApi(script: Script, calls: string[]): KubeApi {
  return {
    namespace: "ns",
    origin: "fake",
    request: async <T>() => {
      calls.push("list");
      return (await script.list()) as T;
    },
    watch: async <T>(_p: string, q: Record<string, unknown>, on: (e: WatchEvent<T>) => void) => {
      calls.push(`watch@${q.resourceVersion}`);
      return script.watch(String(q.resourceVersion), on as (e: WatchEvent<KubeObject>) => void);
    },
    close() {},
  };
}

test("backoffDelay: doubles from 250 ms, jitter in [0.5, 1), capped at 30 s", () => {
  assert.equal(
    backoffDelay(1, DEFAULT_BACKOFF, () => 0),
    125,
  );
  assert.equal(
    backoffDelay(1, DEFAULT_BACKOFF, () => 0.999999),
    250,
  );
  assert.equal(
    backoffDelay(4, DEFAULT_BACKOFF, () => 0),
    1000,
  );
  assert.equal(
    backoffDelay(40, DEFAULT_BACKOFF, () => 0.999999),
    30_000,
  );
});

test("reflector: while the API server is down, at most 6 attempts in 3 s", async () => {
  const clock = new ManualClock();
  const calls: string[] = [];
  const down = () => Promise.reject(new WeftError("E_KUBE_UNREACHABLE", "connect ECONNREFUSED"));
  const r = new Reflector({
    api: fakeApi({ list: down, watch: down }, calls),
    resource: "services",
    path: "/api/v1/services",
    handler: { onAdd() {}, onUpdate() {}, onDelete() {} },
    clock,
    logger: new MemoryLogger(),
    metrics: new WeftMetrics(),
    random: () => 0,
  });
  r.start();
  for (let ms = 0; ms < 3000; ms += 5) {
    await flush();
    clock.advance(5);
  }
  await flush();
  assert.ok(calls.length <= 6 && calls.length >= 4, `attempts in 3 s: ${calls.length}`);
  await r.stop();
});

test("reflector: 410 Gone re-lists and hands over exactly the difference", async () => {
  const clock = new ManualClock();
  const calls: string[] = [];
  const events: string[] = [];
  let listNo = 0;
  let watchNo = 0;
  const r = new Reflector({
    api: fakeApi(
      {
        list: async () => {
          listNo++;
          return listNo === 1
            ? { metadata: { resourceVersion: "10" }, items: [obj("a", "1"), obj("b", "2"), obj("c", "3")] }
            : { metadata: { resourceVersion: "50" }, items: [obj("b", "2"), obj("c", "40"), obj("d", "41")] };
        },
        watch: async (_rv, on) => {
          watchNo++;
          if (watchNo === 1) {
            on({ type: "BOOKMARK", object: { metadata: { resourceVersion: "12" } } });
            throw new KubeApiError(410, { kind: "Status", code: 410, reason: "Expired" }, "WATCH");
          }
          await new Promise(() => {});
        },
      },
      calls,
    ),
    resource: "services",
    path: "/api/v1/services",
    handler: {
      onAdd: (o) => events.push(`add ${o.metadata!.name}`),
      onUpdate: (_o, n) => events.push(`update ${n.metadata!.name}`),
      onDelete: (o) => events.push(`delete ${o.metadata!.name}`),
    },
    clock,
    logger: new MemoryLogger(),
    metrics: new WeftMetrics(),
  });
  r.start();
  await r.synced;
  for (let i = 0; i < 20; i++) await flush();
  assert.deepEqual(calls.slice(0, 4), ["list", "watch@10", "list", "watch@50"]);
  assert.deepEqual(events, ["add a", "add b", "add c", "delete a", "update c", "add d"]);
  assert.deepEqual([...r.store.keys()].sort(), ["ns/b", "ns/c", "ns/d"]);
  assert.equal(r.resourceVersion, "50");
  void r.stop();
});
