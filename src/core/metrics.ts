/**
 * Every metric Weft exports, declared once: names, help, label sets. One `WeftMetrics` per process
 * (its own prom-client Registry, never the global one). Hot counters (bytes) are plain numbers that the
 * data path adds to, published at scrape time through `collect()`, because a labelled `inc()` per chunk
 * costs too much. Labels are bounded: direction, service, peer identity, endpoint, reason; never a
 * connection or a client port.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { type Clock, systemClock } from "./clock.ts";
import { EventLoopLag, type LagSummary } from "./event-loop-lag.ts";

/** How often the event-loop lag is sampled (`nodejs_eventloop_lag_*`), ms: two wakeups a second. */
export const EVENT_LOOP_MONITORING_MS = 500;

export type Direction = "outbound" | "inbound" | "explicit" | "passthrough" | "inbound_plaintext";

interface ByteCell {
  labels: { direction: string; service: string; peer_identity: string };
  sent: number;
  received: number;
}

export class WeftMetrics {
  readonly registry = new Registry();
  private readonly byteCells = new Map<string, ByteCell>();

  readonly connectionsOpened = new Counter({
    name: "weft_tcp_connections_opened_total",
    help: "TCP connections accepted by a Weft listener; peer_identity as on weft_tcp_connections_closed_total (outbound: the identity the service must prove).",
    labelNames: ["direction", "service", "peer_identity"] as const,
    registers: [this.registry],
  });
  readonly connectionsClosed = new Counter({
    name: "weft_tcp_connections_closed_total",
    help: "Connections finished, by the reason they ended (closed = normal end).",
    labelNames: ["direction", "service", "peer_identity", "reason"] as const,
    registers: [this.registry],
  });
  readonly connectionsActive = new Gauge({
    name: "weft_tcp_connections_active",
    help: "Connections open now.",
    labelNames: ["direction", "service"] as const,
    registers: [this.registry],
  });
  readonly connectionDuration = new Histogram({
    name: "weft_tcp_connection_duration_seconds",
    help: "Lifetime of finished connections.",
    labelNames: ["direction", "service"] as const,
    buckets: [0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600],
    registers: [this.registry],
  });
  readonly sentBytes: Counter<"direction" | "service" | "peer_identity">;
  readonly receivedBytes: Counter<"direction" | "service" | "peer_identity">;
  readonly tlsHandshakeDuration = new Histogram({
    name: "weft_tls_handshake_duration_seconds",
    help: "Duration of completed mTLS handshakes; resumed is true for a resumed TLS 1.3 session.",
    labelNames: ["direction", "resumed"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly tlsHandshakeFailures = new Counter({
    name: "weft_tls_handshake_failures_total",
    help: "mTLS handshakes or peer verifications that failed, by reason.",
    labelNames: ["direction", "reason"] as const,
    registers: [this.registry],
  });
  readonly upstreamConnectFailures = new Counter({
    name: "weft_upstream_connect_failures_total",
    help: "Failed connection attempts to an endpoint (connect, handshake or identity), by reason.",
    labelNames: ["service", "endpoint", "reason"] as const,
    registers: [this.registry],
  });
  readonly upstreamConnectRetries = new Counter({
    name: "weft_upstream_connect_retries_total",
    help: "Connection attempts retried on another endpoint after a failure.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly upstreamConnectDuration = new Histogram({
    name: "weft_upstream_connect_duration_seconds",
    help: "Time to connect (and complete mTLS) to an endpoint.",
    labelNames: ["service"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly upstreamPooledSessions = new Gauge({
    name: "weft_upstream_pooled_sessions",
    help: "Pooled mTLS HTTP/2 tunnel sessions open now to peer sidecars (upstream.transport: pooled).",
    registers: [this.registry],
  });
  readonly upstreamPooledSessionsOpened = new Counter({
    name: "weft_upstream_pooled_sessions_opened_total",
    help: "Pooled tunnel sessions opened (each one mutual-TLS handshake).",
    registers: [this.registry],
  });
  readonly tunnelPooledSessions = new Gauge({
    name: "weft_tunnel_pooled_sessions",
    help: "Pooled tunnel sessions accepted from peer sidecars and open now.",
    registers: [this.registry],
  });
  readonly pooledSessionKeepaliveTimeouts = new Counter({
    name: "weft_pooled_session_keepalive_timeouts_total",
    help: "Pooled tunnel sessions closed because the peer did not acknowledge an HTTP/2 PING in time (outbound: sessions this sidecar opened; inbound: accepted on the tunnel port).",
    labelNames: ["direction"] as const,
    registers: [this.registry],
  });
  readonly pooledSessionsEnded = new Counter({
    name: "weft_pooled_sessions_ended_total",
    help: "Pooled tunnel sessions ended (GOAWAY; running streams finish) because the peer's certificate expired (peer_cert_expired), was revoked at the CA (peer_revoked) or no longer verifies against the trust bundle (peer_untrusted), by direction (inbound: accepted on the tunnel port; outbound: opened by this sidecar).",
    labelNames: ["direction", "reason"] as const,
    registers: [this.registry],
  });
  readonly endpointActive = new Gauge({
    name: "weft_endpoint_active_connections",
    help: "Connections open now to each endpoint.",
    labelNames: ["service", "endpoint"] as const,
    registers: [this.registry],
  });
  readonly outlierEjections = new Counter({
    name: "weft_outlier_ejections_total",
    help: "Endpoints ejected by outlier detection.",
    labelNames: ["service", "endpoint"] as const,
    registers: [this.registry],
  });
  readonly endpointEjected = new Gauge({
    name: "weft_endpoint_ejected",
    help: "1 while an endpoint is ejected by outlier detection or failing health checks.",
    labelNames: ["service", "endpoint"] as const,
    registers: [this.registry],
  });
  readonly healthCheckFailures = new Counter({
    name: "weft_health_check_failures_total",
    help: "Active TCP health checks that failed.",
    labelNames: ["service", "endpoint"] as const,
    registers: [this.registry],
  });
  readonly policyDenied = new Counter({
    name: "weft_policy_denied_total",
    help: "Connections refused by authorization policy, by the rule(s) that covered the port (`default` when none did).",
    labelNames: ["peer_identity", "port", "rule"] as const,
    registers: [this.registry],
  });
  readonly policyAllowed = new Counter({
    name: "weft_policy_allowed_total",
    help: "Connections allowed by authorization policy, by the rule that allowed them (`default` when no rule covers the port).",
    labelNames: ["peer_identity", "port", "rule"] as const,
    registers: [this.registry],
  });
  readonly peerLimitHits = new Counter({
    name: "weft_peer_limit_hits_total",
    help: "Times a per-peer-identity limit of the tunnel port (limits.perPeer) refused something or, for reset_rate, closed the peer's pooled sessions; the peer is in the warn log line.",
    labelNames: ["limit"] as const,
    registers: [this.registry],
  });
  readonly inboundRefused = new Counter({
    name: "weft_inbound_refused_total",
    help: "Connections from peers (direction inbound) or permissive plaintext (inbound_plaintext) refused because they asked for a destination the sidecar never dials on anyone's behalf: forbidden_port (one of the sidecar's own listeners), port_not_allowed (not in inbound.ports), destination_not_local (not an address of this pod), loopback_destination (transparent mode).",
    labelNames: ["direction", "reason"] as const,
    registers: [this.registry],
  });
  readonly inboundPlaintext = new Counter({
    name: "weft_inbound_plaintext_total",
    help: "Plaintext connections captured on the inbound port, by mode and decision.",
    labelNames: ["mode", "decision"] as const,
    registers: [this.registry],
  });
  readonly certExpiry = new Gauge({
    name: "weft_cert_expiry_timestamp_seconds",
    help: "Expiry (notAfter) of the workload certificate in use, as a Unix timestamp.",
    labelNames: ["identity"] as const,
    registers: [this.registry],
  });
  readonly certRenewalFailures = new Counter({
    name: "weft_cert_renewal_failures_total",
    help: "Failed attempts to obtain or renew the workload certificate.",
    registers: [this.registry],
  });
  readonly discoveryUpdates = new Counter({
    name: "weft_discovery_updates_total",
    help: "Service table updates applied, by source.",
    labelNames: ["source"] as const,
    registers: [this.registry],
  });
  readonly discoveryErrors = new Counter({
    name: "weft_discovery_errors_total",
    help: "Discovery failures (file refused, DNS lookup failed); the last good endpoints stay.",
    labelNames: ["source", "reason"] as const,
    registers: [this.registry],
  });
  readonly kubeWatchRestarts = new Counter({
    name: "weft_k8s_watch_restarts_total",
    help: "Kubernetes watches started again after they ended, by resource and why (closed = the server ended it, error = it failed).",
    labelNames: ["resource", "reason"] as const,
    registers: [this.registry],
  });
  readonly kubeRelists = new Counter({
    name: "weft_k8s_relists_total",
    help: "Full re-lists of a Kubernetes resource, by why (initial, expired = 410 Gone, error).",
    labelNames: ["resource", "reason"] as const,
    registers: [this.registry],
  });
  readonly kubeWatchEvents = new Counter({
    name: "weft_k8s_watch_events_total",
    help: "Kubernetes watch events applied, by resource and type (ADDED, MODIFIED, DELETED, BOOKMARK).",
    labelNames: ["resource", "type"] as const,
    registers: [this.registry],
  });
  readonly kubeSynced = new Gauge({
    name: "weft_k8s_synced",
    help: "1 once a Kubernetes resource was listed and is being watched.",
    labelNames: ["resource"] as const,
    registers: [this.registry],
  });
  readonly info = new Gauge({
    name: "weft_info",
    help: "1, labelled with this sidecar's own SPIFFE identity (local_identity) and trust domain: join it on instance to label any series with the local identity.",
    labelNames: ["local_identity", "trust_domain"] as const,
    registers: [this.registry],
  });
  readonly logLinesDropped = new Counter({
    name: "weft_log_lines_dropped_total",
    help: "Log lines dropped because the log reader (stderr) did not keep up and the bounded buffer was full.",
    registers: [this.registry],
  });
  readonly configReloads = new Counter({
    name: "weft_config_reloads_total",
    help: "weft.yaml reloads (file change, SIGHUP), by result: applied, unchanged, refused (invalid; the last good config stays).",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly configRestartPending = new Gauge({
    name: "weft_config_restart_pending",
    help: "1 when weft.yaml holds changes that only a restart applies (listener addresses, identity, ...).",
    registers: [this.registry],
  });
  readonly ready = new Gauge({
    name: "weft_ready",
    help: "1 when the sidecar has a certificate and its listeners are up and not draining.",
    registers: [this.registry],
  });

  private eventLoopLag: EventLoopLag | undefined;

  /** `processMetrics`: the process_* and nodejs_* series (one registry per process should have them). */
  constructor(options: { processMetrics?: boolean; clock?: Clock } = {}) {
    const cells = this.byteCells;
    this.sentBytes = new Counter({
      name: "weft_tcp_sent_bytes_total",
      help: "Bytes sent to the downstream client (towards whoever opened the connection).",
      labelNames: ["direction", "service", "peer_identity"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of cells.values()) this.inc(c.labels, c.sent);
      },
    });
    this.receivedBytes = new Counter({
      name: "weft_tcp_received_bytes_total",
      help: "Bytes received from the downstream client.",
      labelNames: ["direction", "service", "peer_identity"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of cells.values()) this.inc(c.labels, c.received);
      },
    });
    if (options.processMetrics) this.registerProcessMetrics(options.clock ?? systemClock);
  }

  /**
   * The standard names (process_cpu_seconds_total, nodejs_heap_size_used_bytes, ...), so stock Node.js
   * dashboards and alerts work. The event-loop lag series are replaced: see event-loop-lag.ts.
   */
  private registerProcessMetrics(clock: Clock): void {
    collectDefaultMetrics({
      register: this.registry,
      eventLoopMonitoringPrecision: EVENT_LOOP_MONITORING_MS,
    });
    for (const name of this.registry.getMetricsAsArray().map((m) => m.name)) {
      if (name.startsWith("nodejs_eventloop_lag")) this.registry.removeSingleMetric(name);
    }
    const lag = new EventLoopLag(clock, EVENT_LOOP_MONITORING_MS);
    this.eventLoopLag = lag;
    lag.start();
    let summary: LagSummary | undefined;
    const take = (): LagSummary => {
      summary ??= lag.take();
      return summary;
    };
    const gauge = (name: string, help: string, pick: (s: LagSummary) => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(pick(take()) / 1000);
        },
      });
    // One summary per scrape: the first gauge collected takes the samples, the last clears the cache.
    gauge(
      "nodejs_eventloop_lag_seconds",
      "How late the event loop ran a timer, last sample (seconds).",
      () => lag.latest,
    );
    gauge("nodejs_eventloop_lag_min_seconds", "Smallest event-loop lag since the last scrape.", (s) => s.min);
    gauge("nodejs_eventloop_lag_max_seconds", "Largest event-loop lag since the last scrape.", (s) => s.max);
    gauge("nodejs_eventloop_lag_mean_seconds", "Mean event-loop lag since the last scrape.", (s) => s.mean);
    gauge("nodejs_eventloop_lag_p50_seconds", "Median event-loop lag since the last scrape.", (s) => s.p50);
    gauge(
      "nodejs_eventloop_lag_p90_seconds",
      "90th percentile event-loop lag since the last scrape.",
      (s) => s.p90,
    );
    new Gauge({
      name: "nodejs_eventloop_lag_p99_seconds",
      help: "99th percentile event-loop lag since the last scrape.",
      registers: [this.registry],
      collect() {
        this.set(take().p99 / 1000);
        summary = undefined;
      },
    });
  }

  /** Stop the event-loop lag timer (a sidecar's `stop()`). */
  close(): void {
    this.eventLoopLag?.stop();
  }

  /** A plain-number byte cell for one label set; the data path adds to `sent`/`received` directly. */
  bytes(direction: string, service: string, peerIdentity: string): ByteCell {
    const key = `${direction}\u0000${service}\u0000${peerIdentity}`;
    let cell = this.byteCells.get(key);
    if (!cell) {
      cell = { labels: { direction, service, peer_identity: peerIdentity }, sent: 0, received: 0 };
      this.byteCells.set(key, cell);
    }
    return cell;
  }

  /** Drop the series of an endpoint that discovery no longer lists. */
  forgetEndpoint(service: string, endpoint: string): void {
    const labels = { service, endpoint };
    for (const m of [
      this.endpointActive,
      this.endpointEjected,
      this.outlierEjections,
      this.healthCheckFailures,
    ]) {
      m.remove(labels);
    }
  }

  async render(): Promise<string> {
    return this.registry.metrics();
  }

  /** The sum of the series matching `labels` (all when empty), for tests and `/endpoints`; undefined when none. */
  async value(name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
    const metric = this.registry.getSingleMetric(name);
    if (!metric) return undefined;
    const data = await metric.get();
    const matches = data.values.filter(
      (v) =>
        !(v as { metricName?: string }).metricName?.endsWith("_bucket") &&
        Object.entries(labels).every(
          ([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want,
        ),
    );
    if (matches.length === 0) return undefined;
    return matches.reduce((sum, v) => sum + v.value, 0);
  }
}

/**
 * The CA server's metrics (`meshca serve`, GET /metrics): issuance, refusals by reason, join-token
 * attempts by outcome, connections refused by the per-address and global caps, revocations, and the
 * expiry of the CA's own certificates. Its own Registry, like WeftMetrics. Labels are bounded: reasons
 * and outcomes are fixed sets, `cert` is root/intermediate/server and `serial` names only the CA's own.
 */
export class CaMetrics {
  readonly registry = new Registry();

  readonly issued = new Counter({
    name: "meshca_certificates_issued_total",
    help: "Workload certificates issued, by how the caller proved itself (token = first certificate, renew = renewal).",
    labelNames: ["via"] as const,
    registers: [this.registry],
  });
  readonly refused = new Counter({
    name: "meshca_requests_refused_total",
    help: "Requests refused, by HTTP status and reason (bad token, weak key, revoked, rate limited, ...).",
    labelNames: ["status", "reason"] as const,
    registers: [this.registry],
  });
  readonly tokenAttempts = new Counter({
    name: "meshca_token_attempts_total",
    help: "Join-token requests to /v1/sign, by outcome (ok, or the refusal's reason; rate_limited when refused unread).",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly connectionsRefused = new Counter({
    name: "meshca_connections_refused_total",
    help: "TCP connections closed at accept: per_address_limit (one source holds too many) or global_limit.",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly connectionsActive = new Gauge({
    name: "meshca_connections_active",
    help: "Connections open to the CA server now.",
    registers: [this.registry],
  });
  readonly revokedSerials = new Gauge({
    name: "meshca_revoked_serials",
    help: "Revoked certificates not yet expired (the list served with the bundle).",
    registers: [this.registry],
  });
  readonly caReloads = new Counter({
    name: "meshca_ca_reloads_total",
    help: "Times the signing CA was reloaded from its directory (after meshca rotate), by outcome.",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly certExpiry = new Gauge({
    name: "meshca_certificate_expiry_timestamp_seconds",
    help: "notAfter of the CA's own certificates: each root of the bundle, the intermediate, the server certificate.",
    labelNames: ["cert", "serial"] as const,
    registers: [this.registry],
  });

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
