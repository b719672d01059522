/**
 * The OpenSSL cross-check table: every negative fixture of test/helpers/svid-fixtures.ts (and the valid
 * ones) also goes through `openssl verify -x509_strict -purpose sslclient|sslserver` with the bundle as
 * the only trust anchor, and the two stacks must agree case by case: where Weft refuses for an RFC 5280
 * reason OpenSSL refuses too, where Weft refuses for a SPIFFE-only rule OpenSSL accepts (it has no such
 * rule), and every valid chain passes both. A row whose OpenSSL verdict differs from the table fails.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { verifySvid } from "../../src/ca/verify.ts";
import { WeftError } from "../../src/core/errors.ts";
import { makeFixtures } from "../helpers/svid-fixtures.ts";

const run = promisify(execFile);
const { material, bundle, cases, valid } = await makeFixtures();
const dir = await mkdtemp(join(tmpdir(), "weft-openssl-verify-"));
test.after(() => rm(dir, { recursive: true, force: true }));
await writeFile(join(dir, "bundle.pem"), material.bundlePem);

function pem(item: Buffer | string): string {
  if (typeof item === "string") return item;
  return `-----BEGIN CERTIFICATE-----\n${item.toString("base64").replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE-----\n`;
}

let n = 0;
/** OpenSSL's verdict on `chain` for `role`: ok, or the error line it printed. */
async function openssl(
  chain: (Buffer | string)[],
  role: "client" | "server",
): Promise<{ ok: boolean; out: string }> {
  const id = n++;
  const leafFile = join(dir, `leaf-${id}.pem`);
  const untrusted = join(dir, `untrusted-${id}.pem`);
  await writeFile(leafFile, pem(chain[0]!));
  const args = ["verify", "-x509_strict", "-purpose", role === "client" ? "sslclient" : "sslserver"];
  args.push("-CAfile", join(dir, "bundle.pem"));
  if (chain.length > 1) {
    await writeFile(untrusted, chain.slice(1).map(pem).join(""));
    args.push("-untrusted", untrusted);
  }
  args.push(leafFile);
  try {
    const { stdout, stderr } = await run("openssl", args);
    return { ok: /: OK\s*$/.test(stdout), out: `${stdout}${stderr}`.trim() };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() };
  }
}

for (const c of cases.filter((x) => x.openssl !== "n/a")) {
  test(`agree: ${c.name} (${c.role}) → Weft ${c.reason}, OpenSSL ${c.openssl}`, async () => {
    const chain = await c.make();
    assert.throws(
      () => verifySvid(chain, bundle, { role: c.role }),
      (err: unknown) => err instanceof WeftError && err.reason === c.reason,
    );
    // OpenSSL needs a parseable leaf; a tampered signature still parses.
    new X509Certificate(typeof chain[0] === "string" ? chain[0] : chain[0]!);
    const verdict = await openssl(chain, c.role);
    assert.equal(
      verdict.ok ? "accepts" : "refuses",
      c.openssl,
      `openssl ${verdict.ok ? "accepted" : "refused"}: ${verdict.out}`,
    );
  });
}

for (const v of valid) {
  test(`agree: valid ${v.name} → both accept`, async () => {
    const chain = await v.make();
    verifySvid(chain, bundle, { role: v.role });
    const verdict = await openssl(chain, v.role);
    assert.ok(verdict.ok, verdict.out);
  });
}
