/**
 * `npm run demo -- --transparent`: the mesh as it really runs, in network namespaces (root, Linux). It
 * uses the pod cluster of src/netns/pods.ts, which runs the same scripts as docker-compose: a CA pod
 * (examples/pod/ca.sh), two backend pods running nginx and a frontend pod running a shell loop of curl,
 * each with its capture rules (init.sh) and a Weft sidecar as UID 1337 (sidecar.sh). The apps know
 * nothing of Weft. It prints the identities, the spread of the frontend's requests over the backends,
 * the ejection of a stopped backend and its return, and where the metrics are. Every process and
 * namespace it made is gone when it ends, also on Ctrl-C.
 */
import { WeftError } from "../core/errors.ts";
import {
  apps,
  backendService,
  createPodCluster,
  type Pod,
  type PodCluster,
  pollUntil,
} from "../netns/pods.ts";
import { endpointLine, endpointsIn, identityLine, metricsHighlights, Spread } from "./report.ts";

export interface TransparentDemoOptions {
  readonly out: (line: string) => void;
  /** Resolves when the user asks to stop (Ctrl-C). */
  readonly interrupted: Promise<void>;
  /** Keep the mesh up after the script until `interrupted`. */
  readonly keepRunning: boolean;
  /** Working directory for the CA, tokens and pods (default a fresh temp dir, removed at the end). */
  readonly dir?: string;
  /** Answers to collect per phase (default 20). */
  readonly answers?: number;
}

/** Why the transparent demo cannot run here, or undefined when it can (Linux, root). */
export function transparentDemoUnavailable(): string | undefined {
  if (process.platform !== "linux") return "the transparent demo needs Linux (network namespaces, iptables)";
  if (process.getuid?.() !== 0) {
    return "the transparent demo needs root (network namespaces, iptables): sudo npm run demo -- --transparent; `npm run demo` runs without root";
  }
  return undefined;
}

class Interrupted extends Error {}

/** Ctrl-C as the demo's steps see it. */
class Interruption {
  stopped = false;
  private readonly signal: Promise<never>;

  constructor(interrupted: Promise<void>) {
    this.signal = interrupted.then(() => {
      this.stopped = true;
      throw new Interrupted("interrupted");
    });
    this.signal.catch(() => {});
  }

  /** Throws if the user asked to stop. */
  check(): void {
    if (this.stopped) throw new Interrupted("interrupted");
  }

  /** A read-only step (admin calls, waiting): abandoned at once on Ctrl-C, it fails quietly later. */
  async step<T>(p: Promise<T>): Promise<T> {
    p.catch(() => {});
    this.check();
    return Promise.race([p, this.signal]);
  }

  /**
   * A step that makes namespaces or processes: finished before Ctrl-C is honoured, so everything it
   * made is known to the cluster when it is destroyed.
   */
  async act<T>(p: Promise<T>): Promise<T> {
    const v = await p;
    this.check();
    return v;
  }
}

/** The pods of the demo: two nginx backends behind `vip`:8080 and a frontend looping on curl. */
interface DemoPods {
  readonly vip: string;
  readonly backends: readonly [Pod, Pod];
  readonly frontend: Pod;
}

async function endpointsOf(pod: Pod) {
  return endpointsIn(await pod.admin("/endpoints"));
}

/** Step 2: the backend pods, the services file naming them, the frontend pod; prints each identity. */
async function startPods(c: PodCluster, i: Interruption, out: (line: string) => void): Promise<DemoPods> {
  const backends: Pod[] = [];
  for (const name of ["backend-1", "backend-2"]) {
    backends.push(await i.act(c.addPod({ name, sa: "backend", app: (dir) => apps.nginx(dir, 8080, name) })));
  }
  const vip = c.vip();
  await i.step(c.writeServices([backendService(vip, backends, "4s")]));
  out(
    `   services file ${c.servicesFile}: backend VIP ${vip}:8080 → ${backends.map((b) => b.ip4).join(", ")}`,
  );
  const frontend = await i.act(
    c.addPod({ name: "frontend", sa: "frontend", app: () => apps.curlLoop(`http://${vip}:8080/`, 0.1) }),
  );
  out("   each sidecar fetched its certificate from the CA pod with its join token (admin /certs):");
  for (const pod of [frontend, ...backends]) {
    out(identityLine(pod.name, await i.step(pod.admin("/certs")), `netns ${pod.ns}`));
  }
  return { vip, backends: backends as [Pod, Pod], frontend };
}

/** The next `n` answers the frontend app prints, tallied by who answered. */
async function nextAnswers(frontend: Pod, n: number, i: Interruption): Promise<Spread> {
  const app = frontend.app!;
  const from = app.output().length;
  const lines = () => app.output().slice(from).split("\n").slice(0, -1);
  await i.step(
    pollUntil(`${n} answers from the frontend app`, async () => lines().length >= n, 60_000, app.exited),
  );
  const spread = new Spread();
  for (const l of lines().slice(0, n)) {
    if (/^backend-\d$/.test(l.trim())) spread.answered(l.trim());
    else spread.fail();
  }
  return spread;
}

