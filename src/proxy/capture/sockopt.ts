/**
 * getsockopt for what Node does not expose, through koffi and libc, on a socket's file descriptor. This
 * file reads `socket._handle.fd` (undocumented) for getsockopt; koffi is loaded lazily, when the first
 * Linux user is made (src/runtime/libc.ts). Two users:
 *
 * - `original-dst.ts`: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST of a redirected connection;
 * - `LinuxSocketErrors`: SO_ERROR, the error the kernel holds for a socket. When a peer's last bytes
 *   and its reset arrive in one poll and the read comes back short, libuv (Node 20) reports EOF and
 *   never reads again, so Node emits `'end'` for what was a reset. SO_ERROR is then ECONNRESET (after a
 *   real FIN it is 0), which lets the splice carry the reset instead of turning it into a FIN.
 */
import type { Socket } from "node:net";
import { loadKoffiLibc } from "../../runtime/libc.ts";

export type GetSockOpt = (fd: number, level: number, name: number, out: Buffer, len: number[]) => number;

export interface Libc {
  getsockopt: GetSockOpt;
  errno: () => number;
}

/** libc's getsockopt through koffi; throws E_ORIGINAL_DST (reason no_koffi) when koffi is missing. */
export function loadLibc(): Libc {
  const { koffi, lib } = loadKoffiLibc();
  const getsockopt = lib.func(
    "int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)",
  ) as GetSockOpt;
  return { getsockopt, errno: () => koffi.errno() };
}

/** The socket's file descriptor, or undefined when it has none (closed, or not a kernel socket). */
export function fdOf(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}

/** What the kernel says about a socket's pending error (0 = none, or cannot tell). */
export interface SocketErrors {
  /** Reads and clears SO_ERROR; an errno such as 104 (ECONNRESET), or 0. */
  pending(socket: Socket): number;
  /** The kernel's TCP state (TCP_INFO tcpi_state: 7 CLOSE, 8 CLOSE_WAIT, ...), or -1 if unknown. */
  tcpState(socket: Socket): number;
}

/** Never reports an error: for platforms without koffi or libc, and for tests that need none. */
export const NO_SOCKET_ERRORS: SocketErrors = { pending: () => 0, tcpState: () => -1 };

const SOL_SOCKET = 1;
const SO_ERROR = 4;
const IPPROTO_TCP = 6;
const TCP_INFO = 11;

/** SO_ERROR through libc (Linux). */
export class LinuxSocketErrors implements SocketErrors {
  private readonly scratch = Buffer.alloc(4);

  constructor(private readonly libc: Libc = loadLibc()) {}

  pending(socket: Socket): number {
    const fd = fdOf(socket);
    if (fd === undefined) return 0;
    const len = [4];
    const out = this.scratch.fill(0);
    if (this.libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, out, len) !== 0) return 0;
    return out.readInt32LE(0);
  }

  tcpState(socket: Socket): number {
    const fd = fdOf(socket);
    if (fd === undefined) return -1;
    const len = [4];
    const out = this.scratch.fill(0);
    if (this.libc.getsockopt(fd, IPPROTO_TCP, TCP_INFO, out, len) !== 0) return -1;
    return out[0]!;
  }
}

/** The platform's probe: SO_ERROR on Linux when koffi loads, otherwise one that never reports. */
export function platformSocketErrors(): SocketErrors {
  if (process.platform !== "linux") return NO_SOCKET_ERRORS;
  try {
    return new LinuxSocketErrors();
  } catch {
    return NO_SOCKET_ERRORS;
  }
}
