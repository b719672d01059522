/**
 * Where the Kubernetes API server is and how to prove who we are to it, from one of two places:
 *
 * - in-cluster: `KUBERNETES_SERVICE_HOST`/`_PORT`, and the service-account files kubelet projects into
 *   the pod (`token`, `ca.crt`, `namespace`). The token rotates (kubelet rewrites it well before it
 *   expires), so it is re-read from the file rather than kept: at most every `TOKEN_REREAD_MS`.
 * - a kubeconfig (development, tests, `meshca serve` run outside the cluster): the current context or a
 *   named one; certificate-authority(-data), client-certificate/key(-data), token and tokenFile.
 *
 * Everything wrong is an `E_KUBE_CONFIG` naming the file and the key.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { parse as parseYaml } from "yaml";
import type { Clock } from "../core/clock.ts";
import { errorMessage, WeftError } from "../core/errors.ts";

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
/** A rotating token file is read again after this long (client-go re-reads it every minute). */
export const TOKEN_REREAD_MS = 10_000;

/** How requests authenticate: a bearer token (fixed or re-read from a file) and/or a client certificate. */
export interface KubeCredentials {
  /** The bearer token to send now, if any. */
  token(): string | undefined;
  readonly clientCert?: { readonly certPem: string; readonly keyPem: string };
}

export interface KubeConnection {
  /** `https://host:port`, no trailing slash. */
  readonly server: string;
  /** PEM roots that the API server's certificate must chain to; undefined = the system's. */
  readonly caPem?: string;
  readonly credentials: KubeCredentials;
  /** The namespace of this pod (in-cluster) or of the kubeconfig context ("default" when unset). */
  readonly namespace: string;
  /** Where this came from, for logs and errors ("in-cluster" or the kubeconfig path and context). */
  readonly origin: string;
}

type ReadFile = (path: string) => string;
const defaultRead: ReadFile = (p) => readFileSync(p, "utf8");

function configError(message: string): WeftError {
  return new WeftError("E_KUBE_CONFIG", message);
}

/** A token read from a file, re-read at most every `TOKEN_REREAD_MS` (the file rotates). */
export function fileToken(path: string, clock: Clock, read: ReadFile = defaultRead): () => string {
  let cached: { value: string; at: number } | undefined;
  const load = (): string => {
    const value = read(path).trim();
    if (value === "") throw configError(`token file ${path} is empty`);
    return value;
  };
  cached = { value: load(), at: clock.monotonic() };
  return () => {
    const now = clock.monotonic();
    if (now - cached!.at >= TOKEN_REREAD_MS) {
      try {
        cached = { value: load(), at: now };
      } catch {
        // Mid-rotation the file may be briefly absent or empty: keep the last token for one more period.
        cached = { value: cached!.value, at: now };
      }
    }
    return cached!.value;
  };
}

/** The in-cluster connection; `E_KUBE_CONFIG` when not running in a pod (or the files are missing). */
export function inClusterConnection(
  env: Readonly<Record<string, string | undefined>>,
  clock: Clock,
  options: { dir?: string; read?: ReadFile } = {},
): KubeConnection {
  const dir = options.dir ?? SERVICE_ACCOUNT_DIR;
  const read = options.read ?? defaultRead;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? "443";
  if (!host) {
    throw configError(
      "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset): give a kubeconfig instead",
    );
  }
  const readIn = (name: string) => {
    try {
      return read(join(dir, name));
    } catch (err) {
      throw configError(`in-cluster: cannot read ${join(dir, name)}: ${errorMessage(err)}`);
    }
  };
  const caPem = readIn("ca.crt");
  const namespace = readIn("namespace").trim() || "default";
  // Read once now so a missing token fails at start, then re-read as it rotates.
  readIn("token");
  const token = fileToken(join(dir, "token"), clock, read);
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return {
    server: `https://${hostPart}:${port}`,
    caPem,
    credentials: { token },
    namespace,
    origin: "in-cluster",
  };
}

interface NamedEntry {
  name?: unknown;
  cluster?: Record<string, unknown>;
  user?: Record<string, unknown>;
  context?: Record<string, unknown>;
}

