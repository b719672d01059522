// meshca's Kubernetes join checks at start that it may create TokenReviews. A ClusterRoleBinding
// applied together with the CA reaches the API server's authorizer through its own watch, so the first
// answers can be "denied" for a moment: a denial is asked again for RBAC_SETTLE_MS before it counts.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setImmediate as tick } from "node:timers/promises";
import { KubeJoin, RBAC_SETTLE_MS } from "../../src/ca/kube-join.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { isWeftError } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import type { KubeApi } from "../../src/k8s/client.ts";

/** An API server whose access reviews answer `allowed` from the `allowFrom`-th one on. */
function apiAllowingFrom(allowFrom: number): { api: KubeApi; asked: () => number } {
  let n = 0;
  const api = {
    namespace: "default",
    origin: "https://127.0.0.1:6443",
    request: async (req: { path: string }) => {
      assert.equal(req.path, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
      n++;
      return { status: { allowed: n >= allowFrom } };
    },
    watch: async () => {},
  } as unknown as KubeApi;
  return { api, asked: () => n };
}

/** Runs `p` to its end, moving the manual clock 50 ms at a time (bounded). */
async function settle<T>(clock: ManualClock, p: Promise<T>): Promise<{ value?: T; error?: unknown }> {
  let out: { value?: T; error?: unknown } | undefined;
  p.then(
    (value) => (out = { value }),
    (error) => (out = { error }),
  );
  for (let i = 0; i < 1_000 && !out; i++) {
    await tick();
    clock.advance(50);
  }
  assert.ok(out, "checkPermissions settled");
  return out;
}

test("a permission granted a moment after the first denial is accepted", async () => {
  const clock = new ManualClock();
  const logger = new MemoryLogger();
  const { api, asked } = apiAllowingFrom(3);
  const join = new KubeJoin({ api, trustDomain: "weft.local", clock, logger });
  const r = await settle(clock, join.checkPermissions());
  assert.equal(r.error, undefined);
  assert.equal(asked(), 3);
  assert.ok(logger.records.some((x) => /asking again while RBAC settles/.test(String(x.msg))));
});

test("a permission still denied after the settle time fails with E_KUBE_RBAC naming the rule", async () => {
  const clock = new ManualClock();
  const { api, asked } = apiAllowingFrom(Number.POSITIVE_INFINITY);
  const join = new KubeJoin({ api, trustDomain: "weft.local", clock, logger: new MemoryLogger() });
  const start = clock.now();
  const r = await settle(clock, join.checkPermissions());
  assert.ok(isWeftError(r.error, "E_KUBE_RBAC"), String(r.error));
  assert.match((r.error as Error).message, /resources \["tokenreviews"\], verbs \["create"\]/);
  assert.ok(clock.now() - start >= RBAC_SETTLE_MS, "it asked again for the whole settle time");
  assert.ok(asked() > 2 && asked() < 100, `asked ${asked()} times`);
});
