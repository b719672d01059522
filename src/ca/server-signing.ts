/**
 * What the CA server signs and verifies with, and its own TLS certificate. The certificate is replaced at
 * half its life so a long-running `meshca serve` never expires; with `loadCa` the CA directory is re-read
 * every `reloadIntervalMs`, and after `meshca rotate` the new intermediate signs, the new bundle is
 * served and the server's certificate is re-issued under it. Publishes the expiry gauges of all three.
 */

import { X509Certificate } from "node:crypto";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { errorMessage, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import type { CaMetrics } from "../core/metrics.ts";
import type { CertificateAuthority, IssuedIdentity } from "./authority.ts";
import { parseBundle, type TrustBundle } from "./verify.ts";

/** What the server signs and verifies with; replaced as a whole when the CA directory changes. */
export interface Signing {
  readonly ca: CertificateAuthority;
  readonly bundlePem: string;
  readonly bundle: TrustBundle;
  readonly bundleRootsDer: ReadonlySet<string>;
  /** Identifies the material: the bundle and the signing certificate. */
  readonly key: string;
}

function signingState(ca: CertificateAuthority): Signing {
  const bundlePem = ca.bundlePem();
  const bundle = parseBundle(bundlePem, ca.trustDomain);
  return {
    ca,
    bundlePem,
    bundle,
    bundleRootsDer: new Set(bundle.roots.map((r) => r.raw.toString("base64"))),
    key: `${bundlePem}\n${ca.signingCertPem()}`,
  };
}

export interface ServerSigningOptions {
  ca: CertificateAuthority;
  /** The names the server certificate carries. */
  sans: { dnsNames: string[]; ipAddresses: string[] };
  serverCertTtlMs: number;
  clock: Clock;
  log: Logger;
  metrics: CaMetrics;
  loadCa: (() => Promise<CertificateAuthority>) | undefined;
  reloadIntervalMs: number;
}

/** The TLS options of a server certificate. */
export function serverContext(identity: { keyPem: string; chainPem: string }) {
  return { key: identity.keyPem, cert: identity.chainPem, minVersion: "TLSv1.2" as const };
}

export class ServerSigning {
  private rotation: TimerHandle | undefined;
  private reloadTimer: TimerHandle | undefined;
  private lastReloadError: string | undefined;
  private closed = false;
  private install: (identity: IssuedIdentity) => void = () => {};

  private constructor(
    private readonly o: ServerSigningOptions,
    private signing: Signing,
    private identity: IssuedIdentity,
  ) {}

  /** Reads the CA's material and issues the server's first certificate. */
  static async create(o: ServerSigningOptions): Promise<ServerSigning> {
    const signing = signingState(o.ca);
    const identity = await signing.ca.issueServer({ ...o.sans, ttlMs: o.serverCertTtlMs });
    return new ServerSigning(o, signing, identity);
  }

  /** The material signing now. */
  get current(): Signing {
    return this.signing;
  }

  /** The server's certificate now. */
  get serverIdentity(): IssuedIdentity {
    return this.identity;
  }

  /** Starts the renewal and reload timers; `install` puts each new server certificate in place. */
  start(install: (identity: IssuedIdentity) => void): void {
    this.install = install;
    this.scheduleServerCert(this.identity.notAfter);
    this.publishExpiry();
    this.scheduleReload();
  }

  close(): void {
    this.closed = true;
    this.rotation?.cancel();
    this.reloadTimer?.cancel();
  }

  /** Checks the CA directory now; resolves true when the CA changed (and is now signing). */
  async reloadCa(): Promise<boolean> {
    const { o } = this;
    if (!o.loadCa || this.closed) return false;
    let next: Signing;
    try {
      const ca = await o.loadCa();
      if (ca.trustDomain !== this.signing.ca.trustDomain) {
        throw new WeftError(
          "E_CONFIG",
          `the CA directory now serves trust domain ${ca.trustDomain}, not ${this.signing.ca.trustDomain}; restart meshca serve to switch`,
        );
      }
      next = signingState(ca);
    } catch (err) {
      const msg = errorMessage(err);
      if (msg !== this.lastReloadError)
        o.log.error({ err: msg }, "cannot reload the CA directory; still signing with the loaded CA");
      this.lastReloadError = msg;
      o.metrics.caReloads.inc({ outcome: "failed" });
      return false;
    }
    this.lastReloadError = undefined;
    if (next.key === this.signing.key) return false;
    const identity = await next.ca.issueServer({ ...o.sans, ttlMs: o.serverCertTtlMs });
    if (this.closed) return false;
    this.signing = next;
    this.install(identity);
    this.identity = identity;
    this.rotation?.cancel();
    this.scheduleServerCert(identity.notAfter);
    this.publishExpiry();
    o.metrics.caReloads.inc({ outcome: "reloaded" });
    o.log.info(
      {
        intermediate_serial: new X509Certificate(next.ca.signingCertPem()).serialNumber.toLowerCase(),
        roots: next.bundle.roots.length,
      },
      "signing CA reloaded from its directory",
    );
    return true;
  }

  /** Replaces the server's own certificate at half its life (at least a minute from now). */
  private scheduleServerCert(notAfter: Date): void {
    const { o } = this;
    const delay = Math.max(60_000, (notAfter.getTime() - o.clock.now()) / 2);
    this.rotation = o.clock.setTimeout(() => {
      this.signing.ca
        .issueServer({ ...o.sans, ttlMs: o.serverCertTtlMs })
        .then((next) => {
          if (this.closed) return;
          this.install(next);
          this.identity = next;
          this.publishExpiry();
          o.log.info(
            { serial: next.serial, not_after: next.notAfter.toISOString() },
            "server certificate renewed",
          );
          this.scheduleServerCert(next.notAfter);
        })
        .catch((err) => {
          o.log.error({ err: errorMessage(err) }, "server certificate renewal failed");
          if (!this.closed) this.scheduleServerCert(new Date(o.clock.now() + 120_000));
        });
    }, delay);
  }

  private scheduleReload(): void {
    if (!this.o.loadCa || this.closed) return;
    this.reloadTimer = this.o.clock.setTimeout(() => {
      void this.reloadCa().finally(() => this.scheduleReload());
    }, this.o.reloadIntervalMs);
  }

  /** The expiry gauges of the CA's own certificates. */
  private publishExpiry(): void {
    const { metrics } = this.o;
    metrics.certExpiry.reset();
    for (const root of this.signing.bundle.roots) {
      metrics.certExpiry.set(
        { cert: "root", serial: root.serialNumber.toLowerCase() },
        Math.floor(Date.parse(root.validTo) / 1000),
      );
    }
    const inter = new X509Certificate(this.signing.ca.signingCertPem());
    metrics.certExpiry.set(
      { cert: "intermediate", serial: inter.serialNumber.toLowerCase() },
      Math.floor(Date.parse(inter.validTo) / 1000),
    );
    metrics.certExpiry.set(
      { cert: "server", serial: this.identity.serial },
      Math.floor(this.identity.notAfter.getTime() / 1000),
    );
  }
}
