/**
 * TLS for the mesh tunnel, built once per identity. One `SecureContext` holds the workload key, its
 * chain and the server's session-ticket keys; every tunnel connection, client or server, reuses it
 * (building a context per connection cost ~50 % more CPU per handshake and ~25 KiB more per connection).
 * A new identity swaps in a new context for new connections only; live connections keep theirs.
 *
 * Peers are verified in Weft's code (`SvidVerifier`), not by OpenSSL, so every refusal has a reason that
 * is counted and logged. Verified leaves are remembered by fingerprint until they expire or the bundle
 * changes, which also covers resumed sessions (a resumed TLS 1.3 session carries the peer's leaf only).
 *
 * Session resumption between sidecars: the client keeps the last session ticket per endpoint, tagged
 * with the identity that endpoint proved in the full handshake, and resumes only when the same identity
 * is expected. Rotation drops every kept session and, with the new context, the old ticket keys, so the
 * first connection after a rotation is a full handshake that presents the new certificate.
 */
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import tls from "node:tls";
import { normalizeSerial } from "../../ca/cert-facts.ts";
import type { SpiffeId } from "../../ca/spiffe-id.ts";
import { type PeerRole, parseBundle, SvidVerifier } from "../../ca/verify.ts";
import type { Clock } from "../../core/clock.ts";
import { WeftError } from "../../core/errors.ts";

/** The ALPN protocol of Weft's tunnel: mTLS carrying a PROXY v2 header, then the app's bytes. */
export const ALPN_WEFT = "weft/1";

/** AES-128-GCM first: measured fastest here (ChaCha20 slowest). */
const TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
const MAX_SESSIONS = 4096;
const MAX_VERIFIED = 4096;

/** The workload identity in use, as the proxy needs it. */
export interface Identity {
  /** Its SPIFFE ID, as the verifier read it from the leaf. */
  readonly id: SpiffeId;
  readonly keyPem: string;
  /** Leaf first, then intermediates. */
  readonly chainPem: string;
  readonly bundlePem: string;
  /** Serial number of the leaf, upper-case hex. */
  readonly serial: string;
  /** Validity of the leaf, milliseconds since the epoch. */
  readonly notBefore: number;
  readonly notAfter: number;
}

/** A session ticket kept for an endpoint, with the identity its server proved in the full handshake. */
export interface KeptSession {
  readonly session: Buffer;
  readonly peer: SpiffeId;
  /** The server's leaf: until when it is valid, and its serial (normalised hex), for revocation. */
  readonly notAfter: number;
  readonly serial: string;
  /** The trust generation it was kept under (see `resumedRefusal`). */
  readonly generation: number;
}

/** Why a resumed session may not be used: see `TunnelTls.resumedRefusal`. */
export type ResumedRefusal = "revoked" | "expired" | "trust_changed";

/** What a verified peer leaf proved: its SPIFFE ID, until when (its notAfter), and its serial. */
export interface VerifiedLeaf {
  readonly id: SpiffeId;
  readonly notAfter: number;
  /** Normalised hex, as the revocation list holds it. */
  readonly serial: string;
}

/** What a pooled session keeps of its peer's certificate, to check it again when trust changes. */
export interface PeerProof {
  readonly chain: readonly Buffer[];
  readonly role: PeerRole;
}

/** The tunnel's TLS state: context, verifier, sessions; see the module comment. */
export class TunnelTls {
  private ctx: tls.SecureContext | undefined;
  private identity: Identity | undefined;
  private verifier: SvidVerifier | undefined;
  private bundlePem: string | undefined;
  private readonly sessions = new Map<string, KeptSession>();
  private readonly verified = new Map<string, VerifiedLeaf>();
  private revoked: ReadonlySet<string> = new Set();
  private revokedKey = "";
  /** Bumped by each `update` (a new identity or bundle); revocations are checked by serial instead. */
  private generation = 0;
  private readonly trustListeners: Array<() => void> = [];

  constructor(
    private readonly options: {
      readonly trustDomain: string;
      readonly clock: Clock;
      /** Keep and offer session tickets (config `tls.sessionResumption`, default true). */
      readonly sessionResumption?: boolean;
    },
  ) {}

