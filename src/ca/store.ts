/**
 * The CA directory on disk (default `certs/`):
 *
 *   root.pem  root-key.pem  intermediate.pem  intermediate-key.pem  bundle.pem  trust-domain
 *   issued/<name>/{cert.pem, chain.pem, key.pem, bundle.pem}
 *
 * Every file is written atomically (temporary file, fsync, rename), keys with mode 0600 and their
 * folders 0700. Nothing is overwritten without `force`. The root key may be moved offline: the CA
 * still issues without it and says so when an operation needs it.
 */

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { access, mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { WeftError } from "../core/errors.ts";
import type { CaMaterial, IssuedIdentity } from "./authority.ts";

export const CA_FILES = {
  rootCert: "root.pem",
  rootKey: "root-key.pem",
  intermediateCert: "intermediate.pem",
  intermediateKey: "intermediate-key.pem",
  bundle: "bundle.pem",
  trustDomain: "trust-domain",
} as const;

/** Write a file so readers see the old or the new content, never a mix; `mode` applies from creation. */
export async function writeFileAtomic(path: string, data: string | Buffer, mode: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw new WeftError("E_IO", `cannot write ${path}: ${(err as Error).message}`, { cause: err });
  }
  await fh.close();
  await rename(tmp, path);
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

export class CaStore {
  constructor(readonly dir: string) {}

  private path(name: string): string {
    return join(this.dir, name);
  }

  async exists(): Promise<boolean> {
    return exists(this.path(CA_FILES.intermediateKey));
  }

  async load(): Promise<CaMaterial> {
    const read = async (name: string, required = true): Promise<string | undefined> => {
      try {
        return await readFile(this.path(name), "utf8");
      } catch (err) {
        if (!required && (err as { code?: string }).code === "ENOENT") return undefined;
        throw new WeftError(
          "E_IO",
          `cannot read ${this.path(name)}: ${(err as Error).message}; is ${this.dir} a CA made by meshca init?`,
          {
            cause: err,
          },
        );
      }
    };
    const trustDomain = (await read(CA_FILES.trustDomain))!.trim();
    const rootKeyPem = await read(CA_FILES.rootKey, false);
    return {
      trustDomain,
      rootCertPem: (await read(CA_FILES.rootCert))!,
      ...(rootKeyPem ? { rootKeyPem } : {}),
      intermediateCertPem: (await read(CA_FILES.intermediateCert))!,
      intermediateKeyPem: (await read(CA_FILES.intermediateKey))!,
      bundlePem: (await read(CA_FILES.bundle))!,
    };
  }

  async save(m: CaMaterial, opts: { force?: boolean } = {}): Promise<void> {
    if (!opts.force && (await this.exists())) {
      throw new WeftError("E_EXISTS", `a CA already exists in ${this.dir}; pass --force to replace it`);
    }
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.path(CA_FILES.trustDomain), `${m.trustDomain}\n`, 0o644);
    await writeFileAtomic(this.path(CA_FILES.rootCert), m.rootCertPem, 0o644);
    if (m.rootKeyPem) await writeFileAtomic(this.path(CA_FILES.rootKey), m.rootKeyPem, 0o600);
    await writeFileAtomic(this.path(CA_FILES.intermediateCert), m.intermediateCertPem, 0o644);
    await writeFileAtomic(this.path(CA_FILES.intermediateKey), m.intermediateKeyPem, 0o600);
    await writeFileAtomic(this.path(CA_FILES.bundle), m.bundlePem, 0o644);
  }

  issuedDir(name: string): string {
    if (!/^[A-Za-z0-9._-]+$/.test(name) || name === "." || name === "..") {
      throw new WeftError(
        "E_USAGE",
        `"${name}" is not a valid name for an issued identity (letters, digits, . _ -)`,
      );
    }
    return join(this.dir, "issued", name);
  }

  async writeIssued(
    name: string,
    identity: IssuedIdentity,
    opts: { force?: boolean } = {},
  ): Promise<IdentityFiles> {
    return writeIdentityDir(this.issuedDir(name), identity, opts);
  }
}

export interface IdentityFiles {
  readonly certPath: string;
  readonly keyPath: string;
  readonly chainPath: string;
  readonly bundlePath: string;
}

/** The files of one identity in `dir`: cert.pem, chain.pem, key.pem (0600), bundle.pem. */
export function identityFiles(dir: string): IdentityFiles {
  return {
    certPath: join(dir, "cert.pem"),
    keyPath: join(dir, "key.pem"),
    chainPath: join(dir, "chain.pem"),
    bundlePath: join(dir, "bundle.pem"),
  };
}

/** Write an identity's files atomically; refuses to replace any of them without `force`. */
export async function writeIdentityDir(
  dir: string,
  identity: IssuedIdentity,
  opts: { force?: boolean } = {},
): Promise<IdentityFiles> {
  const files = identityFiles(dir);
  if (!opts.force) {
    for (const f of Object.values(files)) {
      if (await exists(f))
        throw new WeftError("E_EXISTS", `${f} exists; pass --force to replace the identity's files`);
    }
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(files.keyPath, identity.keyPem, 0o600);
  await writeFileAtomic(files.certPath, identity.certPem, 0o644);
  await writeFileAtomic(files.chainPath, identity.chainPem, 0o644);
  await writeFileAtomic(files.bundlePath, identity.bundlePem, 0o644);
  return files;
}
