/**
 * `weft injector` over real HTTPS: an AdmissionReview v1 for a Pod gets a JSONPatch whose result equals
 * `weft inject`'s output for the same Pod; a Pod that cannot be injected is admitted unchanged (fail
 * open) with a warning; a skipped Pod gets no patch; a new serving certificate written to disk is served
 * to the next connection without a restart.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { TLSSocket } from "node:tls";
import { parse } from "yaml";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { injectManifests } from "../../src/k8s/inject.ts";
import { type JsonPatchOp, startInjector } from "../../src/k8s/webhook.ts";
import { pollUntil } from "../../src/netns/pods.ts";
import { INJECT_OPTIONS } from "../fixtures/inject/options.ts";
import { createTestCa } from "../helpers/ca.ts";

/** Applies object-path JSONPatch operations (what the webhook emits) to a copy of `doc`. */
function applyPatch(doc: unknown, ops: JsonPatchOp[]): unknown {
  const out = structuredClone(doc) as Record<string, unknown>;
  for (const op of ops) {
    const parts = op.path
      .split("/")
      .slice(1)
      .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"));
    const last = parts.pop()!;
    let holder = out;
    for (const p of parts) holder = holder[p] as Record<string, unknown>;
    if (op.op === "remove") delete holder[last];
    else {
      if (op.op === "replace") assert.ok(last in holder, `replace of a missing ${op.path}`);
      else assert.ok(!(last in holder), `add over an existing ${op.path}`);
      holder[last] = op.value;
    }
  }
  return out;
}

function review(
  url: string,
  caPem: string,
  body: unknown,
): Promise<{ status: number; body: { response: Record<string, unknown> }; serial: string }> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = request(
      `${url}/mutate`,
      { method: "POST", ca: caPem, agent: false, headers: { "Content-Type": "application/json" } },
      (res) => {
        const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber;
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()), serial }),
        );
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

const POD = {
  apiVersion: "v1",
  kind: "Pod",
  metadata: { name: "client", namespace: "weft-demo", labels: { app: "client" } },
  spec: {
    serviceAccountName: "client",
    containers: [{ name: "c", image: "registry.invalid/c:1", ports: [{ containerPort: 8080 }] }],
  },
};

const admission = (uid: string, object: unknown) => ({
  apiVersion: "admission.k8s.io/v1",
  kind: "AdmissionReview",
  request: {
    uid,
    kind: { group: "", version: "v1", kind: "Pod" },
    operation: "CREATE",
    namespace: "weft-demo",
    object,
  },
});

test("weft injector: patch equals the CLI's injection, fails open, reloads its certificate", async (t) => {
  const testCa = await createTestCa();
  const dir = await mkdtemp(join(tmpdir(), "weft-injector-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const write = async () => {
    const id = await testCa.ca.issueServer({ dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
    await writeFile(join(dir, "tls.crt"), id.chainPem);
    await writeFile(join(dir, "tls.key"), id.keyPem);
    return id.serial;
  };
  const first = await write();
  const injector = await startInjector({
    host: "127.0.0.1",
    port: 0,
    certFile: join(dir, "tls.crt"),
    keyFile: join(dir, "tls.key"),
    inject: INJECT_OPTIONS,
    logger: new MemoryLogger(),
    clock: systemClock,
    reloadIntervalMs: 100,
  });
  t.after(() => injector.close());
  const caPem = testCa.material.bundlePem;

  const ok = await review(injector.url, caPem, admission("u-1", POD));
  assert.equal(ok.status, 200);
  assert.equal(ok.body.response.uid, "u-1");
  assert.equal(ok.body.response.allowed, true);
  assert.equal(ok.body.response.patchType, "JSONPatch");
  const ops = JSON.parse(Buffer.from(ok.body.response.patch as string, "base64").toString()) as JsonPatchOp[];
  const patched = applyPatch(POD, ops);
  const cli = parse(injectManifests(JSON.stringify(POD), INJECT_OPTIONS).text);
  assert.deepEqual(patched, cli, "the webhook's patch gives the CLI's output");
  assert.equal(first.replace(/^0+/, "").toUpperCase(), ok.serial.replace(/^0+/, "").toUpperCase());

  // Fail open: a pod the injection refuses (no containers) is admitted unchanged, with a warning.
  const broken = await review(injector.url, caPem, admission("u-2", { ...POD, spec: {} }));
  assert.equal(broken.body.response.allowed, true);
  assert.equal(broken.body.response.patch, undefined);
  assert.match(String((broken.body.response.warnings as string[])[0]), /not injected/);

  // Opted out: no patch, the reason as a warning.
  const optOut = await review(
    injector.url,
    caPem,
    admission("u-3", { ...POD, metadata: { ...POD.metadata, annotations: { "weft.io/inject": "false" } } }),
  );
  assert.equal(optOut.body.response.patch, undefined);
  assert.match(String((optOut.body.response.warnings as string[])[0]), /opted out/);
  assert.deepEqual(injector.stats(), { reviews: 3, patched: 1, failedOpen: 1, reloads: 0 });

  // Certificate hot reload.
  const second = await write();
  await pollUntil(
    "the new certificate to be served",
    async () => {
      const r = await review(injector.url, caPem, admission("u-4", POD));
      return r.serial.replace(/^0+/, "").toUpperCase() === second.replace(/^0+/, "").toUpperCase();
    },
    10_000,
  );
  assert.equal(injector.stats().reloads, 1);
});
