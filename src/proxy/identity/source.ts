/**
 * What every identity source is (`IdentitySource`: not ready until the first identity exists), and the
 * one check of key, chain and bundle together (`loadIdentity`) that the file and CA sources and
 * `weft validate` share.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { parseBundle, SvidVerifier } from "../../ca/verify.ts";
import type { Clock } from "../../core/clock.ts";
import { errorMessage, WeftError } from "../../core/errors.ts";
import type { Identity } from "../transport/tls-context.ts";

/** A source of the workload identity. */
export interface IdentitySource {
  /** Load or fetch the first identity. Resolves even when none is available yet (then not ready). */
  start(): Promise<void>;
  stop(): void;
  current(): Identity | undefined;
  /** Called with each new identity (the first one included). */
  onChange(listener: (identity: Identity) => void): void;
  /** For `/certs`: the kind of source and its state. */
  describe(): Record<string, unknown>;
  /** Called with the revoked serials each time the list the CA serves changes (CA sources only). */
  onRevoked?(listener: (serials: readonly string[]) => void): void;
}

/** PEM text -> DER of each CERTIFICATE block, in order. */
export function pemCertificates(pem: string): Buffer[] {
  const out: Buffer[] = [];
  const re = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;
  for (let m = re.exec(pem); m; m = re.exec(pem)) out.push(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
  return out;
}

/**
 * Check a key, chain and bundle together and describe them: the key must match the leaf, and the chain
 * must be a valid X.509-SVID of `trustDomain` now. Throws WeftError (E_CERT_INVALID / E_SVID) with why.
 */
export function loadIdentity(
  material: { keyPem: string; chainPem: string; bundlePem: string },
  trustDomain: string,
  clock: Clock,
): Identity {
  const chain = pemCertificates(material.chainPem);
  if (chain.length === 0) {
    throw new WeftError("E_PEM", "the certificate file holds no PEM certificate", {
      reason: "no_certificate",
    });
  }
  const leaf = new X509Certificate(chain[0]!);
  let keyMatches = false;
  try {
    keyMatches = leaf.checkPrivateKey(createPrivateKey(material.keyPem));
  } catch (err) {
    throw new WeftError("E_PEM", `the key file is not a PEM private key: ${errorMessage(err)}`, {
      reason: "bad_key",
      cause: err,
    });
  }
  if (!keyMatches) {
    throw new WeftError("E_CERT_INVALID", "the private key does not match the certificate", {
      reason: "key_mismatch",
    });
  }
  const verifier = new SvidVerifier(parseBundle(material.bundlePem, trustDomain), { clock });
  const id = verifier.verify(chain);
  return {
    id,
    keyPem: material.keyPem,
    chainPem: material.chainPem,
    bundlePem: material.bundlePem,
    serial: leaf.serialNumber.toUpperCase(),
    notBefore: Date.parse(leaf.validFrom),
    notAfter: Date.parse(leaf.validTo),
  };
}

/** Called with each new identity. */
export type IdentityListener = (identity: Identity) => void;
