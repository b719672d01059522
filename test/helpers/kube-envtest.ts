/**
 * A real Kubernetes control plane for tests, the way controller-runtime's envtest runs one: etcd and
 * kube-apiserver (built by scripts/build-kube-envtest.sh) on loopback, with
 *   - a test CA, the API server's serving certificate for 127.0.0.1, and an admin client certificate
 *     (O=system:masters) for the test itself: client-certificate authentication;
 *   - a service-account signing key, `--service-account-issuer` and `--api-audiences`, so TokenRequest
 *     issues real projected tokens and TokenReview checks them;
 *   - RBAC authorization, and a Service ClusterIP range inside 198.18.0.0/15 (the test-host range), so a
 *     ClusterIP may be used inside network namespaces a test creates.
 * There is no kubelet and no controller manager: tests create the Pods, Services and EndpointSlices those
 * would create. `stopApiServer()`/`startApiServer()` restart the API server on the same port (etcd keeps
 * the data); `compact()` compacts etcd at its current revision. Everything is torn down in `t.after`.
 *
 * Without the binaries a test skips, saying how to build them; under CI=true it fails instead.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { systemClock } from "../../src/core/clock.ts";
import { freePort } from "../../src/core/ports.ts";
import { HttpsKubeApi, type KubeApi } from "../../src/k8s/client.ts";
import { kubeconfigConnection } from "../../src/k8s/config.ts";
import { eventually } from "./eventually.ts";

const run = promisify(execFile);
const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
/** The ClusterIP range the test API server allocates from (inside the test-host range 198.18.0.0/15). */
export const SERVICE_CIDR = "198.18.128.0/20";
export const API_AUDIENCE = "https://kubernetes.default.svc.cluster.local";
export const ISSUER = "https://kubernetes.default.svc.cluster.local";

function versions(): Record<string, string> {
  const text = readFileSync(join(ROOT, "hack/k8s-envtest/versions.env"), "utf8");
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z_]+)=(\S+)/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** Where the binaries are: `WEFT_ENVTEST_BIN`, else the build script's cache. */
export function envtestBinDir(): string {
  if (process.env.WEFT_ENVTEST_BIN) return process.env.WEFT_ENVTEST_BIN;
  const v = versions();
  const root = process.env.WEFT_ENVTEST_CACHE ?? join(homedir(), ".cache/weft/envtest");
  return join(root, `${v.KUBE_VERSION}-etcd${v.ETCD_VERSION}`, "bin");
}

/** Skip (saying why) unless the binaries exist; under CI=true their absence is a failure. */
export function requireEnvtest(t: TestContext): boolean {
  const dir = envtestBinDir();
  if (existsSync(join(dir, "kube-apiserver")) && existsSync(join(dir, "etcd"))) return true;
  const why = `needs kube-apiserver and etcd in ${dir}: run scripts/build-kube-envtest.sh (builds them once from their Go modules)`;
  if (process.env.CI === "true") throw new Error(`${why}; CI must run these tests`);
  t.skip(why);
  return false;
}

export interface KubeEnv {
  readonly dir: string;
  readonly url: string;
  /** A kubeconfig naming the admin (system:masters) client certificate. */
  readonly kubeconfig: string;
  /** The admin's client (tests create objects through it). */
  readonly admin: KubeApi;
  readonly caPem: string;
  readonly etcdUrl: string;
  /** A serving certificate for 127.0.0.1 signed by the test CA (`caPem`): files `<name>.crt`/`.key`. */
  servingCert(name: string): Promise<{ cert: string; key: string }>;
  /** A kubeconfig for a new client certificate user `name` (in `groups`), for RBAC tests. */
  userKubeconfig(name: string, groups?: string[]): Promise<string>;
  stopApiServer(): Promise<void>;
  startApiServer(): Promise<void>;
  /** Compact etcd at its current revision (forces 410 Gone on watches that start older). */
  compact(): Promise<number>;
  stop(): Promise<void>;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  await run("openssl", args, { cwd: dir });
}

