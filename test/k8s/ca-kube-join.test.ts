/**
 * Acceptance 3: `meshca serve`'s Kubernetes join against a real API server, with projected tokens the
 * API server itself issued (TokenRequest, bound to a pod):
 *   - the right identity is issued, spiffe://weft.local/ns/apps/sa/backend;
 *   - a CSR for another SAN: 403; wrong audience, a deleted (unknown) pod, an expired token: 401;
 *   - the API server down (a token not yet reviewed): 503, nothing signed;
 *   - 100 CSRs with one token: one TokenReview;
 *   - at start, a SelfSubjectAccessReview names the missing RBAC rule until it is granted: `meshca serve
 *     --kubernetes` exits 1 naming it, then (granted) serves and signs for a projected token;
 * The expired token is the API server's own token for the pod with its times moved into the past and
 * signed again with the API server's service-account signing key (TokenRequest will not issue a token
 * shorter than 10 minutes).
 */
import assert from "node:assert/strict";
import { createSign } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { createCsr } from "../../src/ca/authority.ts";
import { CaClient, type IdentityMaterial } from "../../src/ca/client.ts";
import { KubeJoin } from "../../src/ca/kube-join.ts";
import type { MeshcaDeps } from "../../src/cli/meshca/context.ts";
import { runMeshca } from "../../src/cli/meshca.ts";
import { systemClock } from "../../src/core/clock.ts";
import { isWeftError } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { HttpsKubeApi } from "../../src/k8s/client.ts";
import { kubeconfigConnection } from "../../src/k8s/config.ts";
import { startTestCaServer } from "../helpers/ca-server.ts";
import { eventually } from "../helpers/eventually.ts";
import { type KubeEnv, requireEnvtest, startKubeEnv } from "../helpers/kube-envtest.ts";
import { createIn, createNamespace } from "../helpers/kube-objects.ts";

const NS = "apps";

async function meshca(
  argv: string[],
  extra: Partial<MeshcaDeps> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await runMeshca(argv, {
    stdout: { write: (x: string) => (stdout += x) },
    stderr: { write: (x: string) => (stderr += x) },
    clock: systemClock,
    cwd: process.cwd(),
    env: {},
    logger: new MemoryLogger(),
    waitForShutdown: () => Promise.resolve(),
    ...extra,
  });
  return { code, stdout, stderr };
}

function postSign(url: string, ca: string, body: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolvePost, reject) => {
    const payload = JSON.stringify(body);
    request(
      `${url}/v1/sign/kubernetes`,
      { method: "POST", ca, agent: false, headers: { "Content-Type": "application/json" } },
      (res) => {
        let text = "";
        res.on("data", (d) => {
          text += d;
        });
        res.on("end", () => resolvePost({ status: res.statusCode!, text }));
      },
    )
      .on("error", reject)
      .end(payload);
  });
}
const BACKEND = "spiffe://weft.local/ns/apps/sa/backend";

async function podUid(env: KubeEnv, name: string): Promise<string> {
  const pod = await createIn(env, NS, {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name },
    spec: { serviceAccountName: "backend", containers: [{ name: "app", image: "registry.invalid/app:1" }] },
  });
  return (pod as { metadata: { uid: string } }).metadata.uid;
}

async function tokenFor(env: KubeEnv, pod: string, uid: string, audience = "weft-ca"): Promise<string> {
  const reply = await env.admin.request<{ status: { token: string } }>({
    method: "POST",
    path: `/api/v1/namespaces/${NS}/serviceaccounts/backend/token`,
    body: {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: {
        audiences: [audience],
        expirationSeconds: 600,
        boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod, uid },
      },
    },
  });
  return reply.status.token;
}

/** The same token with iat/nbf/exp moved `agoS` seconds into the past, signed with the API server's key. */
function expiredCopy(env: KubeEnv, token: string, agoS = 3600): string {
  const [h, p] = token.split(".");
  const claims = JSON.parse(Buffer.from(p!, "base64url").toString()) as Record<string, number>;
  for (const k of ["iat", "nbf", "exp"]) if (typeof claims[k] === "number") claims[k] -= agoS;
  const body = `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}`;
  const sig = createSign("RSA-SHA256")
    .update(body)
    .sign(readFileSync(join(env.dir, "sa.key"), "utf8"));
  return `${body}.${sig.toString("base64url")}`;
}

