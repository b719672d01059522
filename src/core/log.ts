/**
 * Structured JSON logging. Components take a `Logger` (pino's shape) and make a child per connection;
 * nothing logs through a global. Quiet by default (`info`), `WEFT_LOG_LEVEL` or config raises it.
 * Never log key material, PEM bodies, tokens or the whole environment.
 */
import { type DestinationStream, pino } from "pino";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Logger {
  child(bindings: Record<string, unknown>): Logger;
  error(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  info(fields: Record<string, unknown>, msg: string): void;
  debug(fields: Record<string, unknown>, msg: string): void;
  isLevelEnabled?(level: string): boolean;
  /** pino: the bindings of this logger and its parents. */
  bindings?(): Record<string, unknown>;
}

/**
 * A child that adds only the keys its parent does not already bind: pino writes every binding of every
 * ancestor, so a child adding `component` under a parent that has one would print the key twice.
 */
export function childOf(parent: Logger, bindings: Record<string, unknown>): Logger {
  const bound = parent.bindings?.() ?? {};
  const fresh = Object.fromEntries(Object.entries(bindings).filter(([k]) => !(k in bound)));
  return Object.keys(fresh).length === 0 ? parent : parent.child(fresh);
}

/** Bytes of log lines held while stderr's reader catches up; beyond it lines are dropped and counted. */
export const LOG_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Where log lines go: stderr (or `fd`), written asynchronously so a slow or stalled log reader never
 * blocks the event loop (the data plane). At most `maxBytes` wait; lines beyond are dropped and
 * `onDropped` is told how many (the sidecar counts them in `weft_log_lines_dropped_total`).
 */
export function logDestination(
  options: { fd?: number; maxBytes?: number; onDropped?: (lines: number) => void } = {},
): DestinationStream {
  const dest = pino.destination({
    dest: options.fd ?? 2,
    sync: false,
    minLength: 0,
    maxLength: options.maxBytes ?? LOG_BUFFER_BYTES,
  });
  dest.on("drop", (data: string) => {
    let lines = 0;
    for (let i = data.indexOf("\n"); i >= 0; i = data.indexOf("\n", i + 1)) lines++;
    options.onDropped?.(Math.max(1, lines));
  });
  return dest;
}

export function createLogger(
  options: {
    level?: LogLevel;
    name?: string;
    destination?: DestinationStream;
    onDropped?: (lines: number) => void;
  } = {},
): Logger {
  const base = options.name ? { name: options.name } : {};
  return pino(
    {
      level: options.level ?? "info",
      base,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ["key", "privateKey", "token", "*.key", "*.privateKey", "*.token"],
        censor: "[redacted]",
      },
    },
    options.destination ?? logDestination({ onDropped: options.onDropped }),
  ) as unknown as Logger;
}

/** The level of a pino logger (and so of every child it made), or undefined for other loggers. */
export function logLevel(logger: Logger): LogLevel | undefined {
  const l = (logger as { level?: unknown }).level;
  return typeof l === "string" ? (l as LogLevel) : undefined;
}

/**
 * Change the level at runtime (config reload, the admin port's /logging). pino's children read the
 * level through their parent unless given one of their own, so setting it on the root reaches every
 * component's child. False for a logger without levels (in-memory test loggers).
 */
export function setLogLevel(logger: Logger, level: LogLevel): boolean {
  if (logLevel(logger) === undefined) return false;
  (logger as unknown as { level: string }).level = level;
  return true;
}

/** A logger that drops everything. */
export const silentLogger: Logger = {
  child: () => silentLogger,
  error: () => {},
  warn: () => {},
  info: () => {},
  debug: () => {},
};

export interface LogRecord extends Record<string, unknown> {
  level: string;
  msg: string;
}

/** A logger that keeps records in memory, for tests that assert on what was logged. */
export class MemoryLogger implements Logger {
  constructor(
    readonly records: LogRecord[] = [],
    private readonly bound: Record<string, unknown> = {},
  ) {}

  child(bindings: Record<string, unknown>): Logger {
    return new MemoryLogger(this.records, { ...this.bound, ...bindings });
  }

  bindings(): Record<string, unknown> {
    return { ...this.bound };
  }

  private push(level: string, fields: Record<string, unknown>, msg: string): void {
    this.records.push({ ...this.bound, ...fields, level, msg });
  }

  error(fields: Record<string, unknown>, msg: string): void {
    this.push("error", fields, msg);
  }
  warn(fields: Record<string, unknown>, msg: string): void {
    this.push("warn", fields, msg);
  }
  info(fields: Record<string, unknown>, msg: string): void {
    this.push("info", fields, msg);
  }
  debug(fields: Record<string, unknown>, msg: string): void {
    this.push("debug", fields, msg);
  }
  isLevelEnabled(): boolean {
    return true;
  }
}