  /** Install a new identity: new context (and ticket keys) for new connections; sessions are dropped. */
  update(identity: Identity): void {
    const ctx = tls.createSecureContext({
      key: identity.keyPem,
      cert: identity.chainPem,
      minVersion: "TLSv1.3",
      // Node routes TLS 1.3 suite names given in `ciphers` to SSL_CTX_set_ciphersuites.
      ciphers: TLS13_CIPHERSUITES,
      // Required for server-side resumption; any constant works since only Weft's tunnel uses it.
      sessionIdContext: "weft-tunnel",
      ticketKeys: randomBytes(48),
    });
    if (identity.bundlePem !== this.bundlePem) {
      const bundle = parseBundle(identity.bundlePem, this.options.trustDomain);
      if (this.verifier) this.verifier.setBundle(bundle);
      else this.verifier = new SvidVerifier(bundle, { clock: this.options.clock });
      this.bundlePem = identity.bundlePem;
    }
    const bundleChanged = this.identity !== undefined && this.identity.bundlePem !== identity.bundlePem;
    this.verifier?.setRevoked(this.revoked);
    this.ctx = ctx;
    this.identity = identity;
    this.sessions.clear();
    this.generation++;
    this.verified.clear();
    if (bundleChanged) this.trustChanged();
  }

  /**
   * The revoked leaf serials (from the CA, with its bundle). A change refuses those serials on new
   * handshakes at once, drops kept client sessions (a resumed session would skip the check), and tells
   * every `onTrustChange` listener so running pooled sessions are checked again.
   */
  setRevoked(serials: Iterable<string>): void {
    const next = new Set([...serials].map(normalizeSerial));
    const key = [...next].sort().join(",");
    if (key === this.revokedKey) return;
    this.revokedKey = key;
    this.revoked = next;
    this.verifier?.setRevoked(next);
    this.sessions.clear();
    this.trustChanged();
  }

  /** Revoked serials in force (normalised hex). */
  revokedSerials(): ReadonlySet<string> {
    return this.revoked;
  }

  /**
   * `listener` runs after the trust bundle or the revocation list changed: the one hook through which
   * running pooled sessions (both ends) check their peer again with `recheck` and end when it fails.
   */
  onTrustChange(listener: () => void): void {
    this.trustListeners.push(listener);
  }

  private trustChanged(): void {
    for (const l of this.trustListeners) l();
  }

  get ready(): boolean {
    return this.ctx !== undefined;
  }

  /** The identity in use, if any. */
  current(): Identity | undefined {
    return this.identity;
  }

  /** The context for new connections; throws E_NOT_READY before the first identity. */
  context(): tls.SecureContext {
    if (!this.ctx) {
      throw new WeftError("E_NOT_READY", "no workload certificate yet", { reason: "no_certificate" });
    }
    return this.ctx;
  }

  /**
   * The SPIFFE ID the peer of `socket` proved, after a completed handshake. Throws a WeftError whose
   * `reason` says why not (`no_peer_certificate`, or the verifier's reason: expired, untrusted, ...).
   */
  verifyPeer(socket: tls.TLSSocket, role: PeerRole): SpiffeId {
    return this.verifyChain(peerChain(socket), role);
  }

  /**
   * The SPIFFE ID `chain` (DER, leaf first, as `peerChain` reads it) proves for a peer playing `role`,
   * or a WeftError with the verifier's reason. Leaves verified before are remembered (per role) until
   * they expire or the bundle changes; the revocation list is checked on every call.
   */
  verifyChain(chain: readonly Buffer[], role: PeerRole): SpiffeId {
    return this.verifyLeaf(chain, role).id;
  }

