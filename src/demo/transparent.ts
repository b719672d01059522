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

interface EndpointView {
  key: string;
  state: string;
  timesEjected: number;
}

async function endpointsOf(pod: Pod): Promise<EndpointView[]> {
  const body = JSON.parse(await pod.admin("/endpoints")) as Array<{ endpoints: EndpointView[] }>;
  return body.flatMap((s) => s.endpoints);
}

/** Run the namespace demo; resolves when it is done and everything is cleaned up. */
export async function runDemoTransparent(o: TransparentDemoOptions): Promise<void> {
  const why = transparentDemoUnavailable();
  if (why !== undefined) throw new WeftError("E_USAGE", why, { reason: "needs_root" });
  const { out } = o;
  const perPhase = o.answers ?? 20;
  let stop = false;
  const interrupted = o.interrupted.then(() => {
    stop = true;
    throw new Interrupted("interrupted");
  });
  interrupted.catch(() => {});
  /** A read-only step (admin calls, waiting): abandoned at once on Ctrl-C, it fails quietly later. */
  const step = async <T>(p: Promise<T>): Promise<T> => {
    p.catch(() => {});
    if (stop) throw new Interrupted("interrupted");
    return Promise.race([p, interrupted]);
  };
  /**
   * A step that makes namespaces or processes: finished before Ctrl-C is honoured, so everything it
   * made is known to the cluster when it is destroyed.
   */
  const act = async <T>(p: Promise<T>): Promise<T> => {
    const v = await p;
    if (stop) throw new Interrupted("interrupted");
    return v;
  };

  let cluster: PodCluster | undefined;
  try {
    out("== 1. A network of pods (namespaces on a bridge in 198.18.0.0/15) and the CA pod");
    cluster = await createPodCluster({
      workloads: ["frontend", "backend"],
      tokenUses: 2,
      ...(o.dir === undefined ? {} : { dir: o.dir }),
      log: (l) => out(`   ${l}`),
    });
    if (stop) throw new Interrupted("interrupted");
    out(`   join tokens for .../sa/frontend and .../sa/backend written to ${cluster.dir}/run/`);
    const c = cluster;

    out("\n== 2. Pods: an unmodified app + init.sh (iptables, as root) + sidecar.sh (weft proxy, UID 1337)");
    const backends: Pod[] = [];
    for (const name of ["backend-1", "backend-2"]) {
      backends.push(await act(c.addPod({ name, sa: "backend", app: (dir) => apps.nginx(dir, 8080, name) })));
    }
    const vip = c.vip();
    await step(c.writeServices([backendService(vip, backends, "4s")]));
    out(
      `   services file ${c.servicesFile}: backend VIP ${vip}:8080 → ${backends.map((b) => b.ip4).join(", ")}`,
    );
    const frontend = await act(
      c.addPod({ name: "frontend", sa: "frontend", app: () => apps.curlLoop(`http://${vip}:8080/`, 0.1) }),
    );
    out("   each sidecar fetched its certificate from the CA pod with its join token (admin /certs):");
    for (const pod of [frontend, ...backends]) {
      const certs = JSON.parse(await step(pod.admin("/certs"))) as { spiffeId?: string; serial?: string };
      out(
        `   ${pod.name.padEnd(10)} ${String(certs.spiffeId)}  serial ${String(certs.serial ?? "").slice(0, 12)}…  netns ${pod.ns}`,
      );
    }

    /** The next `n` answers the frontend app prints, tallied by who answered. */
    const nextAnswers = async (n: number): Promise<string> => {
      const app = frontend.app!;
      const from = app.output().length;
      const lines = () => app.output().slice(from).split("\n").slice(0, -1);
      await step(
        pollUntil(`${n} answers from the frontend app`, async () => lines().length >= n, 60_000, app.exited),
      );
      const tally = new Map<string, number>();
      for (const l of lines().slice(0, n)) {
        const who = /^backend-\d$/.test(l.trim()) ? l.trim() : "failed";
        tally.set(who, (tally.get(who) ?? 0) + 1);
      }
      if (!tally.has("failed")) tally.set("failed", 0);
      return [...tally]
        .sort(([a], [b]) => (a === "failed" ? 1 : b === "failed" ? -1 : a.localeCompare(b)))
        .map(([k, v]) => `${k}: ${v}`)
        .join(", ");
    };
    const showEndpoints = async () => {
      for (const e of await step(endpointsOf(frontend))) {
        const name = backends.find((b) => e.key.startsWith(`${b.ip4}:`))?.name ?? "";
        out(`   endpoint ${e.key.padEnd(20)} ${name.padEnd(10)} ${e.state} (ejected ${e.timesEjected}×)`);
      }
    };

    out(`\n== 3. The frontend app loops on  curl http://${vip}:8080/  — iptables hands each connection to`);
    out("   its sidecar, which picks a backend pod and carries the bytes over mutual TLS");
    out(`   ${perPhase} answers → ${await nextAnswers(perPhase)}`);

    const [, b2] = backends as [Pod, Pod];
    out("\n== 4. backend-2 stops (nginx and its sidecar killed): its connections fail over, it is ejected");
    await act(b2.stop());
    out(`   ${perPhase} answers → ${await nextAnswers(perPhase)}`);
    await showEndpoints();

    out("\n== 5. backend-2 comes back (its sidecar renews with the certificate in its state dir)");
    await act(b2.start());
    const b2Key = `${b2.ip4}:8080`;
    await step(
      pollUntil(
        "backend-2 to return from ejection",
        async () => {
          const s = (await endpointsOf(frontend)).find((e) => e.key === b2Key)?.state;
          return s === "healthy" || s === "probation";
        },
        60_000,
      ),
    );
    out(`   ${perPhase} answers → ${await nextAnswers(perPhase)}`);
    await showEndpoints();

    out("\n== 6. Metrics (Prometheus text) on every sidecar's admin port, 15000, inside its pod");
    const b1Metrics = (await step(backends[0]!.admin("/metrics"))).split("\n");
    for (const line of b1Metrics.filter((l) =>
      /^weft_tcp_connections_closed_total\{direction="inbound"/.test(l),
    ))
      out(`   backend-1: ${line}`);
    const fMetrics = (await step(frontend.admin("/metrics"))).split("\n");
    for (const line of fMetrics.filter((l) =>
      /^weft_(outlier_ejections_total|upstream_connect_retries_total)\{/.test(l),
    ))
      out(`   frontend:  ${line}`);
    out(`   ip netns exec ${frontend.ns} curl -s 127.0.0.1:15000/metrics   (also /ready /certs /endpoints)`);
    if (o.keepRunning) {
      out(`\nThe mesh keeps running: try  ip netns exec ${frontend.ns} curl http://${vip}:8080/`);
      out(
        `and  ip netns exec ${c.caPod.host.ns} curl -s --max-time 3 http://${backends[0]!.ip4}:8080/  (no sidecar: refused)`,
      );
      out("Ctrl-C stops everything.");
      await step(new Promise<never>(() => {}));
    }
    out("\nDone: stopping every process and deleting every namespace the demo made.");
  } catch (err) {
    // On Ctrl-C the terminal signals the pods' processes too, so a step may fail for that reason.
    if (!(err instanceof Interrupted) && !stop) throw err;
    out("\nInterrupted: stopping every process and deleting every namespace the demo made.");
  } finally {
    await cluster?.destroy();
  }
}
