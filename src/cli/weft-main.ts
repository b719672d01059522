/**
 * The `weft` process: real streams, clock and environment into the program of `weft.ts`; SIGTERM and
 * SIGINT start a drain; SIGHUP reloads weft.yaml, the identity files and the services file (and never
 * ends the process). Exit codes 0 ok, 1 failure, 2 usage.
 */
import { systemClock } from "../core/clock.ts";
import { exitQuietlyOnClosedPipe } from "./conventions.ts";
import { runWeft } from "./weft.ts";

// From the first instant: SIGHUP's default action would end the process (before the sidecar is up too).
const reloadListeners: Array<() => void> = [];
process.on("SIGHUP", () => {
  for (const l of reloadListeners) l();
});

exitQuietlyOnClosedPipe(process.stdout);
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
  onReload: (listener) => {
    reloadListeners.push(listener);
  },
});
