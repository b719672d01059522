/**
 * Where a redirected connection was really going. iptables REDIRECT rewrites the destination to the
 * proxy's port; the kernel keeps the original, which `getsockopt(SO_ORIGINAL_DST)` (IPv4) and
 * `getsockopt(IP6T_SO_ORIGINAL_DST)` (IPv6) return. Node has no such call, so koffi calls libc's
 * getsockopt on the socket's file descriptor (`sockopt.ts`); koffi is loaded lazily, the first time a
 * Linux resolver is made.
 */
import { isIP, type Socket } from "node:net";
import { WeftError } from "../../core/errors.ts";
import { normalizeAddress, type SocketAddr } from "../../discovery/types.ts";
import { type ListenAddr, type OrigDstAddr, origDstAddr } from "../addresses.ts";
import { fdOf, type Libc, loadLibc } from "./sockopt.ts";

export interface OriginalDstResolver {
  /** The destination the client connected to before any redirect; throws `E_ORIGINAL_DST`. */
  resolve(socket: Socket): OrigDstAddr;
}

const SOL_IP = 0;
const SOL_IPV6 = 41;
const SO_ORIGINAL_DST = 80;
const IP6T_SO_ORIGINAL_DST = 80;
const AF_INET = 2;
const AF_INET6 = 10;

function requireFd(socket: Socket): number {
  const fd = fdOf(socket);
  if (fd === undefined) {
    throw new WeftError("E_ORIGINAL_DST", "the socket has no file descriptor (closed, or not a TCP socket)", {
      reason: "no_fd",
    });
  }
  return fd;
}

/** Linux: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST through getsockopt. */
export class LinuxOriginalDst implements OriginalDstResolver {
  private readonly libc: Libc;
  /** One scratch buffer: resolve() is synchronous, so no two calls overlap. */
  private readonly scratch = Buffer.alloc(28);

  constructor() {
    if (process.platform !== "linux") {
      throw new WeftError("E_ORIGINAL_DST", `transparent capture needs Linux, not ${process.platform}`, {
        reason: "not_linux",
      });
    }
    this.libc = loadLibc();
  }

  resolve(socket: Socket): OrigDstAddr {
    const fd = requireFd(socket);
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; those were redirected by the IPv4
    // table and answer only the IPv4 option.
    const local = socket.localAddress ?? "";
    const v6 = isIP(normalizeAddress(local)) === 6;
    const buf = this.scratch.fill(0);
    const len = [v6 ? 28 : 16];
    const rc = v6
      ? this.libc.getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, buf, len)
      : this.libc.getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, buf, len);
    if (rc !== 0) {
      const errno = this.libc.errno();
      throw new WeftError(
        "E_ORIGINAL_DST",
        `getsockopt(${v6 ? "IP6T_SO_ORIGINAL_DST" : "SO_ORIGINAL_DST"}) failed with errno ${errno}` +
          (errno === 2 ? " (no NAT entry: the connection was not redirected by iptables)" : ""),
        { reason: errno === 2 ? "not_redirected" : "getsockopt_failed" },
      );
    }
    const family = buf.readUInt16LE(0);
    const port = buf.readUInt16BE(2);
    if (family === AF_INET) return origDstAddr({ address: [...buf.subarray(4, 8)].join("."), port });
    if (family === AF_INET6) {
      const groups: string[] = [];
      for (let i = 8; i < 24; i += 2) groups.push(buf.readUInt16BE(i).toString(16));
      return origDstAddr({ address: normalizeAddress(compressIpv6(groups)), port });
    }
    throw new WeftError("E_ORIGINAL_DST", `getsockopt returned address family ${family}`, {
      reason: "bad_family",
    });
  }
}

function compressIpv6(groups: string[]): string {
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const text =
    bestStart < 0
      ? groups.join(":")
      : `${groups.slice(0, bestStart).join(":")}::${groups.slice(bestStart + bestLen).join(":")}`;
  // "::ffff:7f00:1" style mapped addresses read better dotted.
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text);
  if (mapped) {
    const hi = Number.parseInt(mapped[1]!, 16);
    const lo = Number.parseInt(mapped[2]!, 16);
    return `::ffff:${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return text;
}

/**
 * A fixed answer, for explicit mode and tests: one destination for every socket, or a function of
 * the socket (e.g. by the local port it arrived on).
 */
export class StaticOriginalDst implements OriginalDstResolver {
  constructor(private readonly answer: SocketAddr | ((socket: Socket) => SocketAddr)) {}

  resolve(socket: Socket): OrigDstAddr {
    return origDstAddr(typeof this.answer === "function" ? this.answer(socket) : this.answer);
  }
}

/**
 * True when the "original" destination is one of the proxy's own listeners: the connection was not
 * redirected (getsockopt then returns the socket's own address) or someone dialled the capture port
 * directly. Forwarding it would connect the proxy to itself.
 */
export function isLoop(dst: OrigDstAddr, listenerAddrs: readonly ListenAddr[]): boolean {
  const address = normalizeAddress(dst.address);
  return listenerAddrs.some(
    (l) =>
      l.port === dst.port &&
      (normalizeAddress(l.address) === address ||
        l.address === "0.0.0.0" ||
        l.address === "::" ||
        address === "127.0.0.1" ||
        address === "::1"),
  );
}
