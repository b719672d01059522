/**
 * Acceptance 4 and 5 against one real API server:
 *   - every injected object of the golden inputs (and the demo's workloads) is accepted by the API
 *     server (server-side dry-run), so the native sidecar, probes and volumes are valid Kubernetes;
 *   - `weft injector` as the API server's mutating webhook: a Pod created in a namespace labelled
 *     weft.io/inject=enabled comes back injected exactly as `weft inject` writes it; a Pod elsewhere and
 *     a Pod labelled weft.io/inject=false do not; with the injector down, Pods are still admitted
 *     (failurePolicy Ignore);
 *   - `kubectl kustomize deploy/k8s/overlays/demo` renders, and the API server accepts every object
 *     (dry-run); the RBAC is exactly the documented rule set and grants nothing else (SubjectAccessReview).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { parse, parseAllDocuments } from "yaml";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { resourcePath } from "../../src/k8s/client.ts";
import { injectManifests } from "../../src/k8s/inject.ts";
import { startInjector } from "../../src/k8s/webhook.ts";
import { INJECT_OPTIONS } from "../fixtures/inject/options.ts";
import { eventually } from "../helpers/eventually.ts";
import { type KubeEnv, requireEnvtest, startKubeEnv } from "../helpers/kube-envtest.ts";
import { createIn, createNamespace } from "../helpers/kube-objects.ts";

const run = promisify(execFile);
const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
type Obj = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
} & Record<string, unknown>;

const PLURAL: Record<string, string> = {
  Namespace: "namespaces",
  ServiceAccount: "serviceaccounts",
  Service: "services",
  Deployment: "deployments",
  StatefulSet: "statefulsets",
  DaemonSet: "daemonsets",
  Job: "jobs",
  CronJob: "cronjobs",
  Pod: "pods",
  ConfigMap: "configmaps",
  ClusterRole: "clusterroles",
  ClusterRoleBinding: "clusterrolebindings",
  MutatingWebhookConfiguration: "mutatingwebhookconfigurations",
};
const CLUSTER_SCOPED = new Set([
  "Namespace",
  "ClusterRole",
  "ClusterRoleBinding",
  "MutatingWebhookConfiguration",
]);

function pathOf(o: Obj, ns: string | undefined): string {
  const plural = PLURAL[o.kind];
  assert.ok(plural, `no plural for ${o.kind}`);
  return resourcePath(
    o.apiVersion,
    plural,
    CLUSTER_SCOPED.has(o.kind) ? undefined : (o.metadata.namespace ?? ns),
  );
}

async function dryRun(env: KubeEnv, o: Obj, ns?: string): Promise<void> {
  await env.admin
    .request({ method: "POST", path: pathOf(o, ns), body: o, query: { dryRun: "All" } })
    .catch((err: Error) => assert.fail(`${o.kind}/${o.metadata.name} refused: ${err.message}`));
}

const objectsOf = (text: string): Obj[] =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null)
    .flatMap((o) => (o.kind === "List" ? ((o as unknown as { items: Obj[] }).items ?? []) : [o]));

async function kustomize(t: TestContext, dir: string): Promise<string | undefined> {
  try {
    return (await run("kubectl", ["kustomize", join(ROOT, dir)], { maxBuffer: 16 << 20 })).stdout;
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") throw err;
    const why = "needs kubectl (kubectl kustomize)";
    if (process.env.CI === "true") throw new Error(`${why}; CI must run this test`);
    t.skip(why);
    return undefined;
  }
}

test("k8s admission and manifests: injected objects, the webhook, the kustomized demo, RBAC", async (t) => {
  if (!requireEnvtest(t)) return;
  const env = await startKubeEnv(t);

  await t.test("every injected object is accepted by the API server (dry-run)", async () => {
    const ns = "inject-check";
    await createNamespace(env, ns);
    for (const sa of ["default", "backend"]) {
      await createIn(env, ns, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa } });
    }
    let checked = 0;
    for (const name of ["workloads", "pod-list"]) {
      const input = readFileSync(join(ROOT, "test/fixtures/inject", `${name}.in.yaml`), "utf8");
      for (const o of objectsOf(injectManifests(input, INJECT_OPTIONS).text)) {
        await dryRun(env, { ...o, metadata: { ...o.metadata, namespace: ns } }, ns);
        checked++;
      }
    }
    assert.equal(checked, 8);
  });

  await t.test("weft injector as the API server's webhook: patch = weft inject; fail-open", async () => {
    const tls = await env.servingCert("injector");
    const injector = await startInjector({
      host: "127.0.0.1",
      port: 0,
      certFile: tls.cert,
      keyFile: tls.key,
      inject: INJECT_OPTIONS,
      logger: new MemoryLogger(),
      clock: systemClock,
    });
    let injectorUp = true;
    t.after(() => (injectorUp ? injector.close() : undefined));
    const webhook = parse(readFileSync(join(ROOT, "deploy/k8s/base/webhook.yaml"), "utf8")) as {
      webhooks: { clientConfig: Record<string, unknown> }[];
    };
    webhook.webhooks[0]!.clientConfig = {
      url: `${injector.url}/mutate`,
      caBundle: Buffer.from(env.caPem).toString("base64"),
    };
    await env.admin.request({
      method: "POST",
      path: "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
      body: webhook,
    });
    await createNamespace(env, "meshed", { "weft.io/inject": "enabled" });
    await createNamespace(env, "plain");
    for (const ns of ["meshed", "plain"]) {
      await createIn(env, ns, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "default" } });
      await createIn(env, ns, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "client" } });
    }
    const pod = (name: string, labels: Record<string, string> = {}) => ({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name, labels: { app: name, ...labels } },
      spec: { serviceAccountName: "client", containers: [{ name: "c", image: "registry.invalid/c:1" }] },
    });
    type PodOut = {
      metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
      spec: {
        initContainers?: { name: string; args?: string[]; restartPolicy?: string }[];
        volumes?: { name: string }[];
      };
    };
    // The webhook may take a moment to be called once registered: create again until injected.
    let created: PodOut | undefined;
    await eventually(
      "the webhook to inject the first pod",
      async () => {
        created = (await createIn(env, "meshed", pod("client"))) as PodOut;
        if (created.spec.initContainers) return true;
        await env.admin.request({
          method: "DELETE",
          path: "/api/v1/namespaces/meshed/pods/client",
          query: { gracePeriodSeconds: 0 },
        });
        return false;
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    const cli = objectsOf(
      injectManifests(JSON.stringify(pod("client")), INJECT_OPTIONS).text,
    )[0] as unknown as PodOut;
    assert.deepEqual(created!.metadata.labels, cli.metadata.labels);
    // The API server's own admission (ServiceAccount) adds a volume before the webhook runs, so only the
    // record of which keys injection created may differ from the CLI's on the bare pod.
    const { "weft.io/status": got, ...gotRest } = created!.metadata.annotations!;
    const { "weft.io/status": want, ...wantRest } = cli.metadata.annotations!;
    assert.deepEqual(gotRest, wantRest);
    assert.deepEqual(JSON.parse(got!).annotations, JSON.parse(want!).annotations);
    assert.deepEqual(
      created!.spec.initContainers!.map((c) => [c.name, c.args, c.restartPolicy]),
      cli.spec.initContainers!.map((c) => [c.name, c.args, c.restartPolicy]),
    );
    assert.deepEqual(
      created!.spec.volumes!.map((v) => v.name).filter((n) => n.startsWith("weft-")),
      ["weft-token", "weft-config"],
    );
    assert.ok(injector.stats().patched >= 1);

    const elsewhere = (await createIn(env, "plain", pod("client"))) as PodOut;
    assert.equal(elsewhere.spec.initContainers, undefined, "a namespace without the label is not injected");
    const optedOut = (await createIn(env, "meshed", pod("legacy", { "weft.io/inject": "false" }))) as PodOut;
    assert.equal(optedOut.spec.initContainers, undefined, "weft.io/inject=false is not injected");

    await injector.close();
    injectorUp = false;
    const whileDown = (await createIn(env, "meshed", pod("during-outage"))) as PodOut;
    assert.equal(whileDown.spec.initContainers, undefined, "failurePolicy Ignore: admitted, not injected");
    await env.admin.request({
      method: "DELETE",
      path: "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/weft-injector",
    });
  });

  await t.test(
    "kubectl kustomize deploy/k8s/overlays/demo: every object accepted (dry-run); exact RBAC",
    async (tt) => {
      const text = await kustomize(tt, "deploy/k8s/overlays/demo");
      if (text === undefined) return;
      const objs = objectsOf(text);
      const namespaces = objs.filter((o) => o.kind === "Namespace");
      assert.deepEqual(namespaces.map((n) => n.metadata.name).sort(), ["weft-demo", "weft-system"]);
      for (const n of namespaces)
        await env.admin.request({ method: "POST", path: "/api/v1/namespaces", body: n });
      for (const o of objs.filter((x) => x.kind !== "Namespace")) await dryRun(env, o);
      assert.ok(!/BEGIN [A-Z ]*PRIVATE KEY/.test(text), "no key material in the manifests");

      const rules = Object.fromEntries(
        objs
          .filter((o) => o.kind === "ClusterRole")
          .map((o) => [o.metadata.name, (o as unknown as { rules: unknown }).rules]),
      );
      assert.deepEqual(rules, {
        "weft-ca": [{ apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }],
        "weft-discovery": [
          { apiGroups: [""], resources: ["services", "pods"], verbs: ["list", "watch"] },
          { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] },
        ],
      });
      assert.ok(!text.includes('"*"') && !/- '\*'|- \*$/m.test(text), "no wildcards");
      assert.equal(objs.filter((o) => o.kind === "Role" || o.kind === "RoleBinding").length, 0);

      // Applied for real, the bindings grant exactly that: asked of the API server's authorizer.
      for (const o of objs.filter((x) => x.kind === "ClusterRole" || x.kind === "ClusterRoleBinding")) {
        await env.admin.request({ method: "POST", path: pathOf(o, undefined), body: o });
      }
      const can = async (user: string, ns: string, group: string, resource: string, verb: string) => {
        const r = await env.admin.request<{ status: { allowed: boolean } }>({
          method: "POST",
          path: "/apis/authorization.k8s.io/v1/subjectaccessreviews",
          body: {
            apiVersion: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: {
              user: `system:serviceaccount:${ns}:${user}`,
              groups: ["system:serviceaccounts", `system:serviceaccounts:${ns}`, "system:authenticated"],
              resourceAttributes: { group, resource, verb },
            },
          },
        });
        return r.status.allowed;
      };
      assert.equal(
        await can("weft-ca", "weft-system", "authentication.k8s.io", "tokenreviews", "create"),
        true,
      );
      assert.equal(await can("weft-ca", "weft-system", "", "pods", "list"), false);
      assert.equal(await can("weft-ca", "weft-system", "", "secrets", "get"), false);
      for (const [g, r] of [
        ["", "services"],
        ["", "pods"],
        ["discovery.k8s.io", "endpointslices"],
      ] as const) {
        assert.equal(await can("backend", "weft-demo", g, r, "watch"), true, `sidecar may watch ${r}`);
        assert.equal(await can("backend", "weft-demo", g, r, "list"), true, `sidecar may list ${r}`);
      }
      assert.equal(await can("backend", "weft-demo", "", "pods", "get"), false);
      assert.equal(await can("backend", "weft-demo", "", "secrets", "list"), false);
      assert.equal(
        await can("backend", "weft-demo", "authentication.k8s.io", "tokenreviews", "create"),
        false,
      );
      assert.equal(await can("backend", "other-ns", "", "pods", "list"), false, "only weft-demo's sidecars");
      assert.equal(await can("weft-injector", "weft-system", "", "pods", "list"), false);
    },
  );
});
