/** `meshca serve`: run the CA server until shutdown. */

import { resolve } from "node:path";
import type { Command } from "commander";
import { startKubeJoin } from "../../ca/kube-join.ts";
import { createCaServer, DEFAULT_LISTEN, parseListenAddress } from "../../ca/server.ts";
import { help, type MeshcaContext, parseCliDuration } from "./context.ts";

interface ServeOptions {
  listen: string;
  san?: string[];
  leafTtl?: number;
  dir: string;
  kubernetes?: boolean;
  kubeconfig?: string;
  kubeAudience: string;
}

export function registerServe(program: Command, ctx: MeshcaContext): void {
  const { deps, out, loadCa, tokenStore, dirOption } = ctx;
  program
    .command("serve")
    .description("run the CA server: sign CSRs for join tokens, renew over mTLS, serve the bundle")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--san <name...>", "extra DNS names or IPs for the server certificate (repeatable)")
    .option("--leaf-ttl <duration>", "lifetime of the certificates it signs (default 24h)", parseCliDuration)
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
        "curl --cacert certs/bundle.pem https://127.0.0.1:15443/v1/bundle",
      ]),
    )
    .action(async (opts: ServeOptions) => {
      const listen = parseListenAddress(opts.listen);
      const { ca } = await loadCa(opts.dir);
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
        logger: deps.logger,
        clock: deps.clock,
        listen,
        ...(opts.san ? { sans: opts.san } : {}),
        ...(opts.leafTtl ? { leafTtlMs: opts.leafTtl } : {}),
      });
      out(`serving ${ca.trustDomain} at ${server.url}`);
      deps.onServing?.({ url: server.url, port: server.port });
      try {
        await deps.waitForShutdown();
      } finally {
        await server.close();
        kube?.close();
      }
    });
}
