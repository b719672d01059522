/**
 * The `weft` process: real streams, clock and environment into the program of `weft.ts`; signals from
 * signals.ts (SIGTERM and SIGINT start a drain; SIGHUP reloads weft.yaml, the identity files and the
 * services file and never ends the process; SIGUSR1/SIGUSR2 are ignored: no inspector, no exit). Exit
 * codes 0 ok, 1 failure, 2 usage.
 */
import { systemClock } from "../core/clock.ts";
import { exitQuietlyOnClosedPipe } from "./conventions.ts";
import { installProcessSignals } from "./signals.ts";
import { runWeft } from "./weft.ts";

// From the first instant: the default actions of SIGHUP and SIGUSR2 end the process, SIGUSR1's opens
// the inspector.
const signals = installProcessSignals();

exitQuietlyOnClosedPipe(process.stdout);
process.exitCode = await runWeft(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  clock: systemClock,
  waitForShutdown: signals.waitForShutdown,
  onReload: signals.onReload,
  onIgnoredSignal: signals.onIgnored,
});
