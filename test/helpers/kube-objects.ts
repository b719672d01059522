/**
 * Creating what a kubelet and controller manager would (namespaces, service accounts, pods, services,
 * endpoint slices) in the test API server.
 */
import type { DiscoveryCase } from "../fixtures/k8s-discovery.ts";
import type { KubeEnv } from "./kube-envtest.ts";

const PATHS: Record<string, (ns: string) => string> = {
  Pod: (ns) => `/api/v1/namespaces/${ns}/pods`,
  Service: (ns) => `/api/v1/namespaces/${ns}/services`,
  ServiceAccount: (ns) => `/api/v1/namespaces/${ns}/serviceaccounts`,
  EndpointSlice: (ns) => `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`,
};

/** The collection path of a namespaced object of `kind`. */
export function pathFor(kind: string, ns: string): string {
  const p = PATHS[kind];
  if (!p) throw new Error(`no path for kind ${kind}`);
  return p(ns);
}

export async function createNamespace(
  env: KubeEnv,
  ns: string,
  labels: Record<string, string> = {},
): Promise<void> {
  await env.admin.request({
    method: "POST",
    path: "/api/v1/namespaces",
    body: { apiVersion: "v1", kind: "Namespace", metadata: { name: ns, labels } },
  });
}

export async function createIn(env: KubeEnv, ns: string, obj: Record<string, unknown>): Promise<unknown> {
  return env.admin.request({ method: "POST", path: pathFor(obj.kind as string, ns), body: obj });
}

/** Namespace `ns` with the case's service accounts, pods, services and slices. */
export async function applyCase(env: KubeEnv, c: DiscoveryCase, ns: string): Promise<void> {
  await createNamespace(env, ns);
  for (const sa of new Set(["default", ...c.serviceAccounts])) {
    await createIn(env, ns, { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa } });
  }
  for (const o of [...c.pods, ...c.services, ...c.slices]) await createIn(env, ns, o);
}
