/**
 * libc through koffi, loaded on first use: the one loader for the socket options the proxy reads
 * (src/proxy/capture/sockopt.ts), for mallopt at sidecar start (malloc-tuning.ts), and of koffi itself
 * for V8's memory-pressure signal (v8-pressure.ts).
 */
import { createRequire } from "node:module";
import { WeftError } from "../core/errors.ts";

/** koffi and libc.so.6 loaded through it; throws E_ORIGINAL_DST (reason no_koffi) when koffi is missing. */
export function loadKoffiLibc(): {
  koffi: typeof import("koffi");
  lib: ReturnType<typeof import("koffi").load>;
} {
  const require = createRequire(import.meta.url);
  let koffi: typeof import("koffi");
  try {
    koffi = require("koffi");
  } catch (err) {
    throw new WeftError("E_ORIGINAL_DST", "koffi is not installed; transparent mode needs it (npm ci)", {
      reason: "no_koffi",
      cause: err,
    });
  }
  return { koffi, lib: koffi.load("libc.so.6") };
}
