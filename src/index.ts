/**
 * The package's programmatic entry (`import { Sidecar, parseConfig } from "@weft-mesh/weft"`): the same
 * code the `weft` command runs. The CA (`createTrustDomain`, `CertificateAuthority`, rotation) is the
 * separate entry `@weft-mesh/weft/ca`, so that a program embedding a sidecar does not load the
 * certificate-building libraries.
 */
export { SpiffeId } from "./ca/spiffe-id.ts";
export { parseBundle, SvidVerifier, verifySvid } from "./ca/verify.ts";
export { runWeft } from "./cli/weft.ts";
export { ConfigError, parseConfig } from "./config/load.ts";
export type { Config } from "./config/schema.ts";
export { ERROR_CODES, type ErrorCode, isWeftError, WeftError } from "./core/errors.ts";
export { Sidecar, type SidecarDeps } from "./proxy/sidecar.ts";