/** The frontend's view of the backend endpoints, each named by its pod. */
async function showEndpoints(pods: DemoPods, i: Interruption, out: (line: string) => void): Promise<void> {
  for (const e of await i.step(endpointsOf(pods.frontend))) {
    const name = pods.backends.find((b) => e.key.startsWith(`${b.ip4}:`))?.name ?? "";
    out(endpointLine(e, 20, name));
  }
}

/** Waits until the frontend counts `back` as healthy (or on probation) again. */
async function awaitReturn(pods: DemoPods, back: Pod, i: Interruption): Promise<void> {
  const key = `${back.ip4}:8080`;
  await i.step(
    pollUntil(
      `${back.name} to return from ejection`,
      async () => {
        const s = (await endpointsOf(pods.frontend)).find((e) => e.key === key)?.state;
        return s === "healthy" || s === "probation";
      },
      60_000,
    ),
  );
}

/** Step 6: the metrics lines of backend-1 and the frontend, and how to read them. */
async function showMetrics(pods: DemoPods, i: Interruption, out: (line: string) => void): Promise<void> {
  const backend = await i.step(pods.backends[0].admin("/metrics"));
  const frontend = await i.step(pods.frontend.admin("/metrics"));
  for (const line of metricsHighlights(backend, frontend)) out(line);
  out(
    `   ip netns exec ${pods.frontend.ns} curl -s 127.0.0.1:15000/metrics   (also /ready /certs /endpoints)`,
  );
}

/** With `keepRunning`: what to try by hand, then wait for Ctrl-C. */
async function keepRunning(c: PodCluster, pods: DemoPods, i: Interruption, out: (line: string) => void) {
  out(`\nThe mesh keeps running: try  ip netns exec ${pods.frontend.ns} curl http://${pods.vip}:8080/`);
  out(
    `and  ip netns exec ${c.caPod.host.ns} curl -s --max-time 3 http://${pods.backends[0].ip4}:8080/  (no sidecar: refused)`,
  );
  out("Ctrl-C stops everything.");
  await i.step(new Promise<never>(() => {}));
}

/** Run the namespace demo; resolves when it is done and everything is cleaned up. */
export async function runDemoTransparent(o: TransparentDemoOptions): Promise<void> {
  const why = transparentDemoUnavailable();
  if (why !== undefined) throw new WeftError("E_USAGE", why, { reason: "needs_root" });
  const { out } = o;
  const perPhase = o.answers ?? 20;
  const i = new Interruption(o.interrupted);
  let cluster: PodCluster | undefined;
  try {
    out("== 1. A network of pods (namespaces on a bridge in 198.18.0.0/15) and the CA pod");
    cluster = await createPodCluster({
      workloads: ["frontend", "backend"],
      tokenUses: 2,
      ...(o.dir === undefined ? {} : { dir: o.dir }),
      log: (l) => out(`   ${l}`),
    });
    i.check();
    out(`   join tokens for .../sa/frontend and .../sa/backend written to ${cluster.dir}/run/`);

    out("\n== 2. Pods: an unmodified app + init.sh (iptables, as root) + sidecar.sh (weft proxy, UID 1337)");
    const pods = await startPods(cluster, i, out);

    out(
      `\n== 3. The frontend app loops on  curl http://${pods.vip}:8080/  — iptables hands each connection to`,
    );
    out("   its sidecar, which picks a backend pod and carries the bytes over mutual TLS");
    out(`   ${perPhase} answers → ${await nextAnswers(pods.frontend, perPhase, i)}`);

    const [, b2] = pods.backends;
    out("\n== 4. backend-2 stops (nginx and its sidecar killed): its connections fail over, it is ejected");
    await i.act(b2.stop());
    out(`   ${perPhase} answers → ${await nextAnswers(pods.frontend, perPhase, i)}`);
    await showEndpoints(pods, i, out);

    out("\n== 5. backend-2 comes back (its sidecar renews with the certificate in its state dir)");
    await i.act(b2.start());
    await awaitReturn(pods, b2, i);
    out(`   ${perPhase} answers → ${await nextAnswers(pods.frontend, perPhase, i)}`);
    await showEndpoints(pods, i, out);

    out("\n== 6. Metrics (Prometheus text) on every sidecar's admin port, 15000, inside its pod");
    await showMetrics(pods, i, out);
    if (o.keepRunning) await keepRunning(cluster, pods, i, out);
    out("\nDone: stopping every process and deleting every namespace the demo made.");
  } catch (err) {
    // On Ctrl-C the terminal signals the pods' processes too, so a step may fail for that reason.
    if (!(err instanceof Interrupted) && !i.stopped) throw err;
    out("\nInterrupted: stopping every process and deleting every namespace the demo made.");
  } finally {
    await cluster?.destroy();
  }
}
