/** `meshca serve`: run the CA server until shutdown. */

import { resolve } from "node:path";
import type { Command } from "commander";
import { startKubeJoin } from "../../ca/kube-join.ts";
import {
  createCaServer,
  DEFAULT_LISTEN,
  MAX_CONNECTIONS_PER_ADDRESS,
  parseListenAddress,
  serverSans,
} from "../../ca/server.ts";
import { help, type MeshcaContext, parseCliDuration, parsePositiveInt } from "./context.ts";

interface ServeOptions {
  listen: string;
  san?: string[];
  leafTtl?: number;
  maxConnectionsPerAddress?: number;
  metricsListen?: string;
  dir: string;
  kubernetes?: boolean;
  kubeconfig?: string;
  kubeAudience: string;
}

export function registerServe(program: Command, ctx: MeshcaContext): void {
  const { dirOption } = ctx;
  program
    .command("serve")
    .description("run the CA server: sign CSRs for join tokens, renew over mTLS, serve the bundle")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--san <name...>", "extra DNS names or IPs for the server certificate (repeatable)")
    .option("--leaf-ttl <duration>", "lifetime of the certificates it signs (default 24h)", parseCliDuration)
    .option(
      "--max-connections-per-address <n>",
      `connections one source address (IPv6: one /64) may hold (default ${MAX_CONNECTIONS_PER_ADDRESS})`,
      parsePositiveInt,
    )
    .option("--metrics-listen <host:port>", "also serve GET /metrics over plain HTTP here")
    .option(
      "--kubernetes",
      "also sign for projected service-account tokens (POST /v1/sign/kubernetes), checked by TokenReview",
    )
    .option(
      "--kubeconfig <file>",
      "with --kubernetes: the API server's kubeconfig (default KUBECONFIG, else in-cluster)",
    )
    .option("--kube-audience <aud>", "with --kubernetes: the token audience required", "weft-ca")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca serve",
        "meshca serve --kubernetes --listen 0.0.0.0:15443 --san weft-ca.weft-system.svc",
        "meshca serve --listen 0.0.0.0:15443 --san ca.weft.local --san 10.0.0.2",
        "meshca serve --listen 0.0.0.0:15443 --san ca.weft.local --metrics-listen 0.0.0.0:15444",
        "curl --cacert certs/bundle.pem https://127.0.0.1:15443/v1/bundle",
      ]),
    )
    .action((opts: ServeOptions) => serve(ctx, opts));
}

async function serve(ctx: MeshcaContext, opts: ServeOptions): Promise<void> {
  const { deps, out, loadCa, tokenStore } = ctx;
  const listen = parseListenAddress(opts.listen);
  const metricsListen = opts.metricsListen === undefined ? undefined : parseListenAddress(opts.metricsListen);
  const { ca } = await loadCa(opts.dir);
  if ((listen.host === "0.0.0.0" || listen.host === "::") && !opts.san?.length) {
    const names = serverSans(listen.host);
    ctx.err(
      `meshca: warning: listening on ${listen.host} without --san: the server certificate names only ${[...names.dnsNames, ...names.ipAddresses].join(", ")}, ` +
        "so sidecars on other hosts fail its host name check; add --san <dns-name-or-ip> for each name they use",
    );
  }
  const kube = opts.kubernetes
    ? await startKubeJoin(
        {
          trustDomain: ca.trustDomain,
          audience: opts.kubeAudience,
          ...(opts.kubeconfig ? { kubeconfig: resolve(deps.cwd, opts.kubeconfig) } : {}),
        },
        deps,
      )
    : undefined;
  const server = await createCaServer({
    ...(kube ? { kubeJoin: kube.join } : {}),
    ca,
    tokens: tokenStore(opts.dir, ca.trustDomain),
    serials: ctx.serialStore(opts.dir),
    logger: deps.logger,
    clock: deps.clock,
    listen,
    ...(opts.san ? { sans: opts.san } : {}),
    ...(opts.leafTtl ? { leafTtlMs: opts.leafTtl } : {}),
    ...(opts.maxConnectionsPerAddress ? { maxConnectionsPerAddress: opts.maxConnectionsPerAddress } : {}),
    ...(metricsListen ? { metricsListen } : {}),
    // After `meshca rotate` the new intermediate and bundle are picked up without a restart.
    loadCa: async () => {
      const loaded = (await loadCa(opts.dir)).ca;
      loaded.checkConsistent();
      return loaded;
    },
  });
  out(`serving ${ca.trustDomain} at ${server.url}`);
  deps.onServing?.({ url: server.url, port: server.port });
  try {
    await deps.waitForShutdown();
  } finally {
    await server.close();
    kube?.close();
  }
}
