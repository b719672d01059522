/**
 * `weft proxy`: the sidecar from a weft.yaml until SIGTERM/SIGINT, then a drain; SIGHUP reloads.
 * Loaded by weft.ts only when the command runs, so that the rest of the CLI starts without the
 * sidecar's modules.
 */
import { readFileSync } from "node:fs";
import { loadConfigFile } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import type { Clock } from "../core/clock.ts";
import { createLogger, type Logger } from "../core/log.ts";
import { WeftMetrics } from "../core/metrics.ts";
import type { Probe } from "../discovery/health.ts";
import { createDiscovery } from "../discovery/index.ts";
import { HttpsKubeApi } from "../k8s/client.ts";
import { resolveConnection } from "../k8s/config.ts";
import { ConfigReloader } from "../proxy/config-reload.ts";
import { Sidecar } from "../proxy/sidecar.ts";
import { idleReclaimerFor } from "../runtime/idle-reclaim.ts";
import { tuneMalloc } from "../runtime/malloc-tuning.ts";
import { missingNodeFlags } from "../runtime/node-flags.ts";
import type { WeftDeps } from "./weft.ts";

/**
 * The route table a sidecar builds from its config: static services, the services file, DNS, and
 * Kubernetes (in-cluster credentials or a kubeconfig, found through `env`).
 */
export function discoveryFor(
  config: Config,
  deps: { logger: Logger; clock: Clock; metrics: WeftMetrics; probe?: Probe },
  env: Readonly<Record<string, string | undefined>> = {},
) {
  const k = config.discovery.kubernetes;
  const api = k
    ? new HttpsKubeApi(
        resolveConnection(
          {
            ...(k.kubeconfig ? { kubeconfig: k.kubeconfig } : {}),
            ...(k.context ? { context: k.context } : {}),
          },
          env,
          deps.clock,
        ),
      )
    : undefined;
  const discovery = createDiscovery({
    ...(api && k ? { kubernetes: { api, namespaces: k.namespaces } } : {}),
    trustDomain: config.trustDomain,
    services: config.services,
    ...(config.discovery.file ? { file: config.discovery.file } : {}),
    dns: {
      ...(config.discovery.dns.servers ? { servers: config.discovery.dns.servers } : {}),
      minTtl: config.discovery.dns.minTtl,
      maxTtl: config.discovery.dns.maxTtl,
      timeout: config.discovery.dns.timeout,
    },
    retries: config.retries,
    outlierDetection: config.outlierDetection,
    ...(config.healthCheck ? { healthCheck: config.healthCheck } : {}),
    ...deps,
  });
  if (!api) return discovery;
  const stop = discovery.stop.bind(discovery);
  return Object.assign(discovery, {
    async stop() {
      await stop();
      api.close();
    },
  });
}

/** Runs the sidecar of the weft.yaml at `configPath` until shutdown, then drains and stops it. */
export async function runProxy(configPath: string, deps: WeftDeps): Promise<void> {
  const opts = { config: configPath };
  const config = await loadConfigFile(opts.config, deps.env);
  const metrics = new WeftMetrics({ processMetrics: true, clock: deps.clock });
  const onDropped = (lines: number) => metrics.logLinesDropped.inc(lines);
  const logger = (deps.makeLogger ?? ((level) => createLogger({ name: "weft", level, onDropped })))(
    config.log.level,
  );
  const missing = missingNodeFlags();
  if (missing.length > 0) {
    logger.warn(
      { code: "W_NODE_FLAGS", missing },
      `node was started without ${missing.join(" ")}: bulk transfers cost more CPU (full garbage collections, 132 per GiB on Node 24 against none); start the sidecar with bin/weft.js or node ${missing.join(" ")} bin/weft.js`,
    );
  }
  const malloc = tuneMalloc();
  logger.debug(malloc.applied ? { malloc: malloc.settings } : { malloc_unchanged: malloc.reason }, "malloc");
  const sidecar = new Sidecar(config, {
    logger,
    clock: deps.clock,
    metrics,
    createRoutes: (c, d) => discoveryFor(c, d, deps.env),
    readFile: (p) => readFileSync(p, "utf8"),
  });
  await sidecar.start();
  const reclaimer = idleReclaimerFor(config.memory.idleReclaim, {
    clock: deps.clock,
    logger: logger.child({ component: "memory" }),
  });
  reclaimer?.start();
  const reloader = new ConfigReloader({
    path: opts.config,
    env: deps.env,
    apply: (next) => sidecar.reload(next),
    clock: deps.clock,
    logger: logger.child({ component: "config" }),
    metrics: sidecar.metrics,
  });
  await reloader.start();
  deps.onIgnoredSignal?.((signal) => {
    logger.info({ signal }, `${signal} ignored: a sidecar opens no inspector and keeps running`);
  });
  deps.onReload?.(() => {
    logger.info({ signal: "SIGHUP" }, "reloading weft.yaml, identity files and services file");
    void reloader.reload("signal");
    void sidecar.reloadSources();
  });
  await deps.waitForShutdown();
  await reloader.stop();
  logger.info({ deadline_ms: config.timeouts.drain }, "draining");
  const { forced } = await sidecar.drain();
  reclaimer?.stop();
  await sidecar.stop();
  logger.info({ forced }, "stopped");
}