test("meshca kubernetes join: TokenReview-checked projected tokens, RBAC self-check, fail closed", async (t) => {
  if (!requireEnvtest(t)) return;
  const env = await startKubeEnv(t);
  await createNamespace(env, NS);
  for (const sa of ["default", "backend"]) {
    await createIn(env, NS, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa } });
  }
  // The CA's own identity: a client certificate user with no rights yet.
  const caApi = new HttpsKubeApi(kubeconfigConnection(await env.userKubeconfig("weft-ca"), systemClock));
  t.after(() => caApi.close());
  const kubeJoin = new KubeJoin({
    api: caApi,
    trustDomain: "weft.local",
    clock: systemClock,
    logger: new MemoryLogger(),
  });
  await assert.rejects(kubeJoin.checkPermissions(), (err: unknown) => {
    assert.ok(isWeftError(err, "E_KUBE_RBAC"));
    assert.match(
      (err as Error).message,
      /apiGroups \["authentication.k8s.io"\], resources \["tokenreviews"\], verbs \["create"\]/,
    );
    return true;
  });
  const caDir = await mkdtemp(join(tmpdir(), "weft-kube-ca-"));
  t.after(() => rm(caDir, { recursive: true, force: true }));
  const caKubeconfig = await env.userKubeconfig("weft-ca");
  assert.equal((await meshca(["init", "--trust-domain", "weft.local", "--dir", caDir])).code, 0);
  const serveArgs = [
    "serve",
    "--kubernetes",
    "--kubeconfig",
    caKubeconfig,
    "--listen",
    "127.0.0.1:0",
    "--dir",
    caDir,
  ];
  const refused = await meshca(serveArgs);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /E_KUBE_RBAC: missing RBAC rule: apiGroups \["authentication.k8s.io"\]/);
  await env.admin.request({
    method: "POST",
    path: "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    body: {
      metadata: { name: "weft-ca-test" },
      rules: [{ apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] }],
    },
  });
  await env.admin.request({
    method: "POST",
    path: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    body: {
      metadata: { name: "weft-ca-test" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "weft-ca-test" },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "weft-ca" }],
    },
  });
  await kubeJoin.checkPermissions();

  const s = await startTestCaServer(t, { server: { kubeJoin } });
  const sign = async (id: string, token: string) =>
    s.postJson<{ spiffeId?: string; error?: { code: string; reason: string } }>("/v1/sign/kubernetes", {
      csr: (await createCsr(id)).csrPem,
      token,
    });

  const uid = await podUid(env, "backend-0");
  const token = await tokenFor(env, "backend-0", uid);
  const ok = await sign(BACKEND, token);
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(ok.body.spiffeId, BACKEND);

  const other = await sign("spiffe://weft.local/ns/apps/sa/frontend", token);
  assert.equal(other.status, 403);
  assert.equal(other.body.error?.code, "E_CSR_IDENTITY");

  const wrongAud = await sign(BACKEND, await tokenFor(env, "backend-0", uid, "some-other-audience"));
  assert.equal(wrongAud.status, 401, JSON.stringify(wrongAud.body));

  const goneUid = await podUid(env, "backend-gone");
  const goneToken = await tokenFor(env, "backend-gone", goneUid);
  await env.admin.request({
    method: "DELETE",
    path: `/api/v1/namespaces/${NS}/pods/backend-gone`,
    query: { gracePeriodSeconds: 0 },
  });
  const unknownPod = await sign(BACKEND, goneToken);
  assert.equal(unknownPod.status, 401, JSON.stringify(unknownPod.body));

  const expired = await sign(BACKEND, expiredCopy(env, await tokenFor(env, "backend-0", uid)));
  assert.equal(expired.status, 401, JSON.stringify(expired.body));
  assert.equal(expired.body.error?.code, "E_TOKEN_INVALID");

  // 100 CSRs with one fresh token: one TokenReview.
  const burst = await tokenFor(env, "backend-0", uid);
  const before = kubeJoin.reviews;
  const csrs = await Promise.all(Array.from({ length: 100 }, () => createCsr(BACKEND)));
  const replies = await Promise.all(
    csrs.map((c) =>
      s.postJson<{ spiffeId?: string }>("/v1/sign/kubernetes", { csr: c.csrPem, token: burst }),
    ),
  );
  assert.deepEqual(new Set(replies.map((r) => r.status)), new Set([200]));
  assert.equal(kubeJoin.reviews - before, 1, "100 CSRs with one token cost one TokenReview");

  // A sidecar's CA client with the projected token (identity.ca.kubernetesTokenFile): the first
  // certificate through /v1/sign/kubernetes, the token read when it is needed.
  let tokenReads = 0;
  const sidecarToken = await tokenFor(env, "backend-0", uid);
  let material: IdentityMaterial | undefined;
  const client = new CaClient({
    url: s.server.url,
    bundlePem: s.testCa.ca.bundlePem(),
    id: BACKEND,
    kubernetesToken: () => {
      tokenReads++;
      return sidecarToken;
    },
    clock: systemClock,
    logger: new MemoryLogger(),
    onIdentity: (m) => {
      material = m;
    },
  });
  await client.start();
  client.stop();
  assert.equal(material?.id.toString(), BACKEND);
  assert.equal(tokenReads, 1);

  // The same through the CLI: meshca serve --kubernetes signs for a projected token.
  let stop!: () => void;
  const stopped = new Promise<void>((r) => {
    stop = r;
  });
  let url = "";
  const served = meshca(serveArgs, {
    waitForShutdown: () => stopped,
    onServing: (info) => {
      url = info.url;
    },
  });
  await eventually("meshca serve --kubernetes to listen", () => url !== "", { timeoutMs: 30_000 });
  const viaCli = await postSign(url, readFileSync(join(caDir, "bundle.pem"), "utf8"), {
    csr: (await createCsr(BACKEND)).csrPem,
    token: await tokenFor(env, "backend-0", uid),
  });
  stop();
  assert.equal((await served).code, 0);
  assert.equal(viaCli.status, 200, viaCli.text);
  assert.match(viaCli.text, /"spiffeId":"spiffe:\/\/weft\.local\/ns\/apps\/sa\/backend"/);

  // API server down: a token not reviewed yet cannot be checked, so nothing is signed.
  const unseen = await tokenFor(env, "backend-0", uid);
  const signedBefore = s.signCount();
  await env.stopApiServer();
  const down = await sign(BACKEND, unseen);
  assert.equal(down.status, 503, JSON.stringify(down.body));
  assert.equal(s.signCount(), signedBefore, "nothing signed while the API server is down");
});