async function makePki(dir: string, extraSans: string[]): Promise<void> {
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
  await openssl(dir, [
    "req",
    "-x509",
    "-new",
    "-key",
    "ca.key",
    "-subj",
    "/CN=weft-envtest-ca",
    "-days",
    "2",
    "-out",
    "ca.crt",
  ]);
  await signedCert(
    dir,
    "server",
    "/CN=kube-apiserver",
    `subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc${extraSans.map((s) => `,IP:${s}`).join("")}\nextendedKeyUsage=serverAuth\n`,
  );
  await clientCert(dir, "admin", "weft-envtest-admin", ["system:masters"]);
  // Service-account signing key (RSA, as kube-apiserver's default RS256 needs).
  await openssl(dir, ["genrsa", "-out", "sa.key", "2048"]);
  await openssl(dir, ["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

function clientCert(dir: string, file: string, cn: string, groups: string[]): Promise<void> {
  const subj = `/CN=${cn}${groups.map((g) => `/O=${g}`).join("")}`;
  return signedCert(dir, file, subj, "extendedKeyUsage=clientAuth\n");
}

/** `<file>.key` (P-256) and `<file>.crt` for `subj`, signed by the envtest CA with extensions `ext`. */
async function signedCert(dir: string, file: string, subj: string, ext: string): Promise<void> {
  await writeFile(join(dir, `${file}.ext`), ext);
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${file}.key`]);
  await openssl(dir, ["req", "-new", "-key", `${file}.key`, "-subj", subj, "-out", `${file}.csr`]);
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${file}.csr`,
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    `${file}.ext`,
    "-out",
    `${file}.crt`,
  ]);
}

function kubeconfigText(dir: string, url: string, user: string): string {
  return `apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: ${url}
    certificate-authority: ${join(dir, "ca.crt")}
users:
- name: ${user}
  user:
    client-certificate: ${join(dir, `${user}.crt`)}
    client-key: ${join(dir, `${user}.key`)}
contexts:
- name: envtest
  context:
    cluster: envtest
    user: ${user}
    namespace: default
current-context: envtest
`;
}

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  proc: ChildProcess,
  timeoutMs: number,
  log: string,
) {
  await eventually(
    `${what} to be ready (log: ${log})`,
    async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        const tail = existsSync(log) ? readFileSync(log, "utf8").slice(-3000) : "";
        throw new Error(`${what} exited (${proc.exitCode ?? proc.signalCode}) before it was ready:\n${tail}`);
      }
      return check().catch(() => false);
    },
    { timeoutMs, intervalMs: 200 },
  );
}

async function stopProcess(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  proc.kill("SIGTERM");
  const killed = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
  if (!killed) {
    proc.kill("SIGKILL");
    await exited;
  }
}

