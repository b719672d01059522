/** `meshca issue`: make a key and a leaf certificate for one workload identity, written 0600. */
import { chown } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { type Command, Option } from "commander";
import type { IssuedIdentity, KeyAlgorithm } from "../../ca/authority.ts";
import { SpiffeId } from "../../ca/spiffe-id.ts";
import { writeIdentityDir } from "../../ca/store.ts";
import { errorMessage, isWeftError, WeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import {
  countdown,
  fileExists,
  help,
  KEY_ALGORITHMS,
  type MeshcaContext,
  parseCliDuration,
  usage,
} from "./context.ts";

export function registerIssue(program: Command, ctx: MeshcaContext): void {
  const { dirOption } = ctx;
  program
    .command("issue")
    .description("make a key and a leaf certificate for a workload identity (key written 0600)")
    .option("--id <spiffe-id>", "the SPIFFE ID, e.g. spiffe://weft.local/ns/default/sa/web")
    .option("--ns <namespace>", "namespace (with --sa, instead of --id)")
    .option("--sa <service-account>", "service account (with --ns)")
    .option(
      "--ttl <duration>",
      "certificate lifetime (default 24h, never past the intermediate)",
      parseCliDuration,
    )
    .addOption(
      new Option("--key-alg <algorithm>", "leaf key algorithm").choices(KEY_ALGORITHMS).default("ecdsa-p256"),
    )
    .option(
      "--out <dir>",
      "write key.pem, cert.pem, chain.pem, bundle.pem here (default: <dir>/issued/<name>)",
    )
    .option("--name <name>", "name of the identity's folder under <dir>/issued (default <ns>-<sa>)")
    .option("--force", "overwrite the identity's existing files")
    .option(
      "--owner <uid[:gid]>",
      "hand the identity's folder and files to this user (root only), e.g. 1337 for the sidecar (UID 1337)",
    )
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca issue --ns default --sa web",
        "meshca issue --id spiffe://weft.local/ns/payments/sa/api --ttl 1h --out ./api-identity",
        "meshca issue --ns legacy --sa billing --key-alg rsa-2048   # for peers without ECDSA",
        "meshca issue --ns default --sa db --out /etc/weft/identity --owner 1337   # the sidecar reads them",
      ]),
    )
    .action((opts: IssueOptions) => issue(ctx, opts));
}

function parseOwner(v: string): { uid: number; gid: number } {
  const m = /^(\d+)(?::(\d+))?$/.exec(v);
  if (!m) throw usage(`--owner "${v}" is not uid or uid:gid (numbers), e.g. 1337 or 1337:1337`);
  const uid = Number(m[1]);
  return { uid, gid: m[2] === undefined ? uid : Number(m[2]) };
}

function identityFromOptions(opts: { id?: string; ns?: string; sa?: string }, trustDomain: string): SpiffeId {
  const byParts = opts.ns !== undefined || opts.sa !== undefined;
  if (opts.id !== undefined && byParts) throw usage("give either --id or --ns with --sa, not both");
  if (opts.id === undefined && !byParts)
    throw usage("give the identity: --id spiffe://... or --ns <namespace> --sa <account>");
  let id: SpiffeId;
  try {
    if (opts.id !== undefined) id = SpiffeId.parse(opts.id);
    else {
      if (opts.ns === undefined || opts.sa === undefined) throw usage("--ns and --sa go together");
      id = SpiffeId.workload(trustDomain, opts.ns, opts.sa);
    }
  } catch (e) {
    if (isWeftError(e, "E_USAGE")) throw e;
    throw usage(errorMessage(e));
  }
  if (id.trustDomain !== trustDomain) {
    throw usage(`${id.toString()} is not in this CA's trust domain ${trustDomain}`);
  }
  return id;
}

