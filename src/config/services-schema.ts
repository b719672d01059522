/**
 * The schema of a service catalogue: the `services:` list of weft.yaml and the discovery file that
 * docker-compose mounts. One definition serves both, so a service means the same thing wherever it is
 * written. Durations are written as `30s`/`5m` (or milliseconds) and come out as milliseconds.
 */
import { isIP } from "node:net";
import * as z from "zod";
import { parseDuration } from "./units.ts";

export const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  try {
    return parseDuration(v);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message.replace(/^E_CONFIG: /, "") });
    return z.NEVER;
  }
});

export const port = z.number().int().min(1).max(65535);

export const ipAddress = z
  .string()
  .refine((v) => isIP(v) !== 0, { message: "must be an IPv4 or IPv6 address" });

export const spiffeIdString = z.string().regex(/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._*-]+)*$/, {
  message: "must be a SPIFFE ID like spiffe://weft.local/ns/default/sa/backend",
});

export const balancerKind = z.enum([
  "round-robin",
  "least-connections",
  "peak-ewma",
  "random",
  "source-hash",
]);

export const DEFAULT_TUNNEL_PORT = 15008;

export const outlierDetectionSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** Eject after this many consecutive local-origin failures. */
  consecutiveFailures: z.number().int().min(1).default(5),
  baseEjectionTime: duration.default(30_000),
  maxEjectionTime: duration.default(300_000),
  /** At most this share of a service's endpoints ejected at once (one is always allowed). */
  maxEjectionPercent: z.number().min(0).max(100).default(10),
  /**
   * A passing active health check ends an ejection at once (Envoy's
   * successful_active_health_check_uneject_host); false = an ejected endpoint waits out its time.
   */
  successfulActiveHealthCheckUnejectHost: z.boolean().default(true),
});

export const retrySchema = z.strictObject({
  /** Connection attempts in all, including the first. */
  attempts: z.number().int().min(1).max(10).default(3),
  /** Deadline for all attempts together. */
  deadline: duration.default(10_000),
});

export const healthCheckSchema = z.strictObject({
  interval: duration.default(10_000),
  timeout: duration.default(2_000),
  healthyThreshold: z.number().int().min(1).default(2),
  unhealthyThreshold: z.number().int().min(1).default(3),
});

export const endpointSchema = z.strictObject({
  address: ipAddress,
  /** The application port on the endpoint; defaults to the service port's target port. */
  port: port.optional(),
  tunnelPort: port.default(DEFAULT_TUNNEL_PORT),
  weight: z.number().int().min(1).max(10_000).default(1),
  identity: spiffeIdString.optional(),
  /** False: the endpoint has no sidecar and is reached in plaintext. */
  sidecar: z.boolean().default(true),
});

export const dnsEndpointsSchema = z.strictObject({
  /** A name to resolve: A/AAAA records give addresses, SRV records give address and port. */
  name: z.string().min(1),
  type: z.enum(["A", "AAAA", "A+AAAA", "SRV"]).default("A+AAAA"),
  tunnelPort: port.default(DEFAULT_TUNNEL_PORT),
  sidecar: z.boolean().default(true),
  minTtl: duration.default(5_000),
  maxTtl: duration.default(300_000),
});

export const servicePortSchema = z.union([
  port.transform((p) => ({ port: p, targetPort: p })),
  z
    .strictObject({ port, targetPort: port.optional(), name: z.string().optional() })
    .transform((p) => ({ ...p, targetPort: p.targetPort ?? p.port })),
]);

export const serviceSchema = z
  .strictObject({
    name: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/, { message: "must be a DNS label (a-z, 0-9, -)" }),
    namespace: z.string().min(1).default("default"),
    /** The SPIFFE ID every endpoint's sidecar must present (default spiffe://<td>/ns/<namespace>/sa/<name>). */
    identity: spiffeIdString.optional(),
    ports: z.array(servicePortSchema).min(1),
    vips: z.array(ipAddress).default([]),
    balancer: balancerKind.default("round-robin"),
    endpoints: z.array(endpointSchema).optional(),
    dns: dnsEndpointsSchema.optional(),
    retries: retrySchema.optional(),
    outlierDetection: outlierDetectionSchema.optional(),
    healthCheck: healthCheckSchema.optional(),
  })
  .refine((s) => (s.endpoints === undefined) !== (s.dns === undefined), {
    message: "give exactly one of endpoints or dns",
  })
  .superRefine((s, ctx) => {
    // Two endpoints that end up identical would silently be one: name both instead.
    const defaultPort = s.ports[0]?.targetPort;
    const seen = new Map<string, number>();
    s.endpoints?.forEach((e, i) => {
      const port = e.port ?? defaultPort;
      const address = sameAddress(e.address);
      const id = `${address}|${port}|${e.sidecar ? e.tunnelPort : "none"}`;
      const first = seen.get(id);
      if (first === undefined) {
        seen.set(id, i);
        return;
      }
      const where = `${address}:${port}${e.sidecar ? ` via ${e.tunnelPort}` : ""}`;
      ctx.addIssue({
        code: "custom",
        path: ["endpoints", i],
        message: `same address, port and tunnelPort as endpoints[${first}] (${where}); give each endpoint its own port or tunnelPort`,
      });
    });
  });

/** One spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 lower-case and fully compressed. */
function sameAddress(address: string): string {
  const a = address.toLowerCase();
  if (a.startsWith("::ffff:") && a.includes(".")) return a.slice(7);
  if (!a.includes(":")) return a;
  try {
    return new URL(`http://[${a}]/`).hostname.slice(1, -1);
  } catch {
    return a;
  }
}

export const servicesSchema = z.array(serviceSchema).superRefine((services, ctx) => {
  const seen = new Set<string>();
  services.forEach((s, i) => {
    if (seen.has(s.name))
      ctx.addIssue({ code: "custom", path: [i, "name"], message: `duplicate service ${s.name}` });
    seen.add(s.name);
  });
});

/** A discovery file: `{ services: [...] }` in YAML or JSON. */
export const serviceFileSchema = z.strictObject({ services: servicesSchema });

export type ServiceConfig = z.output<typeof serviceSchema>;
export type EndpointConfig = z.output<typeof endpointSchema>;
export type OutlierDetectionConfig = z.output<typeof outlierDetectionSchema>;
export type RetryConfig = z.output<typeof retrySchema>;
export type HealthCheckConfig = z.output<typeof healthCheckSchema>;
export type DnsEndpointsConfig = z.output<typeof dnsEndpointsSchema>;
