/**
 * The schema of weft.yaml, the sidecar's one config file: every key, its default and its unit. Durations
 * are written `10s`/`1h` (or milliseconds) and are milliseconds in the parsed `Config`; sizes are written
 * `64KiB` (or bytes) and are bytes. Unknown keys are errors, so a typo never silently does nothing.
 */
import * as z from "zod";
import { KEY_ALGORITHMS } from "../ca/key-policy.ts";
import { LOG_LEVELS } from "../core/log.ts";
import { parseAddrPort } from "../discovery/types.ts";
import { IDLE_RECLAIM_MODES } from "../runtime/idle-reclaim.ts";
import {
  duration,
  healthCheckSchema,
  ipAddress,
  outlierDetectionSchema,
  port,
  retrySchema,
  servicesSchema,
  spiffeIdString,
} from "./services-schema.ts";
import { parseSize } from "./units.ts";

const size = z.union([z.string(), z.number()]).transform((v, ctx) => {
  try {
    return parseSize(v);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message.replace(/^E_CONFIG: /, "") });
    return z.NEVER;
  }
});

/** A port to listen on; 0 asks the kernel for a free one (tests, or when the bound port is read from logs). */
const listenPort = z.number().int().min(0).max(65535);

/** `host:port` with IPv6 in brackets, e.g. `127.0.0.1:9001` or `[::1]:9001` (port 0 = any free port). */
const hostPort = z.string().transform((v, ctx) => {
  const at = parseAddrPort(v, { localhost: true });
  if (!at) {
    ctx.addIssue({ code: "custom", message: `"${v}" is not host:port (e.g. 127.0.0.1:9001 or [::1]:9001)` });
    return z.NEVER;
  }
  return at;
});

const listener = (defaultPort: number, defaultAddress: string) =>
  z.strictObject({
    enabled: z.boolean().default(true),
    address: ipAddress.default(defaultAddress),
    port: listenPort.default(defaultPort),
    /** Concurrent connections on this listener; further accepts are closed at once and counted. */
    maxConnections: z.number().int().min(1).default(10_000),
  });

const fileIdentity = z.strictObject({
  /** PEM chain: the workload leaf first, then intermediates. Watched and reloaded when it changes. */
  cert: z.string().min(1),
  key: z.string().min(1),
  /** PEM trust bundle: one or more roots. */
  bundle: z.string().min(1),
  /** The files are also re-read this often, in case a change notification was missed (0 = only on change). */
  reloadInterval: duration.default(5_000),
});

const caIdentity = z
  .strictObject({
    /** The CA server, e.g. https://ca.weft.local:15443. */
    url: z.string().url(),
    /** The trust bundle (from `meshca bundle`) that the CA server's certificate must chain to. */
    bundle: z.string().min(1),
    /** The SPIFFE ID to request. */
    id: spiffeIdString,
    token: z.string().min(1).optional(),
    /** A file holding the join token (preferred over `token`, which shows in process listings of configs). */
    tokenFile: z.string().min(1).optional(),
    keyAlgorithm: z.enum(KEY_ALGORITHMS).default("ecdsa-p256"),
    /** Where to keep the issued key and chain so a restart can renew instead of needing a new token. */
    stateDir: z.string().min(1).optional(),
    /**
     * Kubernetes join: the pod's projected service-account token (audience weft-ca), sent instead of a
     * join token and re-read each time (kubelet rotates it). What `weft inject` mounts.
     */
    kubernetesTokenFile: z.string().min(1).optional(),
    /**
     * How often the revoked serials are fetched from the CA with its bundle; a revoked peer is refused on
     * new handshakes and its pooled sessions end within this interval.
     */
    revocationRefresh: duration.default(30_000),
    /** Longest wait between attempts while the CA is unreachable (exponential backoff with jitter up to it). */
    retryMax: duration.default(30_000),
  })
  .refine(
    (c) =>
      c.token !== undefined ||
      c.tokenFile !== undefined ||
      c.stateDir !== undefined ||
      c.kubernetesTokenFile !== undefined,
    { message: "give token, tokenFile, kubernetesTokenFile, or a stateDir that already holds a certificate" },
  );

const policyRule = z.strictObject({
  /** A name for metrics (`rule` label) and `weft explain`; default `rules[<index>]`. */
  name: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,63}$/, { message: "must be 1-63 letters, digits, '_', '.', '-'" })
    .optional(),
  /** Local app ports this rule covers; omitted = every port. */
  ports: z.array(port).optional(),
  /** SPIFFE IDs or patterns (`*` matches within one path segment) allowed to connect. */
  allow: z.array(spiffeIdString).min(1),
});

