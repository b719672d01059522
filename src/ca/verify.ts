/**
 * X.509-SVID verification, used by the CA tests, `meshca verify`, the CA server (renewals) and both
 * sides of every mesh connection: a path from the leaf through the presented intermediates to a root
 * in the trust bundle, every certificate inside its validity window, the RFC 5280 rules a TLS peer
 * check needs, and the SPIFFE rules for leaf and signing certificates. It returns the peer's SPIFFE ID,
 * or throws `E_SVID` with the broken rule as `reason` (a bounded set, used as a metrics label).
 *
 * RFC 5280 rules enforced beside the SPIFFE ones (each with its own reason):
 * - extended key usage by role: when a certificate of the path carries the EKU extension it must allow
 *   the role the peer plays (clientAuth for a client, serverAuth for a server): `eku_no_client_auth`,
 *   `eku_no_server_auth`. OpenSSL applies this to CA certificates too, and so does Weft.
 * - pathLenConstraint of every CA certificate, the bundle's root included: `path_length_exceeded`.
 * - an unrecognised critical extension anywhere in the path: `unknown_critical_extension`.
 * - revoked leaf serials (the list the CA serves with its bundle): `revoked`.
 * test/unit/verify-openssl.test.ts runs every refusal through `openssl verify -x509_strict` as well.
 *
 * Signatures and dates use node:crypto's native X509Certificate; the extension facts come from
 * cert-facts.ts (a bounded DER reader, no ASN.1 library: the sidecar does not load @peculiar/x509) and
 * are cached per DER by `SvidVerifier`, so a peer seen before costs a map lookup and a date comparison.
 */
import { createHash, X509Certificate } from "node:crypto";
import { type Clock, systemClock } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import {
  type CertFacts,
  certFacts,
  Eku,
  KeyUsage,
  normalizeSerial,
  splitPemCertificates,
} from "./cert-facts.ts";
import { SpiffeId } from "./spiffe-id.ts";

/** Longest chain accepted: leaf + this many intermediates. */
export const MAX_INTERMEDIATES = 4;

export interface TrustBundle {
  readonly trustDomain: string;
  readonly roots: readonly X509Certificate[];
  readonly pem: string;
}

function svidError(reason: string, message: string): WeftError {
  return new WeftError("E_SVID", message, { reason });
}

export function parseBundle(pem: string, trustDomain: string): TrustBundle {
  const blocks = splitPemCertificates(pem);
  if (blocks.length === 0)
    throw new WeftError("E_PEM", "the trust bundle holds no PEM certificate", { reason: "empty_bundle" });
  const roots = blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new WeftError("E_PEM", "a certificate in the trust bundle does not parse", {
        reason: "bad_bundle",
        cause: err,
      });
    }
  });
  return { trustDomain, roots, pem };
}

/**
 * The trust domain a PEM bundle names: the `spiffe://<td>` URI SAN its roots carry (Weft's roots do).
 * Undefined when no root names one; throws E_PEM when roots name different trust domains.
 */
export function bundleTrustDomain(pem: string): string | undefined {
  const found = new Set<string>();
  for (const block of splitPemCertificates(pem)) {
    let facts: CertFacts;
    try {
      facts = certFacts(new X509Certificate(block).raw);
    } catch (err) {
      throw new WeftError("E_PEM", "a certificate in the trust bundle does not parse", {
        reason: "bad_bundle",
        cause: err,
      });
    }
    for (const uri of facts.uris) {
      try {
        const id = SpiffeId.parse(uri);
        if (id.path === "") found.add(id.trustDomain);
      } catch {
        // not a SPIFFE ID: names no trust domain
      }
    }
  }
  if (found.size > 1) {
    throw new WeftError("E_PEM", `the bundle's roots name several trust domains (${[...found].join(", ")})`, {
      reason: "mixed_trust_domains",
    });
  }
  return found.values().next().value;
}

function toCertificates(chain: readonly (Buffer | string)[] | string): X509Certificate[] {
  const items: Array<string | Buffer> =
    typeof chain === "string"
      ? splitPemCertificates(chain)
      : chain.flatMap((c): Array<string | Buffer> => (typeof c === "string" ? splitPemCertificates(c) : [c]));
  if (items.length === 0) throw svidError("no_certificate", "no certificate was presented");
  return items.map((item) => {
    try {
      return new X509Certificate(item);
    } catch (err) {
      throw new WeftError("E_SVID", "a presented certificate does not parse", {
        reason: "malformed_certificate",
        cause: err,
      });
    }
  });
}

/** What a successful structural check found, cached per chain. */
interface Verified {
  readonly id: SpiffeId;
  readonly notBefore: number;
  readonly notAfter: number;
  /** The leaf's serial (normalised), for the revocation check. */
  readonly serial: string;
}

/** The role the checked certificate plays in the TLS handshake; `any` skips the EKU check. */
export type PeerRole = "client" | "server" | "any";

const EKU_FOR_ROLE = { client: Eku.clientAuth, server: Eku.serverAuth } as const;

