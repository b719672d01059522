/** `meshca serve`: run the CA server until shutdown. */
import type { Command } from "commander";
import { createCaServer, DEFAULT_LISTEN, parseListenAddress } from "../../ca/server.ts";
import { help, type MeshcaContext, parseCliDuration } from "./context.ts";

export function registerServe(program: Command, ctx: MeshcaContext): void {
  const { deps, out, loadCa, tokenStore, dirOption } = ctx;
  program
    .command("serve")
    .description("run the CA server: sign CSRs for join tokens, renew over mTLS, serve the bundle")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--san <name...>", "extra DNS names or IPs for the server certificate (repeatable)")
    .option("--leaf-ttl <duration>", "lifetime of the certificates it signs (default 24h)", parseCliDuration)
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca serve",
        "meshca serve --listen 0.0.0.0:15443 --san ca.weft.local --san 10.0.0.2",
        "curl --cacert certs/bundle.pem https://127.0.0.1:15443/v1/bundle",
      ]),
    )
    .action(async (opts: { listen: string; san?: string[]; leafTtl?: number; dir: string }) => {
      const listen = parseListenAddress(opts.listen);
      const { ca } = await loadCa(opts.dir);
      const server = await createCaServer({
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
      }
    });
}
