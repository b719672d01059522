/**
 * `weft injector` over real HTTPS: an AdmissionReview v1 for a Pod gets a JSONPatch whose result equals
 * `weft inject`'s output for the same Pod; a Pod that cannot be injected is admitted unchanged (fail
 * open) with a warning; a skipped Pod gets no patch; a new serving certificate written to disk is served
 * to the next connection without a restart. Hostile reviews (not JSON, wrong shapes, deep nesting, too
 * large) get 400 or are admitted unchanged, and the injector carries on.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import type { TLSSocket } from "node:tls";
import { parse } from "yaml";
import { systemClock } from "../../src/core/clock.ts";
import { MemoryLogger } from "../../src/core/log.ts";
import { injectManifests } from "../../src/k8s/inject.ts";
import { type JsonPatchOp, MAX_REVIEW_BYTES, startInjector } from "../../src/k8s/webhook.ts";
import { INJECT_OPTIONS } from "../fixtures/inject/options.ts";
import { createTestCa } from "../helpers/ca.ts";
import { eventually } from "../helpers/eventually.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

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
  return postRaw(url, caPem, JSON.stringify(body));
}

/** POST `payload` as it is (it need not be JSON) to /mutate; the answer's body parsed as JSON. */
function postRaw(
  url: string,
  caPem: string,
  payload: string,
): Promise<{ status: number; body: { response: Record<string, unknown> }; serial: string }> {
  return new Promise((resolve, reject) => {
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

/**
 * A test CA and `weft injector` on 127.0.0.1 serving a certificate from it (tls.crt/tls.key in a temporary
 * directory; `issue()` writes a new one there); stopped when the test ends.
 */
async function startTestInjector(t: TestContext, logger = new MemoryLogger()) {
  const testCa = await createTestCa();
  const dir = await mkdtemp(join(tmpdir(), "weft-injector-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const issue = async () => {
    const id = await testCa.ca.issueServer({ dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
    await writeFile(join(dir, "tls.crt"), id.chainPem);
    await writeFile(join(dir, "tls.key"), id.keyPem);
    return id.serial;
  };
  const first = await issue();
  const injector = await startInjector({
    host: "127.0.0.1",
    port: 0,
    certFile: join(dir, "tls.crt"),
    keyFile: join(dir, "tls.key"),
    inject: INJECT_OPTIONS,
    logger,
    clock: systemClock,
    reloadIntervalMs: 100,
  });
  t.after(() => injector.close());
  return { injector, caPem: testCa.material.bundlePem, first, issue, keyFile: join(dir, "tls.key") };
}

test("weft injector: patch equals the CLI's injection, fails open, reloads its certificate", async (t) => {
  const { injector, caPem, first, issue, keyFile } = await startTestInjector(t);

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

  // A pair caught half-written (the key file truncated, as a non-atomic writer leaves it for a moment)
  // is not loaded: the injector goes on serving the current certificate through several reload ticks
  // (fixed waits: nothing may change in them).
  await writeFile(keyFile, "");
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const r = await review(injector.url, caPem, admission(`half-${i}`, POD));
    assert.equal(r.status, 200, "still serving while the key file is empty");
  }
  assert.equal(injector.stats().reloads, 0, "a half-written pair is not loaded");

  // Certificate hot reload.
  const second = await issue();
  await eventually(
    "the new certificate to be served",
    async () => {
      const r = await review(injector.url, caPem, admission("u-4", POD));
      return r.serial.replace(/^0+/, "").toUpperCase() === second.replace(/^0+/, "").toUpperCase();
    },
    { intervalMs: 100 },
  );
  assert.equal(injector.stats().reloads, 1);
});

test("weft injector: hostile reviews get 400 or fail open, and the injector carries on", async (t) => {
  const log = new MemoryLogger();
  const { injector, caPem } = await startTestInjector(t, log);
  const deep = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
  const podWith = (spec: string) =>
    `{"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"p"},"spec":${spec}}}}`;

  const notReviews: Array<[string, string]> = [
    ["not JSON", "<AdmissionReview/>"],
    ["truncated JSON", JSON.stringify(admission("u", POD)).slice(0, 40)],
    ["null", "null"],
    ["a number", "1"],
    ["an array", "[]"],
    ["request null", '{"request":null}'],
    ["uid a number", '{"request":{"uid":5}}'],
  ];
  for (const [what, payload] of notReviews) {
    const r = await postRaw(injector.url, caPem, payload);
    assert.equal(r.status, 400, `${what}: 400`);
  }

  // Reviews that are AdmissionReviews but whose Pod is broken are admitted unchanged (fail open).
  const brokenPods: Array<[string, string]> = [
    ["containers a string", podWith('{"containers":"c"}')],
    ["containers of numbers", podWith('{"containers":[1,2,3]}')],
    ["a container without a name", podWith('{"containers":[{}]}')],
    ["deeply nested spec", podWith(`{"containers":[{"name":"c","args":${deep(20_000)}}]}`)],
    [
      "deeply nested metadata",
      podWith('{"containers":[{"name":"c"}]}').replace('{"name":"p"}', `{"name":"p","x":${deep(20_000)}}`),
    ],
    ["kind a string", '{"request":{"uid":"u","kind":"Pod","operation":"CREATE","object":{}}}'],
    ["object an array", '{"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":[]}}'],
    [
      "__proto__ keys",
      podWith('{"__proto__":{"containers":[]},"containers":[{"name":"c","__proto__":{"x":1}}]}'),
    ],
  ];
  for (const [what, payload] of brokenPods) {
    const r = await postRaw(injector.url, caPem, payload);
    assert.ok(r.status === 200 || r.status === 400, `${what}: 200 or 400, not ${r.status}`);
    if (r.status === 200) assert.equal(r.body.response.allowed, true, `${what}: admitted`);
  }

  // Larger than the limit: refused (400, or the connection closed while sending), never buffered whole.
  const huge = `{"request":{"uid":"u","pad":"${"x".repeat(MAX_REVIEW_BYTES)}"}}`;
  const tooBig = await postRaw(injector.url, caPem, huge).then(
    (r) => r.status,
    (err: NodeJS.ErrnoException) => err.code ?? "error",
  );
  assert.ok(tooBig === 400 || typeof tooBig === "string", `too large: refused, not ${tooBig}`);

  // Still serving, and still right.
  const ok = await review(injector.url, caPem, admission("after", POD));
  assert.equal(ok.status, 200);
  assert.equal(ok.body.response.patchType, "JSONPatch");
  assert.deepEqual(
    log.records.filter((r) => r.msg === "injector request failed"),
    [],
    "no review reached the internal-error path",
  );
});