function defaultName(id: SpiffeId): string {
  if (id.namespace !== undefined && id.serviceAccount !== undefined)
    return `${id.namespace}-${id.serviceAccount}`;
  const name = id.path
    .replace(/^\//, "")
    .replaceAll("/", "-")
    .replaceAll(/[^A-Za-z0-9._-]/g, "_");
  return name.length > 0 ? name.slice(0, 128) : "trust-domain";
}

interface WrittenIdentity {
  certPath: string;
  keyPath: string;
  chainPath: string;
  bundlePath: string;
}

/** Where `CaStore.writeIssued` puts an identity's files (checked before issuing, for --force gating). */
function issuedPaths(caDir: string, name: string): WrittenIdentity {
  return flatPaths(resolve(caDir, "issued", name));
}

/** The files `issue --out <dir>` writes. */
function flatPaths(dir: string): WrittenIdentity {
  return {
    keyPath: resolve(dir, "key.pem"),
    certPath: resolve(dir, "cert.pem"),
    chainPath: resolve(dir, "chain.pem"),
    bundlePath: resolve(dir, "bundle.pem"),
  };
}

async function writeFlat(dir: string, identity: IssuedIdentity): Promise<WrittenIdentity> {
  // The CLI checked for existing files (and --force) before issuing.
  return writeIdentityDir(dir, identity, { force: true });
}

interface IssueOptions {
  id?: string;
  ns?: string;
  sa?: string;
  ttl?: number;
  keyAlg: KeyAlgorithm;
  out?: string;
  name?: string;
  force?: boolean;
  dir: string;
  json?: boolean;
  owner?: string;
}

async function issue(ctx: MeshcaContext, opts: IssueOptions): Promise<void> {
  const { deps, out, path, loadCa } = ctx;
  const owner = opts.owner === undefined ? undefined : parseOwner(opts.owner);
  const { store, ca } = await loadCa(opts.dir);
  const id = identityFromOptions(opts, ca.trustDomain);
  const name = opts.name ?? defaultName(id);
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(name) || name === "." || name === "..") {
    throw usage(`--name "${name}" may only hold letters, digits, ".", "_" and "-"`);
  }
  const files = opts.out ? flatPaths(path(opts.out)) : issuedPaths(path(opts.dir), name);
  if (!opts.force) {
    for (const f of Object.values(files)) {
      if (await fileExists(f)) {
        throw new WeftError("E_EXISTS", `${f} exists; pass --force to replace the identity's files`);
      }
    }
  }
  const identity = await ca.issue({
    id,
    ...(opts.ttl ? { ttlMs: opts.ttl } : {}),
    keyAlgorithm: opts.keyAlg,
  });
  await ctx.recordIssued(opts.dir, ca, identity);
  const written = opts.out
    ? await writeFlat(path(opts.out), identity)
    : await store.writeIssued(name, identity, { force: Boolean(opts.force) });
  if (owner) {
    // The folder (0700) and the files (key 0600) become the workload's: a sidecar running as UID
    // 1337 cannot read what root wrote, and says only "permission denied".
    try {
      await chown(dirname(written.keyPath), owner.uid, owner.gid);
      for (const f of [written.keyPath, written.certPath, written.chainPath, written.bundlePath]) {
        await chown(f, owner.uid, owner.gid);
      }
    } catch (err) {
      throw new WeftError(
        "E_IO",
        `cannot hand the identity to ${owner.uid}:${owner.gid} (--owner needs root): ${errorMessage(err)}`,
      );
    }
  }
  const result = {
    spiffeId: identity.id.toString(),
    serial: identity.serial,
    notAfter: identity.notAfter.toISOString(),
    files: {
      key: written.keyPath,
      cert: written.certPath,
      chain: written.chainPath,
      bundle: written.bundlePath,
    },
  };
  ctx.emit(opts.json, result, () => {
    out(`issued ${result.spiffeId}`);
    out(`  serial:     ${result.serial}`);
    out(`  not after:  ${result.notAfter} (${countdown(identity.notAfter, deps.clock.now())})`);
    out(`  key:        ${written.keyPath}`);
    out(`  cert:       ${written.certPath}`);
    out(`  chain:      ${written.chainPath}`);
    out(`  bundle:     ${written.bundlePath}`);
  });
}