  /** `verifyChain`, with the leaf's notAfter and serial it read (for session watches and kept tickets). */
  verifyLeaf(chain: readonly Buffer[], role: PeerRole): VerifiedLeaf {
    if (chain.length === 0) {
      throw new WeftError("E_SVID", "the peer presented no certificate", { reason: "no_peer_certificate" });
    }
    const now = this.options.clock.now();
    const key = `${role}:${createHash("sha256").update(chain[0]!).digest("base64")}`;
    const hit = this.verified.get(key);
    if (hit && now < hit.notAfter) {
      if (this.revoked.has(hit.serial)) {
        throw new WeftError("E_SVID", `the certificate with serial ${hit.serial} is revoked`, {
          reason: "revoked",
        });
      }
      // Keep recently used entries at the end (Map order = eviction order).
      this.verified.delete(key);
      this.verified.set(key, hit);
      return hit;
    }
    if (!this.verifier) {
      throw new WeftError("E_NOT_READY", "no trust bundle yet", { reason: "no_bundle" });
    }
    const id = this.verifier.verify(chain, role);
    const leaf = new X509Certificate(chain[0]!);
    if (this.verified.size >= MAX_VERIFIED) {
      const oldest = this.verified.keys().next().value;
      if (oldest !== undefined) this.verified.delete(oldest);
    }
    const verified = { id, notAfter: Date.parse(leaf.validTo), serial: normalizeSerial(leaf.serialNumber) };
    this.verified.set(key, verified);
    return verified;
  }

  /** Check a running session's peer again (after `onTrustChange`); throws like `verifyChain`. */
  recheck(proof: PeerProof): SpiffeId {
    return this.verifyChain(proof.chain, proof.role);
  }

  /** A kept session for `endpointKey`, if the endpoint proved `expectedIdentity` and it is not stale. */
  session(endpointKey: string, expectedIdentity: string): KeptSession | undefined {
    if (this.options.sessionResumption === false) return undefined;
    const s = this.sessions.get(endpointKey);
    if (!s) return undefined;
    if (!s.peer.equals(expectedIdentity) || this.options.clock.now() >= s.notAfter) {
      this.sessions.delete(endpointKey);
      return undefined;
    }
    return s;
  }

  /**
   * Keep a session ticket from `endpointKey`, whose server proved `peer` with the leaf `leaf`, received
   * on a connection made with `context` (ignored unless that is still the current context).
   */
  keepSession(
    endpointKey: string,
    peer: SpiffeId,
    session: Buffer,
    leaf: Pick<VerifiedLeaf, "notAfter" | "serial">,
    context: tls.SecureContext,
  ): void {
    // A ticket that arrives late on a connection made before a rotation carries the old certificate.
    if (context !== this.ctx || this.options.sessionResumption === false) return;
    if (!this.sessions.has(endpointKey) && this.sessions.size >= MAX_SESSIONS) {
      const oldest = this.sessions.keys().next().value;
      if (oldest !== undefined) this.sessions.delete(oldest);
    }
    this.sessions.set(endpointKey, { session, peer, ...leaf, generation: this.generation });
  }

  /**
   * Whether a dial that resumed `kept` may use it now. A resumed handshake shows no certificate, so
   * what was true when the dial took the session is checked again at its end: the server's serial
   * revoked since, its leaf expired, or a new identity or bundle installed while it was in flight
   * (after the running sessions were checked again, `onTrustChange`, so nothing would check this one).
   * Undefined: it may be used.
   */
  resumedRefusal(kept: KeptSession): ResumedRefusal | undefined {
    if (this.revoked.has(kept.serial)) return "revoked";
    if (this.options.clock.now() >= kept.notAfter) return "expired";
    if (kept.generation !== this.generation) return "trust_changed";
    return undefined;
  }

  /** Forget the session of an endpoint (after it failed). */
  forgetSession(endpointKey: string): void {
    this.sessions.delete(endpointKey);
  }
}

/** The certificates a TLS peer presented, DER, leaf first (at most 9; a loop in the issuer links ends it). */
export function peerChain(socket: tls.TLSSocket): Buffer[] {
  const cert = socket.getPeerCertificate(true) as tls.DetailedPeerCertificate | undefined;
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  for (let c: tls.DetailedPeerCertificate | undefined = cert; c?.raw; c = c.issuerCertificate) {
    if (seen.has(c.fingerprint256)) break;
    seen.add(c.fingerprint256);
    chain.push(c.raw);
    if (chain.length > 8) break;
  }
  return chain;
}
