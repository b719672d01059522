/**
 * Weft's certificate authority: a root (long-lived, its key may be kept offline), an intermediate that
 * signs, and workload X.509-SVIDs. Issuance is a pipeline: check the request (CSR signature, exactly one
 * URI SAN that is a SPIFFE ID of this trust domain, nothing that widens power), ask the caller's
 * `authorize` whether this caller may have that identity, then sign from the CA's own profile (nothing
 * of the CSR but its public key and identity is used), backdated one minute for clock skew, never past
 * the intermediate's own expiry.
 *
 * Profiles (X.509-SVID spec): leaf = CA:false (critical), keyUsage digitalSignature (critical; RSA keys
 * also keyEncipherment), EKU serverAuth + clientAuth, exactly one URI SAN, SKI, AKI. Signing certs =
 * CA:true (critical), keyCertSign + cRLSign (critical), URI SAN `spiffe://<td>` (no path), SKI, AKI.
 */
import { createPrivateKey, KeyObject, randomBytes, X509Certificate } from "node:crypto";
import { type Clock, systemClock } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import { checkCsrSignature, checkPublicKey } from "./key-policy.ts";
import { SpiffeId } from "./spiffe-id.ts";
import {
  buildCertificate,
  buildCsr,
  type CryptoKey,
  Eku,
  exportPrivateKeyPem,
  generateKeyPair,
  importSigningKey,
  type KeyAlgorithm,
  KeyUsage,
  parseCertificate,
  randomSerial,
  readCsr,
  splitPemCertificates,
  x509,
} from "./x509.ts";

export type { KeyAlgorithm } from "./x509.ts";

export const DEFAULT_ROOT_TTL_MS = 10 * 365 * 86_400_000;
export const DEFAULT_INTERMEDIATE_TTL_MS = 365 * 86_400_000;
export const DEFAULT_LEAF_TTL_MS = 24 * 3_600_000;
/** notBefore is set this far in the past so peers with slightly slow clocks accept new certificates. */
export const BACKDATE_MS = 60_000;

export interface CaMaterial {
  readonly trustDomain: string;
  readonly rootCertPem: string;
  /** Absent when the root key is kept offline: the CA can still issue, but not rotate its intermediate. */
  readonly rootKeyPem?: string;
  readonly intermediateCertPem: string;
  readonly intermediateKeyPem: string;
  /** Every root peers should trust: one, or old and new during a root rotation. */
  readonly bundlePem: string;
}

export interface IssuedCert {
  readonly id: SpiffeId;
  /** The leaf alone. */
  readonly certPem: string;
  /** Leaf then intermediate: what a workload presents. */
  readonly chainPem: string;
  readonly bundlePem: string;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface IssuedIdentity extends IssuedCert {
  readonly keyPem: string;
}

interface TtlOptions {
  readonly rootTtlMs?: number;
  readonly intermediateTtlMs?: number;
  readonly clock?: Clock;
}

function signingProfile(
  trustDomain: string,
  name: string,
  now: number,
  ttlMs: number,
  publicKey: CryptoKey,
  pathLength?: number,
) {
  return {
    serial: randomSerial(),
    // A random tag keeps names unique: two roots made the same day (a rotation, or another CA of the
    // same trust domain name) must not look like each other's issuer.
    subject: `CN=${name} ${randomBytes(4).toString("hex")},OU=${trustDomain},O=Weft`,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + ttlMs),
    publicKey,
    ca: true,
    ...(pathLength === undefined ? {} : { pathLength }),
    keyUsages: KeyUsage.keyCertSign | KeyUsage.cRLSign,
    uris: [SpiffeId.trustDomainId(trustDomain).toString()],
  };
}