function checkCommon(f: CertFacts, which: string, role: PeerRole): void {
  if (f.unknownCritical.length > 0) {
    throw svidError(
      "unknown_critical_extension",
      `the ${which} certificate has critical extension(s) Weft does not process: ${f.unknownCritical.join(", ")}`,
    );
  }
  if (
    role !== "any" &&
    f.extendedKeyUsages !== undefined &&
    !f.extendedKeyUsages.includes(EKU_FOR_ROLE[role])
  ) {
    throw svidError(
      role === "client" ? "eku_no_client_auth" : "eku_no_server_auth",
      `the ${which} certificate's extended key usage does not allow ${role === "client" ? "clientAuth" : "serverAuth"} (it has ${f.extendedKeyUsages.join(", ") || "none"})`,
    );
  }
}

function has(flags: number | undefined, bit: number): boolean {
  return flags !== undefined && (flags & bit) !== 0;
}

function checkLeaf(f: CertFacts, trustDomain: string): SpiffeId {
  if (f.uris.length === 0) throw svidError("no_uri_san", "the leaf has no URI SAN");
  if (f.uris.length > 1)
    throw svidError(
      "multiple_uri_sans",
      `the leaf has ${f.uris.length} URI SANs; an X.509-SVID has exactly one`,
    );
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(f.uris[0]!);
  } catch (err) {
    throw new WeftError("E_SVID", `the leaf's URI SAN is not a SPIFFE ID: ${(err as Error).message}`, {
      reason: "not_spiffe_id",
      cause: err,
    });
  }
  if (id.path === "")
    throw svidError("leaf_without_path", `the leaf names the trust domain itself (${id}), not a workload`);
  if (f.ca === true) throw svidError("leaf_is_ca", "the leaf is a CA certificate (basicConstraints CA:true)");
  if (has(f.keyUsages, KeyUsage.keyCertSign))
    throw svidError("leaf_key_cert_sign", "the leaf has the keyCertSign key usage");
  if (has(f.keyUsages, KeyUsage.cRLSign))
    throw svidError("leaf_crl_sign", "the leaf has the cRLSign key usage");
  if (!has(f.keyUsages, KeyUsage.digitalSignature)) {
    throw svidError("leaf_no_digital_signature", "the leaf lacks the digitalSignature key usage");
  }
  if (id.trustDomain !== trustDomain) {
    throw svidError("wrong_trust_domain", `${id} is not in trust domain ${trustDomain}`);
  }
  return id;
}

function checkSigning(f: CertFacts, which: string): void {
  if (f.ca !== true)
    throw svidError(
      "intermediate_not_ca",
      `the ${which} certificate is not a CA (basicConstraints CA:true missing)`,
    );
  if (!has(f.keyUsages, KeyUsage.keyCertSign)) {
    throw svidError(
      "intermediate_no_key_cert_sign",
      `the ${which} certificate lacks the keyCertSign key usage`,
    );
  }
  for (const uri of f.uris) {
    let id: SpiffeId | undefined;
    try {
      id = SpiffeId.parse(uri);
    } catch {
      id = undefined;
    }
    if (id && id.path !== "")
      throw svidError("path_in_signing_cert", `the ${which} certificate's SPIFFE ID ${uri} has a path`);
  }
}

/**
 * Whether `parent` is named as `child`'s issuer. Deliberately by name only (signatures are checked
 * next): OpenSSL's checkIssued also rejects issuers without keyCertSign, which would hide that rule's
 * own reason behind "untrusted root".
 */
function named(child: X509Certificate, parent: X509Certificate): boolean {
  return child.issuer === parent.subject;
}

