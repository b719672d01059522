/**
 * The `meshca` process: wires real streams, the system clock, the environment and a JSON logger into the
 * program from `meshca.ts`, runs it, and sets the exit code (0 ok, 1 failure, 2 usage).
 */
import { systemClock } from "../core/clock.ts";
import { createLogger, type LogLevel } from "../core/log.ts";
import { exitQuietlyOnClosedPipe } from "./conventions.ts";
import { runMeshca } from "./meshca.ts";

const LEVELS = new Set(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);
const level = process.env.WEFT_LOG_LEVEL;

exitQuietlyOnClosedPipe(process.stdout);
process.exitCode = await runMeshca(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  clock: systemClock,
  cwd: process.cwd(),
  env: process.env,
  logger: createLogger({ name: "meshca", level: level && LEVELS.has(level) ? (level as LogLevel) : "info" }),
  waitForShutdown: () =>
    new Promise<void>((resolve) => {
      process.once("SIGINT", () => resolve());
      process.once("SIGTERM", () => resolve());
    }),
});
