/**
 * A services file (YAML or JSON: `services: [...]`, the same schema as weft.yaml's `services`), loaded
 * at start and watched. Editors and config management replace files by rename, so the directory is
 * watched, changes are debounced, and the file is re-read whole. A broken edit is refused with every
 * error naming its key, counted, and the last good table stays.
 */
import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { ConfigError, issuesFromZod, parseYamlText } from "../config/load.ts";
import { type ServiceConfig, serviceFileSchema } from "../config/services-schema.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { WeftMetrics } from "../core/metrics.ts";

/** Parse a services file's text; throws ConfigError listing every problem. */
export function parseServicesFile(text: string, source: string): ServiceConfig[] {
  const raw = parseYamlText(text, source) ?? { services: [] };
  const result = serviceFileSchema.safeParse(raw);
  if (!result.success) {
    throw new ConfigError(
      issuesFromZod(result.error).map((i) => ({ key: `${source}: ${i.key}`, message: i.message })),
    );
  }
  return result.data.services;
}

export interface FileSourceOptions {
  readonly path: string;
  readonly onServices: (services: ServiceConfig[]) => void;
  readonly metrics: WeftMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Quiet time after the last change before reloading (default 100 ms). */
  readonly debounceMs?: number;
}

export class FileSource {
  private watcher: FSWatcher | undefined;
  private timer: TimerHandle | undefined;
  private lastText: string | undefined;
  private reloading = Promise.resolve();

  constructor(private readonly o: FileSourceOptions) {}

  /** Load once (a missing or invalid file is an error at start) and begin watching. */
  async start(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.o.path, "utf8");
    } catch (err) {
      throw new WeftError("E_IO", `cannot read services file ${this.o.path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.o.onServices(parseServicesFile(text, this.o.path));
    this.lastText = text;
    const name = basename(this.o.path);
    this.watcher = watch(dirname(this.o.path), (_event, file) => {
      if (file === null || file === name) this.schedule();
    });
    this.watcher.on("error", (err) => {
      this.o.logger.error({ err, path: this.o.path }, "services file watch failed");
    });
  }

  private schedule(): void {
    this.timer?.cancel();
    this.timer = this.o.clock.setTimeout(() => {
      this.reloading = this.reloading.then(async () => {
        await this.reload();
      });
    }, this.o.debounceMs ?? 100);
  }

  /** Re-read the file now; exposed so tests and SIGHUP can force it. */
  async reload(): Promise<boolean> {
    let text: string;
    try {
      text = await readFile(this.o.path, "utf8");
    } catch (err) {
      // Mid-rename the file may be briefly absent: the next event reloads it.
      this.o.metrics.discoveryErrors.inc({ source: "file", reason: "read_failed" });
      this.o.logger.warn(
        { path: this.o.path, err: (err as Error).message },
        "services file unreadable; keeping the last good table",
      );
      return false;
    }
    if (text === this.lastText) return false;
    try {
      const services = parseServicesFile(text, this.o.path);
      this.o.onServices(services);
      this.lastText = text;
      this.o.logger.info({ path: this.o.path, services: services.length }, "services file reloaded");
      return true;
    } catch (err) {
      this.o.metrics.discoveryErrors.inc({ source: "file", reason: "invalid" });
      this.o.logger.error(
        { path: this.o.path, error: (err as Error).message },
        "services file refused; keeping the last good table",
      );
      return false;
    }
  }

  async stop(): Promise<void> {
    this.timer?.cancel();
    this.watcher?.close();
    await this.reloading;
  }
}