const inboundPort = z.strictObject({
  port,
  /** Send the app a PROXY header naming the real client: none, v1 or v2. */
  proxyProtocol: z.enum(["none", "v1", "v2"]).default("none"),
});

export const configSchema = z.strictObject({
  /** The trust domain of this mesh, e.g. weft.local. */
  trustDomain: z.string().regex(/^[a-z0-9._-]+$/, { message: "must be a trust domain like weft.local" }),
  identity: z
    .strictObject({ files: fileIdentity.optional(), ca: caIdentity.optional() })
    .refine((i) => (i.files === undefined) !== (i.ca === undefined), {
      message: "give exactly one of files or ca",
    }),
  listeners: z
    .strictObject({
      outbound: listener(15001, "0.0.0.0").prefault({}),
      inbound: listener(15006, "0.0.0.0").prefault({}),
      tunnel: listener(15008, "0.0.0.0").prefault({}),
      admin: z
        .strictObject({ address: ipAddress.default("127.0.0.1"), port: listenPort.default(15000) })
        .prefault({}),
      /**
       * Prometheus `/metrics` on its own port (as Istio's 15020), so scrapers from outside the pod reach
       * the metrics while the admin port (config, certs, log level) stays on loopback.
       */
      metrics: z
        .strictObject({
          enabled: z.boolean().default(true),
          address: ipAddress.default("0.0.0.0"),
          port: listenPort.default(15020),
        })
        .prefault({}),
      /** Explicit listeners: `listen` → `service` (and port), for non-root, non-Linux and benchmark use. */
      explicit: z
        .array(
          z.strictObject({
            listen: hostPort,
            service: z.string().min(1),
            /** Which of the service's ports; default its first. */
            port: port.optional(),
            /** Concurrent connections on this listener. */
            maxConnections: z.number().int().min(1).default(10_000),
          }),
        )
        .default([]),
    })
    .prefault({}),
  /** Unknown outbound destinations: pass through in plaintext (allow-any) or refuse (registry-only). */
  outboundPolicy: z.enum(["allow-any", "registry-only"]).default("allow-any"),
  inbound: z
    .strictObject({
      /** Plaintext reaching app ports from outside the mesh: refuse (strict) or pass to the app (permissive). */
      mode: z.enum(["strict", "permissive"]).default("strict"),
      /** Where the local app listens. */
      appAddress: ipAddress.default("127.0.0.1"),
      ports: z.array(inboundPort).default([]),
    })
    .prefault({}),
  policy: z
    .strictObject({
      /** With no rule matching the port: allow any identity of the trust domain, or deny. */
      default: z.enum(["allow-trust-domain", "deny"]).default("allow-trust-domain"),
      rules: z.array(policyRule).default([]),
    })
    .prefault({}),
  timeouts: z
    .strictObject({
      /** TLS handshake on the tunnel port, from accept to a verified peer (Node's own default is 120 s). */
      handshake: duration.default(10_000),
      /** One upstream attempt: TCP connect plus mTLS handshake; also the connect to the local app. */
      connect: duration.default(5_000),
      /** From a verified handshake to a complete PROXY header on the tunnel. */
      proxyHeader: duration.default(5_000),
      /** No bytes either way for this long closes the connection (0 = never). */
      idle: duration.default(3_600_000),
      /** After one side half-closes, how long the other may keep sending before both are closed. */
      halfClose: duration.default(300_000),
      /** On SIGTERM: how long live connections may finish before they are closed. */
      drain: duration.default(20_000),
    })
    .prefault({}),
  tls: z
    .strictObject({
      /**
       * Resume TLS 1.3 sessions to sidecars this one already completed a full handshake with (the server
       * proved the expected identity then). Saves most of a handshake's CPU per new connection; off makes
       * every connection a full mutual-TLS handshake.
       */
      sessionResumption: z.boolean().default(true),
    })
    .prefault({}),
  upstream: z
    .strictObject({
      /**
       * How this sidecar carries app connections to other sidecars: `per-connection` opens one mutual-TLS
       * connection per app connection (PROXY v2 header, then the bytes); `pooled` keeps one mutual-TLS
       * HTTP/2 session per peer sidecar and opens one CONNECT stream per app connection, so a new app
       * connection costs no handshake. Tunnel listeners accept both (ALPN weft/3, weft/2, weft/1 or
       * h2). Pooled is the default: against HAProxy and stunnel it is the transport that meets the
       * new-connection and memory targets (docs/benchmarks.md); per-connection is for peers that do
       * not speak h2.
       */
      transport: z.enum(["per-connection", "pooled"]).default("pooled"),
      /** Pooled: app connections carried by one session before another is opened to the same peer. */
      maxStreamsPerSession: z.number().int().min(1).max(10_000).default(100),
      /** Pooled: a session with no streams for this long is closed. */
      sessionIdleTimeout: duration.default(300_000),
      /**
       * Pooled, on both ends of a session (the sessions this sidecar opens and those its tunnel port
       * accepts): a session that received nothing for `interval` gets an HTTP/2 PING; no ACK within
       * `timeout` closes it, its streams end as resets, and (client side) its endpoint is counted one
       * failure. Finds a peer that vanished without a FIN in at most 2 × interval + timeout. 0 = off.
       */
      sessionKeepalive: z
        .strictObject({ interval: duration.default(10_000), timeout: duration.default(5_000) })
        .refine((k) => k.interval === 0 || k.timeout > 0, {
          message: "timeout must be > 0 when interval is set",
          path: ["timeout"],
        })
        .prefault({}),
    })
    .prefault({}),
  limits: z
    .strictObject({
      /**
       * Client bytes held while the upstream connection is being made (and retried): the read/write
       * high-water mark of sockets accepted on outbound and explicit listeners. Beyond it TCP flow
       * control holds the client. Default 64 KiB.
       */
      earlyDataBytes: size.default(65_536),
      /**
       * On the tunnel port, per peer identity across all its sessions and tunnels (see
       * src/proxy/tunnel/peer-limits.ts): what is over a limit is refused, counted and logged. An
       * identity shared by many replicas shares these, so they are generous.
       */
      perPeer: z
        .strictObject({
          /** Tunnel connections (pooled streams and per-connection tunnels) open at once. */
          streams: z.number().int().min(1).default(5_000),
          /** Pooled sessions open at once. */
          sessions: z.number().int().min(1).default(256),
          /**
           * Streams still waiting for their PROXY header (each until `timeouts.proxyHeader`). A client
           * sidecar sends each header with its stream, so only a burst of new streams reaches this; past
           * it a stream is refused (the client retries it), and a peer that goes on (as many refusals
           * again within a second) gets all its pooled sessions closed.
           */
          pendingHeaders: z.number().int().min(1).default(256),
          /** Streams reset by the peer per second past which all its pooled sessions are closed. */
          resetsPerSecond: z.number().int().min(1).default(1_000),
        })
        .prefault({}),
    })
    .prefault({}),
  retries: retrySchema.prefault({}),
  outlierDetection: outlierDetectionSchema.prefault({}),
  healthCheck: healthCheckSchema.optional(),
  discovery: z
    .strictObject({
      /** A services file (YAML or JSON), watched and hot-reloaded. */
      file: z.string().min(1).optional(),
      dns: z
        .strictObject({
          /** DNS servers as host or host:port; default the system's resolvers. */
          servers: z.array(z.string().min(1)).optional(),
          minTtl: duration.default(5_000),
          maxTtl: duration.default(300_000),
          timeout: duration.default(2_000),
        })
        .prefault({}),
      /**
       * Services, EndpointSlices and Pods watched in a Kubernetes API server feed the table (present =
       * on). In a pod the service account's credentials are used; `kubeconfig` for development.
       */
      kubernetes: z
        .strictObject({
          /** A kubeconfig file; default `KUBECONFIG`, else in-cluster. */
          kubeconfig: z.string().min(1).optional(),
          /** The kubeconfig context (default its current-context). */
          context: z.string().min(1).optional(),
          /** Namespaces to watch; empty = all (needs cluster-wide list/watch). */
          namespaces: z.array(z.string().regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/)).default([]),
        })
        .optional(),
    })
    .prefault({}),
  services: servicesSchema.default([]),
  memory: z
    .strictObject({
      /**
       * What the sidecar gives back after 20 s without traffic (src/runtime/idle-reclaim.ts). `light`: one
       * full GC, malloc_trim(0) and V8's moderate memory-pressure signal (its page pool goes back; 85 MiB
       * after 1 GiB and 1,000 connections, no CPU cost measured in later bursts). `deep`: V8's last-resort
       * collection instead of the plain one, which also keeps a lower heap limit afterwards: 24-32 full
       * GCs and +20-27 % CPU per GiB in later bursts (docs/benchmarks.md). `off`: nothing is given back.
       */
      idleReclaim: z.enum(IDLE_RECLAIM_MODES).default("light"),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(LOG_LEVELS).default("info"),
      accessLog: z.boolean().default(true),
    })
    .prefault({}),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
