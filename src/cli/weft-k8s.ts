/**
 * The Kubernetes verbs of `weft`: `inject` and `uninject` (manifests in, manifests out, on stdout; skips
 * and warnings on stderr) and `injector` (the same injection as a mutating admission webhook).
 */
import { readFile } from "node:fs/promises";
import { type Command, Option } from "commander";
import { errorMessage, WeftError } from "../core/errors.ts";
import { parseAddrPort } from "../discovery/types.ts";
// Only types at the top: the modules load when a verb runs (`weft --help` stays quick).
import type { InjectOptions } from "../k8s/inject.ts";
import type { WeftDeps } from "./weft.ts";

/** What these verbs use of the weft CLI's injected dependencies. */
export type KubeCliDeps = Pick<
  WeftDeps,
  "stdout" | "stderr" | "env" | "clock" | "waitForShutdown" | "readStdin" | "makeLogger" | "onInjector"
>;

const DEFAULTS = {
  image: "ghcr.io/weft/weft:0.1.0",
  caUrl: "https://weft-ca.weft-system.svc:15443",
  trustDomain: "weft.local",
};

interface InjectFlags {
  image: string;
  caUrl: string;
  trustDomain: string;
  caBundle: string;
  imagePullPolicy?: string;
}

async function readInput(file: string, deps: KubeCliDeps): Promise<string> {
  try {
    if (file === "-") return deps.readStdin ? await deps.readStdin() : await readFile("/dev/stdin", "utf8");
    return await readFile(file, "utf8");
  } catch (err) {
    throw new WeftError(
      "E_IO",
      `cannot read ${file === "-" ? "standard input" : file}: ${errorMessage(err)}`,
    );
  }
}

async function injectOptions(f: InjectFlags): Promise<InjectOptions> {
  let caBundlePem: string;
  try {
    caBundlePem = await readFile(f.caBundle, "utf8");
  } catch (err) {
    throw new WeftError("E_IO", `--ca-bundle ${f.caBundle} cannot be read: ${errorMessage(err)}`);
  }
  if (!caBundlePem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new WeftError(
      "E_USAGE",
      `--ca-bundle ${f.caBundle} holds no PEM certificate (meshca bundle writes one)`,
    );
  }
  return {
    image: f.image,
    caUrl: f.caUrl,
    trustDomain: f.trustDomain,
    caBundlePem,
    ...(f.imagePullPolicy ? { imagePullPolicy: f.imagePullPolicy } : {}),
  };
}

function injectFlags(c: Command): Command {
  return c
    .requiredOption("--ca-bundle <file>", "the mesh's trust bundle (meshca bundle)")
    .option("--image <image>", "the Weft image", DEFAULTS.image)
    .option("--ca-url <url>", "the CA server as pods reach it", DEFAULTS.caUrl)
    .option("--trust-domain <td>", "the mesh's trust domain", DEFAULTS.trustDomain)
    .addOption(
      new Option("--image-pull-policy <policy>", "imagePullPolicy of the added containers").choices([
        "Always",
        "IfNotPresent",
        "Never",
      ]),
    );
}

export function registerKubernetesCommands(program: Command, deps: KubeCliDeps, exitCodes: string): void {
  const err = (s: string) => deps.stderr.write(`${s}\n`);
  injectFlags(
    program
      .command("inject")
      .description(
        "add Weft's init container and native sidecar to every pod template in Kubernetes manifests",
      )
      .requiredOption(
        "-f, --filename <file>",
        "manifests (YAML, multi-document, List); - for standard input",
      ),
  )
    .addHelpText(
      "after",
      `
Examples:
  weft inject -f deploy.yaml --ca-bundle bundle.pem | kubectl apply -f -
  kubectl get deploy web -o yaml | weft inject -f - --ca-bundle bundle.pem --image registry.local/weft:0.1.0
Needs Kubernetes >= 1.29 (native sidecars). Injecting twice gives the same result; weft uninject reverses it.
${exitCodes}`,
    )
    .action(async (o: InjectFlags & { filename: string }) => {
      const options = await injectOptions(o);
      const { injectManifests } = await import("../k8s/inject.ts");
      const out = injectManifests(await readInput(o.filename, deps), options);
      deps.stdout.write(out.text);
      for (const s of out.skipped) err(`weft inject: skipped ${s}`);
      for (const w of out.warnings) err(`weft inject: warning: ${w}`);
    });

  program
    .command("uninject")
    .description("remove what weft inject added, leaving the manifests as they were")
    .requiredOption("-f, --filename <file>", "manifests; - for standard input")
    .addHelpText("after", `\nExamples:\n  weft uninject -f injected.yaml > plain.yaml\n${exitCodes}`)
    .action(async (o: { filename: string }) => {
      const { uninjectManifests } = await import("../k8s/inject.ts");
      deps.stdout.write(uninjectManifests(await readInput(o.filename, deps)).text);
    });

  injectFlags(
    program
      .command("injector")
      .description("run the injection as a mutating admission webhook (AdmissionReview v1, fail-open)")
      .option("--listen <host:port>", "address to listen on", "0.0.0.0:9443")
      .requiredOption("--cert <file>", "serving certificate (PEM chain), reloaded when it changes")
      .requiredOption("--key <file>", "serving key (PEM), reloaded with the certificate"),
  )
    .addHelpText(
      "after",
      `
Examples:
  weft injector --cert /tls/tls.crt --key /tls/tls.key --ca-bundle /bundle/bundle.pem
${exitCodes}`,
    )
    .action(async (o: InjectFlags & { listen: string; cert: string; key: string }) => {
      const at = parseAddrPort(o.listen);
      if (!at) throw new WeftError("E_USAGE", `--listen "${o.listen}" is not host:port`);
      const { createLogger } = await import("../core/log.ts");
      const { startInjector } = await import("../k8s/webhook.ts");
      const logger = deps.makeLogger?.("info") ?? createLogger({ name: "weft-injector" });
      const injector = await startInjector({
        host: at.address,
        port: at.port,
        certFile: o.cert,
        keyFile: o.key,
        inject: await injectOptions(o),
        logger,
        clock: deps.clock,
      }).catch((e: unknown) => {
        throw new WeftError("E_IO", `the injector cannot start: ${errorMessage(e)}`);
      });
      deps.onInjector?.(injector.url);
      await deps.waitForShutdown();
      await injector.close();
    });
}