/** A kubeconfig user's bearer token: fixed, read from `tokenFile`, or none; exec/auth-provider refused. */
function userToken(
  user: Record<string, unknown>,
  where: string,
  fromFile: (file: string) => () => string | undefined,
): () => string | undefined {
  let token: () => string | undefined = () => undefined;
  if (typeof user.token === "string" && user.token !== "") {
    const fixed = user.token;
    token = () => fixed;
  } else if (typeof user.tokenFile === "string" && user.tokenFile !== "") {
    token = fromFile(user.tokenFile);
  }
  if (user.exec !== undefined || user["auth-provider"] !== undefined) {
    throw configError(
      `${where}: exec and auth-provider plugins are not supported; use a token or a client certificate`,
    );
  }
  return token;
}

/** A kubeconfig's connection for `context` (default: its current-context). */
export function kubeconfigConnection(
  path: string,
  clock: Clock,
  options: { context?: string; read?: ReadFile } = {},
): KubeConnection {
  const read = options.read ?? defaultRead;
  let doc: Record<string, unknown>;
  try {
    doc = (parseYaml(read(path)) ?? {}) as Record<string, unknown>;
  } catch (err) {
    throw configError(`kubeconfig ${path}: ${errorMessage(err)}`);
  }
  const where = (key: string) => `kubeconfig ${path}: ${key}`;
  const list = (key: string): NamedEntry[] => {
    const v = doc[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw configError(`${where(key)} must be a list`);
    return v as NamedEntry[];
  };
  const contextName = options.context ?? (doc["current-context"] as string | undefined);
  if (!contextName) throw configError(`${where("current-context")} is unset and no context was named`);
  const context = list("contexts").find((c) => c.name === contextName)?.context;
  if (!context) throw configError(`${where("contexts")} has no context named "${contextName}"`);
  const clusterName = context.cluster as string | undefined;
  const userName = context.user as string | undefined;
  const cluster = list("clusters").find((c) => c.name === clusterName)?.cluster;
  if (!cluster) throw configError(`${where("clusters")} has no cluster named "${clusterName}"`);
  const user = (userName ? list("users").find((u) => u.name === userName)?.user : undefined) ?? {};
  const base = dirname(path);
  const resolvePath = (p: string) => (isAbsolute(p) ? p : join(base, p));
  /** `<key>-data` (base64) or `<key>` (a file, relative to the kubeconfig). */
  const material = (obj: Record<string, unknown>, key: string, section: string): string | undefined => {
    const data = obj[`${key}-data`];
    if (typeof data === "string" && data !== "") return Buffer.from(data, "base64").toString("utf8");
    const file = obj[key];
    if (typeof file === "string" && file !== "") {
      try {
        return read(resolvePath(file));
      } catch (err) {
        throw configError(`${where(`${section}.${key}`)}: cannot read ${file}: ${errorMessage(err)}`);
      }
    }
    return undefined;
  };
  const server = cluster.server;
  if (typeof server !== "string" || !/^https:\/\//.test(server)) {
    throw configError(`${where(`clusters[${clusterName}].server`)} must be an https:// URL`);
  }
  if (cluster["insecure-skip-tls-verify"] === true) {
    throw configError(
      `${where(`clusters[${clusterName}]`)}: insecure-skip-tls-verify is not supported; give certificate-authority`,
    );
  }
  const caPem = material(cluster, "certificate-authority", `clusters[${clusterName}]`);
  const certPem = material(user, "client-certificate", `users[${userName}]`);
  const keyPem = material(user, "client-key", `users[${userName}]`);
  if ((certPem === undefined) !== (keyPem === undefined)) {
    throw configError(`${where(`users[${userName}]`)} needs both client-certificate and client-key`);
  }
  const token = userToken(user, where(`users[${userName}]`), (file) =>
    fileToken(resolvePath(file), clock, read),
  );
  return {
    server: server.replace(/\/+$/, ""),
    ...(caPem !== undefined ? { caPem } : {}),
    credentials: {
      token,
      ...(certPem !== undefined && keyPem !== undefined ? { clientCert: { certPem, keyPem } } : {}),
    },
    namespace: (context.namespace as string | undefined) || "default",
    origin: `kubeconfig ${path} (context ${contextName})`,
  };
}

/**
 * The connection a Weft process uses: a kubeconfig when one is named (option, then `KUBECONFIG`'s
 * first file), else in-cluster.
 */
export function resolveConnection(
  options: { kubeconfig?: string; context?: string },
  env: Readonly<Record<string, string | undefined>>,
  clock: Clock,
): KubeConnection {
  const path = options.kubeconfig ?? env.KUBECONFIG?.split(":").find((p) => p !== "");
  if (path) return kubeconfigConnection(path, clock, options.context ? { context: options.context } : {});
  return inClusterConnection(env, clock);
}
