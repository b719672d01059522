/**
 * The identity source `identity` in weft.yaml names: PEM files (`identity.files`) or the CA server
 * (`identity.ca`). The CA's token and Kubernetes token files are read at each attempt (they may appear,
 * or be replaced, while the sidecar waits); the CA bundle is read once, now.
 */
import { readFileSync } from "node:fs";
import type { Config } from "../../config/schema.ts";
import type { Clock } from "../../core/clock.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { WeftMetrics } from "../../core/metrics.ts";
import { CaIdentitySource } from "./ca-source.ts";
import { FileIdentitySource } from "./file-source.ts";
import type { IdentitySource } from "./source.ts";

export function identitySourceFor(
  c: Config,
  deps: { clock: Clock; logger: Logger; metrics: WeftMetrics; readFile?: (path: string) => string },
): IdentitySource {
  const read = deps.readFile ?? ((p: string) => readFileSync(p, "utf8"));
  const logger = deps.logger.child({ component: "identity" });
  if (c.identity.files) {
    return new FileIdentitySource({
      cert: c.identity.files.cert,
      key: c.identity.files.key,
      bundle: c.identity.files.bundle,
      trustDomain: c.trustDomain,
      clock: deps.clock,
      logger,
      pollIntervalMs: c.identity.files.reloadInterval,
    });
  }
  const ca = c.identity.ca!;
  const tokenFile = ca.tokenFile;
  const kubeTokenFile = ca.kubernetesTokenFile;
  let caBundlePem: string;
  try {
    caBundlePem = read(ca.bundle);
  } catch (err) {
    throw new WeftError("E_IO", `identity.ca.bundle ${ca.bundle} cannot be read: ${errorMessage(err)}`);
  }
  return new CaIdentitySource({
    url: ca.url,
    caBundlePem,
    id: ca.id,
    token:
      ca.token ??
      (tokenFile === undefined
        ? undefined
        : () => readAgain(read, tokenFile, "identity.ca.tokenFile", { reason: "token_file" })),
    ...(kubeTokenFile !== undefined
      ? { kubernetesToken: () => readAgain(read, kubeTokenFile, "identity.ca.kubernetesTokenFile") }
      : {}),
    keyAlgorithm: ca.keyAlgorithm,
    stateDir: ca.stateDir,
    revocationRefreshMs: ca.revocationRefresh,
    retryMaxMs: ca.retryMax,
    trustDomain: c.trustDomain,
    clock: deps.clock,
    logger,
    metrics: deps.metrics,
  });
}

/** A token file's content, trimmed; E_IO naming the setting when it cannot be read. */
function readAgain(
  read: (path: string) => string,
  path: string,
  setting: string,
  extra: { reason?: string } = {},
): string {
  try {
    return read(path).trim();
  } catch (err) {
    throw new WeftError("E_IO", `${setting} ${path} cannot be read: ${errorMessage(err)}`, extra);
  }
}
