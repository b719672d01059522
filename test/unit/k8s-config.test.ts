/**
 * Where the Kubernetes client connects and how it authenticates: in-cluster files (the token re-read as
 * kubelet rotates it, kept through a brief gap mid-rotation), kubeconfig contexts with inline and
 * relative-path material, and every refusal naming the file and key.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { inClusterConnection, kubeconfigConnection, TOKEN_REREAD_MS } from "../../src/k8s/config.ts";

test("in-cluster: server from the environment, CA and namespace from the files, token re-read as it rotates", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-sa-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "ca.crt"), "CA PEM");
  await writeFile(join(dir, "namespace"), "shop\n");
  await writeFile(join(dir, "token"), "token-1\n");
  const clock = new ManualClock();
  const c = inClusterConnection(
    { KUBERNETES_SERVICE_HOST: "fd00:198:18::1", KUBERNETES_SERVICE_PORT: "6443" },
    clock,
    { dir },
  );
  assert.equal(c.server, "https://[fd00:198:18::1]:6443");
  assert.equal(c.caPem, "CA PEM");
  assert.equal(c.namespace, "shop");
  assert.equal(c.credentials.token(), "token-1");
  await writeFile(join(dir, "token"), "token-2\n");
  assert.equal(c.credentials.token(), "token-1", "not re-read before the period");
  clock.advance(TOKEN_REREAD_MS);
  assert.equal(c.credentials.token(), "token-2", "the rotated token is used");
  await rm(join(dir, "token"));
  clock.advance(TOKEN_REREAD_MS);
  assert.equal(c.credentials.token(), "token-2", "mid-rotation gap: the last token is kept");
  assert.throws(
    () => inClusterConnection({}, clock, { dir }),
    /E_KUBE_CONFIG: not running in a Kubernetes pod/,
  );
  await rm(join(dir, "ca.crt"));
  assert.throws(
    () => inClusterConnection({ KUBERNETES_SERVICE_HOST: "198.18.0.1" }, clock, { dir }),
    /E_KUBE_CONFIG: in-cluster: cannot read .*ca\.crt/,
  );
});

test("kubeconfig: current or named context, inline data and relative files, refusals name the key", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "weft-kc-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "client.crt"), "CERT");
  await writeFile(join(dir, "client.key"), "KEY");
  await writeFile(join(dir, "tok"), "file-token\n");
  const kc = join(dir, "config");
  await writeFile(
    kc,
    `apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: c
  cluster: { server: "https://127.0.0.1:6443/", certificate-authority-data: ${Buffer.from("CA").toString("base64")} }
users:
- name: cert
  user: { client-certificate: client.crt, client-key: client.key }
- name: bearer
  user: { tokenFile: tok }
- name: half
  user: { client-certificate: client.crt }
- name: plugin
  user: { exec: { command: aws } }
contexts:
- name: dev
  context: { cluster: c, user: cert, namespace: team }
- name: ops
  context: { cluster: c, user: bearer }
- name: broken
  context: { cluster: c, user: half }
- name: exec
  context: { cluster: c, user: plugin }
- name: nowhere
  context: { cluster: missing, user: cert }
`,
  );
  const clock = new ManualClock();
  const dev = kubeconfigConnection(kc, clock);
  assert.equal(dev.server, "https://127.0.0.1:6443");
  assert.equal(dev.caPem, "CA");
  assert.deepEqual(dev.credentials.clientCert, { certPem: "CERT", keyPem: "KEY" });
  assert.equal(dev.credentials.token(), undefined);
  assert.equal(dev.namespace, "team");
  const ops = kubeconfigConnection(kc, clock, { context: "ops" });
  assert.equal(ops.credentials.token(), "file-token");
  assert.equal(ops.namespace, "default");
  assert.throws(
    () => kubeconfigConnection(kc, clock, { context: "broken" }),
    /users\[half\] needs both client-certificate and client-key/,
  );
  assert.throws(
    () => kubeconfigConnection(kc, clock, { context: "exec" }),
    /exec and auth-provider plugins are not supported/,
  );
  assert.throws(
    () => kubeconfigConnection(kc, clock, { context: "nowhere" }),
    /has no cluster named "missing"/,
  );
  assert.throws(
    () => kubeconfigConnection(kc, clock, { context: "nope" }),
    /E_KUBE_CONFIG: kubeconfig .*: contexts has no context named "nope"/,
  );
});