/** Start etcd and kube-apiserver; stopped after the test. Call `requireEnvtest` first. */
export async function startKubeEnv(
  t: TestContext,
  options: { extraApiServerArgs?: string[]; extraSans?: string[] } = {},
): Promise<KubeEnv> {
  const bin = envtestBinDir();
  const dir = await mkdtemp(join(tmpdir(), "weft-envtest-"));
  await makePki(dir, options.extraSans ?? []);
  const [etcdPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const etcdUrl = `http://127.0.0.1:${etcdPort}`;
  const url = `https://127.0.0.1:${apiPort}`;
  const kubeconfig = join(dir, "admin.kubeconfig");
  await writeFile(kubeconfig, kubeconfigText(dir, url, "admin"));
  const procs: { etcd?: ChildProcess; api?: ChildProcess } = {};
  let stopped = false;

  const spawnLogged = async (name: string, args: string[]) => {
    const log = join(dir, `${name}.log`);
    const fh = await open(log, "a");
    // setpriv --pdeathsig: the binary dies with this test process, even when the runner kills the file
    // after a timeout and no t.after runs.
    const proc = spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", join(bin, name), ...args], {
      stdio: ["ignore", fh.fd, fh.fd],
    });
    proc.once("exit", () => void fh.close().catch(() => {}));
    return { proc, log };
  };

  const etcd = await spawnLogged("etcd", [
    "--name=envtest",
    `--data-dir=${join(dir, "etcd")}`,
    `--listen-client-urls=${etcdUrl}`,
    `--advertise-client-urls=${etcdUrl}`,
    `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
    `--initial-cluster=envtest=http://127.0.0.1:${peerPort}`,
    "--unsafe-no-fsync=true",
    "--log-level=warn",
  ]);
  procs.etcd = etcd.proc;
  const teardown = async () => {
    if (stopped) return;
    stopped = true;
    await stopProcess(procs.api);
    await stopProcess(procs.etcd);
    admin.close();
    await rm(dir, { recursive: true, force: true });
  };
  t.after(teardown);
  await waitFor("etcd", async () => (await fetch(`${etcdUrl}/health`)).ok, etcd.proc, 60_000, etcd.log);

  const conn = () => kubeconfigConnection(kubeconfig, systemClock);
  const admin = new HttpsKubeApi(conn());
  const apiArgs = [
    `--etcd-servers=${etcdUrl}`,
    "--bind-address=127.0.0.1",
    "--advertise-address=127.0.0.1",
    `--secure-port=${apiPort}`,
    `--cert-dir=${join(dir, "certs")}`,
    `--tls-cert-file=${join(dir, "server.crt")}`,
    `--tls-private-key-file=${join(dir, "server.key")}`,
    `--client-ca-file=${join(dir, "ca.crt")}`,
    `--service-account-key-file=${join(dir, "sa.pub")}`,
    `--service-account-signing-key-file=${join(dir, "sa.key")}`,
    `--service-account-issuer=${ISSUER}`,
    `--api-audiences=${API_AUDIENCE}`,
    `--service-cluster-ip-range=${SERVICE_CIDR}`,
    "--authorization-mode=RBAC",
    "--allow-privileged=true",
    "--endpoint-reconciler-type=none",
    "--enable-priority-and-fairness=false",
    "--profiling=false",
    "--v=0",
    ...(options.extraApiServerArgs ?? []),
  ];
  const startApiServer = async () => {
    const api = await spawnLogged("kube-apiserver", apiArgs);
    procs.api = api.proc;
    const probe = new HttpsKubeApi(conn());
    try {
      await waitFor(
        "kube-apiserver",
        async () => {
          await probe.request({ method: "GET", path: "/readyz", timeoutMs: 2000 }).catch((err) => {
            // /readyz answers text, not JSON: a 2xx text body is fine.
            if ((err as { status?: number }).status === 200) return;
            throw err;
          });
          return true;
        },
        api.proc,
        180_000,
        api.log,
      );
    } finally {
      probe.close();
    }
  };
  await startApiServer();

  return {
    dir,
    url,
    kubeconfig,
    admin,
    caPem: readFileSync(join(dir, "ca.crt"), "utf8"),
    etcdUrl,
    async servingCert(name) {
      await signedCert(
        dir,
        name,
        `/CN=${name}`,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
      );
      return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
    },
    async userKubeconfig(name, groups = []) {
      const file = `user-${name.replace(/[^a-z0-9-]/gi, "_")}`;
      await clientCert(dir, file, name, groups);
      const path = join(dir, `${file}.kubeconfig`);
      await writeFile(path, kubeconfigText(dir, url, file));
      return path;
    },
    stopApiServer: async () => {
      await stopProcess(procs.api);
      admin.close();
    },
    startApiServer,
    async compact() {
      const range = (await (
        await fetch(`${etcdUrl}/v3/kv/range`, { method: "POST", body: JSON.stringify({ key: "AA==" }) })
      ).json()) as { header: { revision: string } };
      const revision = Number(range.header.revision);
      const res = await fetch(`${etcdUrl}/v3/kv/compaction`, {
        method: "POST",
        body: JSON.stringify({ revision, physical: true }),
      });
      if (!res.ok) throw new Error(`etcd compaction failed: ${res.status} ${await res.text()}`);
      return revision;
    },
    stop: teardown,
  };
}

/** Create `obj` at `path` as the admin; returns what the server stored. */
export function create<T>(env: KubeEnv, path: string, obj: unknown, dryRun = false): Promise<T> {
  return env.admin.request<T>({
    method: "POST",
    path,
    body: obj,
    ...(dryRun ? { query: { dryRun: "All" } } : {}),
  });
}
