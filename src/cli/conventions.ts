/**
 * What every Weft command line does the same way: `--version` (with the Node and OpenSSL it runs on).
 */
import { readFileSync } from "node:fs";

/** The package's version, from the package.json two folders up (src/cli/ and dist/cli/ alike). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version?: string;
  };
  return pkg.version ?? "unknown";
}

/** `weft 0.1.0 (node v24.21.0, OpenSSL 3.5.4)`: what a bug report needs. */
export function versionLine(name: string): string {
  return `${name} ${packageVersion()} (node ${process.version}, OpenSSL ${process.versions.openssl})`;
}
