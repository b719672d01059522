/** `meshca rotate root | intermediate`: rotate a CA of the trust domain. */
import { X509Certificate } from "node:crypto";
import type { Command } from "commander";
import { rotateIntermediate, rotateRoot } from "../../ca/authority.ts";
import { WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { help, type MeshcaContext, parseCliDuration, splitCertificates, usage } from "./context.ts";

export function registerRotate(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path, storeAt, dirOption } = ctx;
  program
    .command("rotate")
    .description("rotate the root (new root joins the bundle beside the old one) or the intermediate")
    .argument("[which]", "root or intermediate")
    .option(
      "--retire-root",
      "remove from the bundle every old root that no unexpired certificate chains to (after a root rotation)",
    )
    .option("--root-ttl <duration>", "lifetime of the new root", parseCliDuration)
    .option("--intermediate-ttl <duration>", "lifetime of the new intermediate", parseCliDuration)
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca rotate intermediate",
        "meshca rotate root          # then distribute the new bundle: meshca bundle --out ... --force",
        "# a running meshca serve signs with the new CA within 5 s",
        "meshca rotate --retire-root # once every workload renewed under the new root",
      ]),
    )
    .action(
      async (
        which: string | undefined,
        opts: {
          rootTtl?: number;
          intermediateTtl?: number;
          retireRoot?: boolean;
          dir: string;
          json?: boolean;
        },
      ) => {
        if (opts.retireRoot) {
          if (which !== undefined) throw usage("--retire-root takes no root/intermediate argument");
          await retireRoots(ctx, opts.dir);
          return;
        }
        if (which !== "root" && which !== "intermediate") {
          throw usage(`rotate takes "root" or "intermediate", not "${which}"`);
        }
        const store = storeAt(opts.dir);
        if (!(await store.exists())) {
          throw new WeftError(
            "E_IO",
            `no CA in ${path(opts.dir)}; create one with: meshca init --trust-domain <td>`,
          );
        }
        const material = await store.load();
        const ttl = {
          ...(opts.rootTtl ? { rootTtlMs: opts.rootTtl } : {}),
          ...(opts.intermediateTtl ? { intermediateTtlMs: opts.intermediateTtl } : {}),
          clock: deps.clock,
        };
        const next =
          which === "root" ? await rotateRoot(material, ttl) : await rotateIntermediate(material, ttl);
        await store.save(next, { force: true });
        const roots = splitCertificates(next.bundlePem, "bundle");
        const inter = new X509Certificate(next.intermediateCertPem);
        const result = {
          rotated: which,
          trustDomain: next.trustDomain,
          roots: roots.map((r) => ({
            sha256: r.fingerprint256,
            notAfter: new Date(r.validTo).toISOString(),
          })),
          intermediateNotAfter: new Date(inter.validTo).toISOString(),
        };
        ctx.emit(opts.json, result, () => {
          out(`rotated the ${which} of ${next.trustDomain}`);
          out(`  bundle now holds ${roots.length} root(s):`);
          for (const r of result.roots) out(`    ${r.sha256}  valid until ${r.notAfter}`);
          out(`  intermediate valid until ${result.intermediateNotAfter}`);
          if (which === "root")
            out("  distribute the new bundle to every sidecar: meshca bundle --out <file> --force");
        });
      },
    );
}

/**
 * Drop old roots from the bundle once nothing they anchor is still valid: no unexpired certificate in the
 * CA's record (serials.json) chains to them. A certificate whose root is unknown (renewed from before
 * records were kept) counts against every old root until it expires.
 */
async function retireRoots(ctx: MeshcaContext, dir: string): Promise<void> {
  const { deps, out, storeAt, serialStore } = ctx;
  const store = storeAt(dir);
  const material = await store.load();
  const current = new X509Certificate(material.rootCertPem).fingerprint256;
  const roots = splitCertificates(material.bundlePem, "bundle");
  const old = roots.filter((r) => r.fingerprint256 !== current);
  if (old.length === 0) {
    out("the bundle holds only the current root; nothing to retire");
    return;
  }
  const now = deps.clock.now();
  const live = (await serialStore(dir).list()).filter((r) => Date.parse(r.notAfter) > now);
  const keep: X509Certificate[] = [];
  const blocked: string[] = [];
  for (const root of old) {
    const anchored = live.filter((r) => r.root === root.fingerprint256 || r.root === "");
    if (anchored.length === 0) continue;
    keep.push(root);
    const last = anchored
      .map((r) => r.notAfter)
      .sort()
      .at(-1);
    blocked.push(
      `${root.fingerprint256}: ${anchored.length} certificate(s) still valid (the last until ${last}), e.g. ${anchored[0]!.id} ${anchored[0]!.serial}`,
    );
  }
  const retired = old.filter((r) => !keep.includes(r));
  if (retired.length === 0) {
    throw new WeftError(
      "E_EXISTS",
      `no old root can be retired yet: ${blocked.join("; ")}; let them renew or expire, or revoke them (meshca revoke)`,
    );
  }
  const bundlePem = roots
    .filter((r) => !retired.includes(r))
    .map((r) => r.toString())
    .join("");
  await store.save({ ...material, bundlePem }, { force: true });
  for (const r of retired)
    out(`retired root ${r.fingerprint256} (valid until ${new Date(r.validTo).toISOString()})`);
  for (const b of blocked) out(`kept ${b}`);
  out("  distribute the new bundle to every sidecar: meshca bundle --out <file> --force");
}
