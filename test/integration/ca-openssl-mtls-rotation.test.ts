/**
 * Issue 3 acceptance: openssl accepts every chain Weft issues and sees exactly the SPIFFE extensions;
 * mutual TLS between two leaves of one trust domain works and fails with a named reason across trust
 * domains or with an expired leaf; after a root rotation old and new leaves both verify.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import tls from "node:tls";
import { CertificateAuthority, type IssuedIdentity, rotateRoot } from "../../src/ca/authority.ts";
import { parseBundle, type TrustBundle, verifySvid } from "../../src/ca/verify.ts";
import { WeftError } from "../../src/core/errors.ts";
import { createTestCa } from "../helpers/ca.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const dir = mkdtempSync(join(tmpdir(), "weft-ca-openssl-"));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function opensslVerify(bundlePem: string, chainPem: string): string {
  const [leafPem, ...rest] = chainPem.split(/(?<=-----END CERTIFICATE-----\n)/).filter((b) => b.trim());
  writeFileSync(join(dir, "bundle.pem"), bundlePem);
  writeFileSync(join(dir, "untrusted.pem"), rest.join(""));
  writeFileSync(join(dir, "leaf.pem"), leafPem!);
  return execFileSync("openssl", [
    "verify",
    "-x509_strict",
    "-CAfile",
    join(dir, "bundle.pem"),
    "-untrusted",
    join(dir, "untrusted.pem"),
    join(dir, "leaf.pem"),
  ]).toString();
}

function extensions(pem: string): string[] {
  writeFileSync(join(dir, "x.pem"), pem);
  const text = execFileSync("openssl", ["x509", "-in", join(dir, "x.pem"), "-noout", "-text"]).toString();
  const part = text.split("X509v3 extensions:")[1]!.split("Signature Algorithm")[0]!;
  return part
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)
    .filter((l) => !/^[0-9A-F]{2}(:[0-9A-F]{2})+$/.test(l));
}

test("openssl verify -x509_strict accepts every chain Weft issues, for each key algorithm and the CA server's cert", async () => {
  const t = await createTestCa();
  for (const keyAlgorithm of ["ecdsa-p256", "rsa-2048", "rsa-3072", "ed25519"] as const) {
    const id = await t.issue("default/web", { keyAlgorithm });
    assert.match(opensslVerify(t.material.bundlePem, id.chainPem), /leaf\.pem: OK/, keyAlgorithm);
  }
  const server = await t.ca.issueServer({ dnsNames: ["ca.weft.local"], ipAddresses: ["127.0.0.1"] });
  assert.match(opensslVerify(t.material.bundlePem, server.chainPem), /OK/);
});

test("openssl x509 -text shows exactly the SPIFFE extensions on leaf, intermediate and root", async () => {
  const t = await createTestCa();
  const ec = await t.issue("default/web");
  assert.deepEqual(extensions(ec.certPem), [
    "X509v3 Basic Constraints: critical",
    "CA:FALSE",
    "X509v3 Key Usage: critical",
    "Digital Signature",
    "X509v3 Subject Key Identifier:",
    "X509v3 Authority Key Identifier:",
    "X509v3 Extended Key Usage:",
    "TLS Web Server Authentication, TLS Web Client Authentication",
    "X509v3 Subject Alternative Name:",
    "URI:spiffe://weft.local/ns/default/sa/web",
  ]);
  const rsa = await t.issue("default/web", { keyAlgorithm: "rsa-2048" });
  assert.ok(extensions(rsa.certPem).includes("Digital Signature, Key Encipherment"));
  const inter = extensions(t.material.intermediateCertPem);
  assert.deepEqual(inter.slice(0, 4), [
    "X509v3 Basic Constraints: critical",
    "CA:TRUE, pathlen:0",
    "X509v3 Key Usage: critical",
    "Certificate Sign, CRL Sign",
  ]);
  assert.ok(inter.includes("URI:spiffe://weft.local"));
  assert.ok(!inter.some((l) => l.includes("Extended Key Usage")));
  const root = extensions(t.material.rootCertPem);
  assert.deepEqual(root.slice(0, 4), [
    "X509v3 Basic Constraints: critical",
    "CA:TRUE",
    "X509v3 Key Usage: critical",
    "Certificate Sign, CRL Sign",
  ]);
});

/** A mutual-TLS exchange where each side verifies the other with verifySvid; resolves with both verdicts. */
async function mtls(
  server: IssuedIdentity,
  serverBundle: TrustBundle,
  client: IssuedIdentity,
  clientBundle: TrustBundle,
) {
  const chainOf = (s: tls.TLSSocket): Buffer[] => {
    const out: Buffer[] = [];
    let c = s.getPeerCertificate(true) as tls.DetailedPeerCertificate | undefined;
    for (let i = 0; c?.raw && i < 5; i++) {
      out.push(c.raw);
      if (c.issuerCertificate === c) break;
      c = c.issuerCertificate;
    }
    return out;
  };
  const verdict = (chain: Buffer[], bundle: TrustBundle) => {
    try {
      return verifySvid(chain, bundle).toString();
    } catch (err) {
      return `refused:${(err as WeftError).reason}`;
    }
  };
  let serverSaw = "";
  const srv = tls.createServer(
    {
      key: server.keyPem,
      cert: server.chainPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
    },
    (s) => {
      serverSaw = verdict(chainOf(s), serverBundle);
      s.end(serverSaw.startsWith("refused") ? "" : "hello");
    },
  );
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const port = (srv.address() as { port: number }).port;
  const clientSaw = await new Promise<string>((resolve, reject) => {
    const c = tls.connect(
      { host: "127.0.0.1", port, key: client.keyPem, cert: client.chainPem, rejectUnauthorized: false },
      () => {
        const v = verdict(chainOf(c), clientBundle);
        c.resume();
        c.on("end", () => resolve(v));
      },
    );
    c.on("error", reject);
  });
  await new Promise((r) => srv.close(r));
  return { serverSaw, clientSaw };
}