/** The structural verdict (no dates): path to a bundle root, SPIFFE rules. */
function verifyStructure(
  certs: X509Certificate[],
  bundle: TrustBundle,
  factsOf: (c: X509Certificate) => CertFacts,
  role: PeerRole,
): Verified {
  if (certs.length - 1 > MAX_INTERMEDIATES) {
    throw svidError(
      "chain_too_long",
      `the chain has ${certs.length - 1} intermediates; at most ${MAX_INTERMEDIATES} are accepted`,
    );
  }
  const leaf = certs[0]!;
  const leafFacts = factsOf(leaf);
  const id = checkLeaf(leafFacts, bundle.trustDomain);
  checkCommon(leafFacts, "leaf", role);
  // Walk up through the presented certificates until one is signed by a bundle root.
  let current = leaf;
  const path: X509Certificate[] = [leaf];
  const pool = certs.slice(1);
  for (let depth = 0; depth <= MAX_INTERMEDIATES; depth++) {
    // Names alone are not enough (two roots made on the same day share a subject): a candidate issuer
    // counts only when its key verifies the signature.
    const namedRoots = bundle.roots.filter((r) => named(current, r));
    const root = namedRoots.find((r) => current.verify(r.publicKey));
    if (root) {
      path.push(root);
      break;
    }
    const candidates = pool.filter((p) => named(current, p));
    const parent = candidates.find((p) => current.verify(p.publicKey));
    if (!parent) {
      if (namedRoots.length > 0 || candidates.length > 0) {
        throw svidError(
          "bad_signature",
          "a signature in the chain does not verify with the key of its named issuer",
        );
      }
      throw svidError("untrusted_root", "the chain does not lead to a root in the trust bundle");
    }
    const parentFacts = factsOf(parent);
    checkSigning(parentFacts, "intermediate");
    checkCommon(parentFacts, "intermediate", role);
    path.push(parent);
    pool.splice(pool.indexOf(parent), 1);
    current = parent;
    if (depth === MAX_INTERMEDIATES)
      throw svidError("chain_too_long", "no trusted root within the allowed chain length");
  }
  const root = path[path.length - 1]!;
  if (!bundle.roots.includes(root))
    throw svidError("untrusted_root", "the chain does not lead to a root in the trust bundle");
  // The anchor's constraints count too (OpenSSL enforces them); its signing rules were checked when it
  // entered the bundle's use, but its EKU, critical extensions and path length are checked here.
  const rootFacts = factsOf(root);
  checkCommon(rootFacts, "root", role);
  // RFC 5280 §4.2.1.9: a CA's pathLenConstraint is the most non-self-issued intermediates that may
  // follow it in the path (the leaf not counted). path = leaf, intermediates..., root.
  for (let i = 1; i < path.length; i++) {
    const f = i === path.length - 1 ? rootFacts : factsOf(path[i]!);
    const below = i - 1;
    if (f.pathLength !== undefined && below > f.pathLength) {
      throw svidError(
        "path_length_exceeded",
        `a CA certificate allows ${f.pathLength} intermediate(s) below it (pathLenConstraint) but the path has ${below}`,
      );
    }
  }
  let notBefore = Number.NEGATIVE_INFINITY;
  let notAfter = Number.POSITIVE_INFINITY;
  for (const c of path) {
    notBefore = Math.max(notBefore, Date.parse(c.validFrom));
    notAfter = Math.min(notAfter, Date.parse(c.validTo));
  }
  return { id, notBefore, notAfter, serial: leafFacts.serial };
}

function checkWindow(v: Verified, now: number, revoked?: ReadonlySet<string>): SpiffeId {
  if (now < v.notBefore)
    throw svidError(
      "not_yet_valid",
      `a certificate in the chain is not valid before ${new Date(v.notBefore).toISOString()}`,
    );
  if (now > v.notAfter)
    throw svidError("expired", `a certificate in the chain expired at ${new Date(v.notAfter).toISOString()}`);
  if (revoked?.has(v.serial))
    throw svidError("revoked", `the certificate with serial ${v.serial} is revoked`);
  return v.id;
}

/**
 * Verify a presented chain (leaf first: DER buffers, PEM strings, or one PEM text) against a bundle.
 * Returns the leaf's SPIFFE ID; throws `E_SVID` with the broken rule.
 */
export function verifySvid(
  chain: readonly (Buffer | string)[] | string,
  bundle: TrustBundle,
  opts: { now?: Date; role?: PeerRole; revoked?: ReadonlySet<string> } = {},
): SpiffeId {
  const certs = toCertificates(chain);
  const verified = verifyStructure(certs, bundle, (c) => certFacts(c.raw), opts.role ?? "any");
  return checkWindow(verified, (opts.now ?? new Date()).getTime(), opts.revoked);
}

/**
 * `verifySvid` for the data path: structural results are cached per chain (keyed by a hash of the DER
 * bytes), the validity window is checked on every call against the injected clock. Refusals are
 * cached too, so a peer retrying a bad certificate costs no new parsing.
 */
export class SvidVerifier {
  private bundle: TrustBundle;
  private readonly clock: Clock;
  private readonly cacheSize: number;
  private readonly cache = new Map<string, Verified | WeftError>();
  private revoked: ReadonlySet<string> = new Set();

  constructor(bundle: TrustBundle, opts: { clock?: Clock; cacheSize?: number } = {}) {
    this.bundle = bundle;
    this.clock = opts.clock ?? systemClock;
    this.cacheSize = opts.cacheSize ?? 1024;
  }

  setBundle(bundle: TrustBundle): void {
    this.bundle = bundle;
    this.cache.clear();
  }

  /** Leaf serials to refuse from now on (hex, any case); checked on every call, cached chains too. */
  setRevoked(serials: Iterable<string>): void {
    this.revoked = new Set([...serials].map(normalizeSerial));
  }

  get trustDomain(): string {
    return this.bundle.trustDomain;
  }

  /** Verify `chain` (DER, leaf first) for a peer playing `role`. */
  verify(chain: readonly Buffer[], role: PeerRole = "any"): SpiffeId {
    if (chain.length === 0) throw svidError("no_certificate", "no certificate was presented");
    const h = createHash("sha256");
    h.update(role);
    for (const der of chain) h.update(der);
    const key = h.digest("base64");
    let entry = this.cache.get(key);
    if (entry === undefined) {
      try {
        entry = verifyStructure(toCertificates(chain), this.bundle, (c) => certFacts(c.raw), role);
      } catch (err) {
        if (!(err instanceof WeftError)) throw err;
        entry = err;
      }
      if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(key, entry);
    }
    if (entry instanceof WeftError) throw entry;
    return checkWindow(entry, this.clock.now(), this.revoked);
  }
}
