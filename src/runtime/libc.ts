/**
 * libc through koffi, loaded on first use: the one loader for the socket options the proxy reads
 * (src/proxy/capture/sockopt.ts), for mallopt at sidecar start (malloc-tuning.ts), and of koffi itself
 * for V8's memory-pressure signal (v8-pressure.ts).
 */
import { createRequire } from "node:module";
import { WeftError } from "../core/errors.ts";

/** koffi itself; throws E_ORIGINAL_DST (reason no_koffi) when it is missing. */
export function loadKoffi(): typeof import("koffi") {
  const require = createRequire(import.meta.url);
  try {
    return require("koffi");
  } catch (err) {
    throw new WeftError("E_ORIGINAL_DST", "koffi is not installed; transparent mode needs it (npm ci)", {
      reason: "no_koffi",
      cause: err,
    });
  }
}

/** koffi and libc.so.6 loaded through it; throws E_ORIGINAL_DST (reason no_koffi) when koffi is missing. */
export function loadKoffiLibc(): {
  koffi: typeof import("koffi");
  lib: ReturnType<typeof import("koffi").load>;
} {
  const koffi = loadKoffi();
  return { koffi, lib: koffi.load("libc.so.6") };
}
