/**
 * The `weft` process's signals, wired in one place and from the first instant (a signal's default
 * action would otherwise end the process before the sidecar is up):
 * - SIGTERM, SIGINT: drain, then exit (`waitForShutdown`).
 * - SIGHUP: reload (weft.yaml, identity files, services file); never ends the process.
 * - SIGUSR1, SIGUSR2: ignored, logged. Node's default for SIGUSR1 opens its inspector on 127.0.0.1:9229
 *   (a debugger inside a security component), and SIGUSR2's default ends the process; with a listener
 *   installed, Node does neither (checked on Node 20 and 24: test/adversarial/signals.test.ts).
 */

export interface ProcessSignals {
  /** Resolves on the first SIGTERM or SIGINT. */
  waitForShutdown(): Promise<void>;
  /** Subscribe to reload requests (SIGHUP). */
  onReload(listener: () => void): void;
  /** Where an ignored signal is reported (set once the logger exists). */
  onIgnored(listener: (signal: NodeJS.Signals) => void): void;
}

export function installProcessSignals(proc: NodeJS.Process = process): ProcessSignals {
  const reload: Array<() => void> = [];
  const ignored: Array<(signal: NodeJS.Signals) => void> = [];
  // Signals that came before anyone listened (the sidecar was still starting) are delivered on subscribe:
  // a SIGHUP during start-up still reloads once.
  let pendingReload = false;
  const pendingIgnored: NodeJS.Signals[] = [];
  proc.on("SIGHUP", () => {
    if (reload.length === 0) pendingReload = true;
    for (const l of reload) l();
  });
  for (const signal of ["SIGUSR1", "SIGUSR2"] as const) {
    proc.on(signal, () => {
      if (ignored.length === 0 && pendingIgnored.length < 8) pendingIgnored.push(signal);
      for (const l of ignored) l(signal);
    });
  }
  return {
    waitForShutdown: () =>
      new Promise<void>((resolve) => {
        proc.once("SIGINT", () => resolve());
        proc.once("SIGTERM", () => resolve());
      }),
    onReload: (listener) => {
      reload.push(listener);
      if (pendingReload) {
        pendingReload = false;
        listener();
      }
    },
    onIgnored: (listener) => {
      ignored.push(listener);
      for (const s of pendingIgnored.splice(0)) listener(s);
    },
  };
}
