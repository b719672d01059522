/**
 * Can a given user read a file? `weft validate` runs as whoever types it (often root, who reads
 * everything), while the sidecar runs as the proxy UID (1337): a key written by `meshca issue` as root
 * (0700 folder, 0600 key) passes a check done as root and fails in the sidecar. So the check walks the
 * path with the permission bits the kernel applies to that UID and GID: search (x) on every folder on
 * the way, read on the file. POSIX ACLs and capabilities are not looked at.
 */
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { errorMessage } from "../core/errors.ts";

export interface FileUser {
  readonly uid: number;
  readonly gid: number;
}

/** Why `user` cannot read `path` (or `path` is not a regular file), or undefined when it can. */
export async function unreadableBy(
  path: string,
  user: FileUser | undefined,
  want: "file" | "directory" = "file",
): Promise<string | undefined> {
  const abs = resolve(path);
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "does not exist";
    if (code === "EACCES") return "cannot be reached (permission denied on a folder)";
    return errorMessage(err);
  }
  if (want === "file" && st.isDirectory()) return "is a directory, not a file";
  if (want === "directory" && !st.isDirectory()) return "is not a directory";
  if (want === "file" && !st.isFile()) return "is not a regular file";
  if (!user) {
    try {
      await access(abs, want === "file" ? constants.R_OK : constants.R_OK | constants.X_OK);
      return undefined;
    } catch {
      return `is not readable by this user (UID ${process.getuid?.() ?? "?"})`;
    }
  }
  if (user.uid === 0) return undefined;
  const who = `UID ${user.uid}`;
  const bits = (s: { uid: number; gid: number; mode: number }): number =>
    s.uid === user.uid ? (s.mode >> 6) & 7 : s.gid === user.gid ? (s.mode >> 3) & 7 : s.mode & 7;
  const folders: string[] = [];
  for (let d = dirname(abs); ; d = dirname(d)) {
    folders.unshift(d);
    if (dirname(d) === d) break;
  }
  for (const d of folders) {
    const ds = await stat(d);
    if ((bits(ds) & 1) === 0) {
      return `is not readable by ${who} (the proxy user): folder ${d} (mode ${mode(ds.mode)}, owner ${ds.uid}:${ds.gid}) does not let it in`;
    }
  }
  const need = want === "file" ? 4 : 5;
  if ((bits(st) & need) !== need) {
    return `is not readable by ${who} (the proxy user): mode ${mode(st.mode)}, owner ${st.uid}:${st.gid}`;
  }
  return undefined;
}

function mode(m: number): string {
  return `0${(m & 0o777).toString(8)}`;
}