async function makeRoot(trustDomain: string, now: number, ttlMs: number) {
  const keys = await generateKeyPair("ecdsa-p256");
  const stamp = new Date(now).toISOString().slice(0, 10);
  const certPem = await buildCertificate(
    signingProfile(trustDomain, `Weft Root CA ${stamp}`, now, ttlMs, keys.publicKey),
    {
      key: keys.privateKey,
    },
  );
  return { certPem, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

async function makeIntermediate(
  trustDomain: string,
  rootCertPem: string,
  rootKeyPem: string,
  now: number,
  ttlMs: number,
) {
  const keys = await generateKeyPair("ecdsa-p256");
  const root = parseCertificate(rootCertPem);
  const notAfter = Math.min(now + ttlMs, root.notAfter.getTime());
  const stamp = new Date(now).toISOString().slice(0, 10);
  const certPem = await buildCertificate(
    signingProfile(trustDomain, `Weft Intermediate CA ${stamp}`, now, notAfter - now, keys.publicKey, 0),
    { key: await importSigningKey(rootKeyPem), cert: root },
  );
  return { certPem, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/** A new trust domain: root, intermediate, and a bundle holding the root. */
export async function createTrustDomain(opts: { trustDomain: string } & TtlOptions): Promise<CaMaterial> {
  const td = SpiffeId.trustDomainId(opts.trustDomain).trustDomain;
  const now = (opts.clock ?? systemClock).now();
  const root = await makeRoot(td, now, opts.rootTtlMs ?? DEFAULT_ROOT_TTL_MS);
  const inter = await makeIntermediate(
    td,
    root.certPem,
    root.keyPem,
    now,
    opts.intermediateTtlMs ?? DEFAULT_INTERMEDIATE_TTL_MS,
  );
  return {
    trustDomain: td,
    rootCertPem: root.certPem,
    rootKeyPem: root.keyPem,
    intermediateCertPem: inter.certPem,
    intermediateKeyPem: inter.keyPem,
    bundlePem: root.certPem,
  };
}

/**
 * Root rotation: a new root and a new intermediate under it; the bundle keeps the old roots beside the
 * new one, so certificates from both verify during the overlap. Drop old roots from the bundle (by
 * hand) once every workload has renewed.
 */
export async function rotateRoot(material: CaMaterial, opts: TtlOptions = {}): Promise<CaMaterial> {
  const now = (opts.clock ?? systemClock).now();
  const root = await makeRoot(material.trustDomain, now, opts.rootTtlMs ?? DEFAULT_ROOT_TTL_MS);
  const inter = await makeIntermediate(
    material.trustDomain,
    root.certPem,
    root.keyPem,
    now,
    opts.intermediateTtlMs ?? DEFAULT_INTERMEDIATE_TTL_MS,
  );
  return {
    trustDomain: material.trustDomain,
    rootCertPem: root.certPem,
    rootKeyPem: root.keyPem,
    intermediateCertPem: inter.certPem,
    intermediateKeyPem: inter.keyPem,
    bundlePem: [...splitPemCertificates(material.bundlePem), root.certPem].join(""),
  };
}

/** A new intermediate under the same root (needs the root key). */
export async function rotateIntermediate(material: CaMaterial, opts: TtlOptions = {}): Promise<CaMaterial> {
  if (!material.rootKeyPem) {
    throw new WeftError(
      "E_IO",
      "rotating the intermediate needs the root key, which this CA directory does not hold",
      {
        reason: "root_key_offline",
      },
    );
  }
  const now = (opts.clock ?? systemClock).now();
  const inter = await makeIntermediate(
    material.trustDomain,
    material.rootCertPem,
    material.rootKeyPem,
    now,
    opts.intermediateTtlMs ?? DEFAULT_INTERMEDIATE_TTL_MS,
  );
  return { ...material, intermediateCertPem: inter.certPem, intermediateKeyPem: inter.keyPem };
}

/** A key pair and CSR for an identity; the key stays with the caller. */
export async function createCsr(
  id: SpiffeId | string,
  keyAlgorithm: KeyAlgorithm = "ecdsa-p256",
): Promise<{ csrPem: string; keyPem: string }> {
  const spiffe = typeof id === "string" ? SpiffeId.parse(id) : id;
  return buildCsr(spiffe.toString(), keyAlgorithm);
}

function csrInvalid(reason: string, message: string): WeftError {
  return new WeftError("E_CSR_INVALID", message, { reason });
}

export class CertificateAuthority {
  readonly trustDomain: string;
  private readonly clock: Clock;
  private readonly defaultTtlMs: number;
  private readonly intermediate: x509.X509Certificate;
  private readonly intermediateNotAfter: number;
  private signingKey: Promise<CryptoKey> | undefined;
  private rootFp: string | undefined;

  constructor(
    private readonly material: CaMaterial,
    opts: { clock?: Clock; defaultTtlMs?: number } = {},
  ) {
    this.trustDomain = material.trustDomain;
    this.clock = opts.clock ?? systemClock;
    this.defaultTtlMs = opts.defaultTtlMs ?? DEFAULT_LEAF_TTL_MS;
    this.intermediate = parseCertificate(material.intermediateCertPem);
    this.intermediateNotAfter = this.intermediate.notAfter.getTime();
  }

  bundlePem(): string {
    return this.material.bundlePem;
  }

  /**
   * Throws E_CONFIG unless the material holds together: the signing key matches the intermediate, the
   * intermediate is signed by a root of the bundle, and it is still valid. A directory caught in the
   * middle of `meshca rotate` (files written one by one) fails this and is read again later.
   */
  checkConsistent(): void {
    const inter = new X509Certificate(this.material.intermediateCertPem);
    let keyMatches = false;
    try {
      keyMatches = inter.checkPrivateKey(createPrivateKey(this.material.intermediateKeyPem));
    } catch {
      keyMatches = false;
    }
    if (!keyMatches) {
      throw new WeftError(
        "E_CONFIG",
        "intermediate-key.pem does not match intermediate.pem (a rotation in progress?)",
        {
          reason: "key_mismatch",
        },
      );
    }
    const roots = splitPemCertificates(this.material.bundlePem).map((p) => new X509Certificate(p));
    if (!roots.some((r) => inter.checkIssued(r) && inter.verify(r.publicKey))) {
      throw new WeftError(
        "E_CONFIG",
        "intermediate.pem is not signed by a root of bundle.pem (a rotation in progress?)",
        {
          reason: "untrusted_intermediate",
        },
      );
    }
    if (this.clock.now() >= this.intermediateNotAfter) {
      throw new WeftError(
        "E_CA_EXPIRED",
        `the intermediate CA expired at ${new Date(this.intermediateNotAfter).toISOString()}`,
      );
    }
  }

  /** SHA-256 fingerprint of the root the signing intermediate chains to (recorded per certificate). */
  rootFingerprint(): string {
    this.rootFp ??= new X509Certificate(this.material.rootCertPem).fingerprint256;
    return this.rootFp;
  }

  /** The intermediate that signs (PEM). */
  signingCertPem(): string {
    return this.material.intermediateCertPem;
  }

  private key(): Promise<CryptoKey> {
    this.signingKey ??= importSigningKey(this.material.intermediateKeyPem);
    return this.signingKey;
  }

  private async sign(opts: {
    id: SpiffeId;
    publicKey: CryptoKey | x509.PublicKey;
    ttlMs: number | undefined;
    rsa: boolean;
    notBefore?: Date;
    dnsNames?: readonly string[];
    ipAddresses?: readonly string[];
  }): Promise<IssuedCert> {
    const now = this.clock.now();
    if (now >= this.intermediateNotAfter) {
      throw new WeftError(
        "E_CA_EXPIRED",
        `the intermediate CA expired at ${new Date(this.intermediateNotAfter).toISOString()}; rotate it`,
      );
    }
    // The key policy guards every path that ends here (CSRs, `issue`, the server's own certificate).
    checkPublicKey(
      opts.publicKey instanceof x509.PublicKey
        ? new Uint8Array(opts.publicKey.rawData)
        : KeyObject.from(opts.publicKey as CryptoKey),
    );
    const ttl = opts.ttlMs ?? this.defaultTtlMs;
    if (!(ttl > 0)) throw new WeftError("E_USAGE", `a certificate lifetime must be positive, got ${ttl} ms`);
    const notBefore = opts.notBefore ?? new Date(now - BACKDATE_MS);
    // An explicit notBefore (tests, backfills) starts the lifetime there; otherwise it starts now.
    const start = opts.notBefore ? opts.notBefore.getTime() : now;
    const notAfter = new Date(Math.min(start + ttl, this.intermediateNotAfter));
    const serial = randomSerial();
    const certPem = await buildCertificate(
      {
        serial,
        subject: `OU=${this.trustDomain},O=Weft`,
        notBefore,
        notAfter,
        publicKey: opts.publicKey,
        ca: false,
        keyUsages: KeyUsage.digitalSignature | (opts.rsa ? KeyUsage.keyEncipherment : 0),
        extendedKeyUsages: [Eku.serverAuth, Eku.clientAuth],
        uris: [opts.id.toString()],
        ...(opts.dnsNames ? { dnsNames: opts.dnsNames } : {}),
        ...(opts.ipAddresses ? { ipAddresses: opts.ipAddresses } : {}),
      },
      { key: await this.key(), cert: this.intermediate },
    );
    // The certificate's own dates are what peers see (DER keeps whole seconds).
    const x = new X509Certificate(certPem);
    return {
      id: opts.id,
      certPem,
      chainPem: certPem + this.material.intermediateCertPem,
      bundlePem: this.material.bundlePem,
      serial: x.serialNumber.toLowerCase(),
      notBefore: new Date(x.validFrom),
      notAfter: new Date(x.validTo),
    };
  }

  private workloadId(id: SpiffeId | string): SpiffeId {
    const spiffe = typeof id === "string" ? SpiffeId.parse(id) : id;
    if (spiffe.trustDomain !== this.trustDomain) {
      throw new WeftError("E_CSR_IDENTITY", `${spiffe} is not in trust domain ${this.trustDomain}`, {
        reason: "wrong_trust_domain",
      });
    }
    if (spiffe.path === "")
      throw csrInvalid("no_path", `${spiffe} names the trust domain itself, not a workload`);
    return spiffe;
  }

  /** Make a key pair here and issue a leaf for it. */
  async issue(opts: {
    id: SpiffeId | string;
    ttlMs?: number;
    keyAlgorithm?: KeyAlgorithm;
    notBefore?: Date;
  }): Promise<IssuedIdentity> {
    const id = this.workloadId(opts.id);
    const alg = opts.keyAlgorithm ?? "ecdsa-p256";
    const keys = await generateKeyPair(alg);
    const cert = await this.sign({
      id,
      publicKey: keys.publicKey,
      ttlMs: opts.ttlMs,
      rsa: alg.startsWith("rsa"),
      ...(opts.notBefore ? { notBefore: opts.notBefore } : {}),
    });
    return { ...cert, keyPem: await exportPrivateKeyPem(keys.privateKey) };
  }

  /** The identity a CSR asks for, after checking its signature and shape (nothing is signed). */
  async inspectCsr(csrPem: string): Promise<SpiffeId> {
    return (await this.checkCsr(csrPem)).id;
  }

  private async checkCsr(csrPem: string): Promise<{ id: SpiffeId; publicKey: x509.PublicKey }> {
    const csr = await readCsr(csrPem);
    checkPublicKey(new Uint8Array(csr.publicKey.rawData));
    checkCsrSignature(csr.signatureAlgorithm);
    if (!csr.signatureValid) {
      throw new WeftError("E_CSR_SIGNATURE", "the CSR's signature does not verify with its own public key", {
        reason: "bad_signature",
      });
    }
    if (csr.requestsCa)
      throw csrInvalid("ca_requested", "the CSR asks to be a CA; workload certificates never are");
    if (csr.otherSans.length > 0) {
      throw csrInvalid(
        "extra_san",
        `the CSR asks for SANs besides its SPIFFE ID (${csr.otherSans.join(", ")}); only one URI SAN is allowed`,
      );
    }
    if (csr.uris.length === 0) throw csrInvalid("no_uri_san", "the CSR has no URI SAN naming a SPIFFE ID");
    if (csr.uris.length > 1)
      throw csrInvalid(
        "multiple_uri_sans",
        `the CSR asks for ${csr.uris.length} URI SANs; an SVID has exactly one`,
      );
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(csr.uris[0]!);
    } catch (err) {
      throw csrInvalid(
        "not_spiffe_id",
        `the CSR's URI SAN is not a valid SPIFFE ID: ${(err as Error).message}`,
      );
    }
    return { id: this.workloadId(id), publicKey: csr.publicKey };
  }

  /**
   * Sign a workload's CSR. `authorize` decides whether this caller may have the identity the CSR asks
   * for (throw `E_CSR_IDENTITY` / `E_RENEW_IDENTITY` to refuse); it runs after the CSR is checked and
   * before anything is signed.
   */
  async signCsr(
    csrPem: string,
    opts: { authorize: (id: SpiffeId) => void; ttlMs?: number },
  ): Promise<IssuedCert> {
    const { id, publicKey } = await this.checkCsr(csrPem);
    opts.authorize(id);
    return this.sign({ id, publicKey, ttlMs: opts.ttlMs, rsa: publicKey.algorithm.name.startsWith("RSA") });
  }

  /** The CA server's own HTTPS certificate: `spiffe://<td>/weft/ca` plus DNS and IP SANs. */
  async issueServer(opts: {
    dnsNames: string[];
    ipAddresses: string[];
    ttlMs?: number;
  }): Promise<IssuedIdentity> {
    const keys = await generateKeyPair("ecdsa-p256");
    const cert = await this.sign({
      id: SpiffeId.parse(`spiffe://${this.trustDomain}/weft/ca`),
      publicKey: keys.publicKey,
      ttlMs: opts.ttlMs,
      rsa: false,
      dnsNames: opts.dnsNames,
      ipAddresses: opts.ipAddresses,
    });
    return { ...cert, keyPem: await exportPrivateKeyPem(keys.privateKey) };
  }
}
