/**
 * The `weft` process: real streams, clock and environment into the program of `weft.ts`; SIGTERM and
 * SIGINT start a drain. Exit codes 0 ok, 1 failure, 2 usage.
 */
import { systemClock } from "../core/clock.ts";
import { runWeft } from "./weft.ts";

process.exitCode = await runWeft(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  clock: systemClock,
  waitForShutdown: () =>
    new Promise<void>((resolve) => {
      process.once("SIGINT", () => resolve());
      process.once("SIGTERM", () => resolve());
    }),
});