test("node:tls mutual TLS: one trust domain works; another trust domain or an expired leaf fails with a named reason", async () => {
  const a = await createTestCa({ trustDomain: "weft.local" });
  const b = await createTestCa({ trustDomain: "other.test" });
  const ok = await mtls(
    await a.issue("default/backend"),
    a.bundle,
    await a.issue("default/frontend"),
    a.bundle,
  );
  assert.deepEqual(ok, {
    serverSaw: "spiffe://weft.local/ns/default/sa/frontend",
    clientSaw: "spiffe://weft.local/ns/default/sa/backend",
  });
  const cross = await mtls(
    await a.issue("default/backend"),
    a.bundle,
    await b.issue("default/frontend"),
    a.bundle,
  );
  assert.equal(cross.serverSaw, "refused:wrong_trust_domain");
  const expired = await a.issue("default/frontend", {
    notBefore: new Date(Date.now() - 3 * 3_600_000),
    ttlMs: 3_600_000,
  });
  const late = await mtls(await a.issue("default/backend"), a.bundle, expired, a.bundle);
  assert.equal(late.serverSaw, "refused:expired");
});

test("root rotation: leaves from the old root and the new root both verify against the rotated bundle", async () => {
  const t = await createTestCa();
  const old = await t.issue("default/a");
  const rotated = await rotateRoot(t.material);
  const twice = await rotateRoot(rotated);
  for (const m of [rotated, twice]) {
    const fresh = await new CertificateAuthority(m).issue({ id: "spiffe://weft.local/ns/default/sa/b" });
    const bundle = parseBundle(m.bundlePem, "weft.local");
    assert.equal(verifySvid(old.chainPem, bundle).toString(), "spiffe://weft.local/ns/default/sa/a");
    assert.equal(verifySvid(fresh.chainPem, bundle).toString(), "spiffe://weft.local/ns/default/sa/b");
    assert.match(opensslVerify(m.bundlePem, old.chainPem), /OK/);
    assert.match(opensslVerify(m.bundlePem, fresh.chainPem), /OK/);
  }
  assert.throws(
    () => verifySvid(old.chainPem, parseBundle(twice.rootCertPem, "weft.local")),
    (e: unknown) => e instanceof WeftError && e.reason === "untrusted_root",
  );
});
