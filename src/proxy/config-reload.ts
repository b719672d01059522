/**
 * Live reload of weft.yaml, as the services file already has it: the file's folder is watched (editors
 * and config management replace files by rename), changes are debounced, and SIGHUP forces a reload. The
 * new text goes through the same loading as at start (schema, environment overrides, paths relative to
 * the file); a broken edit is refused with every problem naming its key, counted
 * (`weft_config_reloads_total{result="refused"}`), and the last good config keeps serving. A valid one
 * is handed to `apply` (the sidecar's `reload`), which applies what can change live and reports the rest.
 */
import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { ConfigError, loadConfigFile } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";
import type { ReloadOutcome } from "./sidecar.ts";

export interface ConfigReloaderOptions {
  readonly path: string;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly apply: (config: Config) => ReloadOutcome;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: WeftMetrics;
  /** Quiet time after the last change event before reading (default 200 ms). */
  readonly debounceMs?: number;
}

export type ReloadResult =
  | { readonly result: "applied" | "unchanged"; readonly outcome: ReloadOutcome }
  | { readonly result: "refused"; readonly problems: readonly { key: string; message: string }[] };

export class ConfigReloader {
  private watcher: FSWatcher | undefined;
  private timer: TimerHandle | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private lastText: string | undefined;
  private stopped = false;

  constructor(private readonly o: ConfigReloaderOptions) {}

  /** Remember the text the running config came from and watch the file's folder. */
  async start(): Promise<void> {
    this.lastText = await readFile(this.o.path, "utf8").catch(() => undefined);
    const name = basename(this.o.path);
    try {
      this.watcher = watch(dirname(this.o.path), { persistent: false }, (_event, file) => {
        if (file === null || file === name) this.schedule();
      });
      this.watcher.on("error", (err) =>
        this.o.logger.warn(
          { err: errorMessage(err), path: this.o.path },
          "config watch failed; SIGHUP still reloads",
        ),
      );
    } catch (err) {
      this.o.logger.warn(
        { err: errorMessage(err), path: this.o.path },
        "cannot watch the config; SIGHUP reloads",
      );
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer?.cancel();
    this.timer = this.o.clock.setTimeout(() => {
      void this.reload("file");
    }, this.o.debounceMs ?? 200);
  }

  /** Read, validate and apply weft.yaml now (one at a time). `file`: skipped when the text is unchanged. */
  reload(trigger: "file" | "signal"): Promise<ReloadResult> {
    const run = this.chain.then(() => this.reloadOnce(trigger));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async reloadOnce(trigger: "file" | "signal"): Promise<ReloadResult> {
    const log = this.o.logger;
    const text = await readFile(this.o.path, "utf8").catch(() => undefined);
    if (trigger === "file" && text !== undefined && text === this.lastText) {
      return { result: "unchanged", outcome: { applied: [], restartNeeded: [] } };
    }
    let config: Config;
    try {
      config = await loadConfigFile(this.o.path, this.o.env);
    } catch (err) {
      const problems =
        err instanceof ConfigError ? err.issues : [{ key: this.o.path, message: errorMessage(err) }];
      this.o.metrics.configReloads.inc({ result: "refused" });
      log.error(
        { path: this.o.path, trigger, problems: problems.map((p) => `${p.key}: ${p.message}`) },
        "config refused; keeping the last good config",
      );
      return { result: "refused", problems };
    }
    this.lastText = text;
    const outcome = this.o.apply(config);
    const result = outcome.applied.length > 0 ? "applied" : "unchanged";
    this.o.metrics.configReloads.inc({ result });
    if (outcome.restartNeeded.length > 0) {
      log.warn(
        { path: this.o.path, trigger, applied: outcome.applied, restart_needed: outcome.restartNeeded },
        "config reloaded; some changes need a restart and are not in effect",
      );
    } else {
      log.info(
        { path: this.o.path, trigger, applied: outcome.applied },
        `config ${result === "applied" ? "reloaded" : "unchanged"}`,
      );
    }
    return { result, outcome };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    this.watcher?.close();
    await this.chain;
  }
}
