/**
 * Parsing of human units used across config and CLIs: durations (`250ms`, `30s`, `15m`, `24h`, `7d`, or a
 * number of milliseconds) and byte sizes (`64KiB`, `1MiB`, or a number of bytes).
 */
import { WeftError } from "../core/errors.ts";

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  kb: 1000,
  mb: 1e6,
  gb: 1e9,
};

/** Milliseconds from `"30s"`, `"1h30m"`, `"250ms"` or a non-negative number of milliseconds. */
export function parseDuration(value: string | number, what = "duration"): number {
  if (typeof value === "number") {
    if (Number.isFinite(value) && value >= 0) return value;
    throw new WeftError("E_CONFIG", `${what} must be a non-negative number of milliseconds, got ${value}`);
  }
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    matched = re.lastIndex;
  }
  if (text.length === 0 || matched !== text.length) {
    throw new WeftError(
      "E_CONFIG",
      `${what} "${value}" is not a duration; use e.g. 250ms, 30s, 15m, 24h, 7d`,
    );
  }
  return Math.round(total);
}

/** Bytes from `"64KiB"`, `"1MiB"` or a non-negative integer. */
export function parseSize(value: string | number, what = "size"): number {
  if (typeof value === "number") {
    if (Number.isInteger(value) && value >= 0) return value;
    throw new WeftError("E_CONFIG", `${what} must be a non-negative whole number of bytes, got ${value}`);
  }
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(value.trim());
  const unit = SIZE_UNITS[(m?.[2] || "b").toLowerCase()];
  if (!m || unit === undefined) {
    throw new WeftError("E_CONFIG", `${what} "${value}" is not a size; use e.g. 65536, 64KiB, 1MiB`);
  }
  return Math.round(Number(m[1]) * unit);
}

/** `"2h 3m"`-style text for a duration in ms, for humans (CLI output, logs). */
export function formatDuration(ms: number): string {
  const sign = ms < 0 ? "-" : "";
  let rest = Math.abs(Math.round(ms / 1000));
  const d = Math.floor(rest / 86400);
  rest -= d * 86400;
  const h = Math.floor(rest / 3600);
  rest -= h * 3600;
  const m = Math.floor(rest / 60);
  const s = rest - m * 60;
  const parts = [d ? `${d}d` : "", h ? `${h}h` : "", m ? `${m}m` : "", !d && !h && s ? `${s}s` : ""].filter(
    Boolean,
  );
  return sign + (parts.slice(0, 2).join(" ") || "0s");
}
