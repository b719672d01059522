/**
 * Which keys and CSR signatures Weft's CA signs for. One policy for every signing path (the CA server,
 * `meshca sign`, `meshca issue`, the server's own certificate): ECDSA P-256 and P-384, RSA 2048 to 4096
 * bits, Ed25519; a CSR signed with SHA-1 (or MD5, or anything but SHA-256/384/512 and Ed25519) is refused.
 * Every refusal is `E_CSR_INVALID` with a reason (`key_not_allowed`, `signature_not_allowed`) and a
 * message that names what is allowed.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { WeftError } from "../core/errors.ts";

/** Key types Weft itself generates (`meshca issue --key-alg`, `identity.ca.keyAlgorithm`). */
export type KeyAlgorithm = "ecdsa-p256" | "ecdsa-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096" | "ed25519";
export const KEY_ALGORITHMS = [
  "ecdsa-p256",
  "ecdsa-p384",
  "rsa-2048",
  "rsa-3072",
  "rsa-4096",
  "ed25519",
] as const;

export const ALLOWED_KEYS_TEXT = "ECDSA P-256 or P-384, RSA 2048 to 4096 bits, or Ed25519";
export const ALLOWED_SIGNATURES_TEXT = "SHA-256, SHA-384 or SHA-512 (ECDSA, RSA PKCS#1 v1.5), or Ed25519";
export const RSA_MIN_BITS = 2048;
export const RSA_MAX_BITS = 4096;
const CURVES: Record<string, string> = { prime256v1: "P-256", secp384r1: "P-384" };
const HASHES = new Set(["SHA-256", "SHA-384", "SHA-512"]);

function refuse(reason: string, message: string): WeftError {
  return new WeftError("E_CSR_INVALID", message, { reason });
}

/** Describes a public key the way the policy speaks of it (`RSA 1024 bits`, `ECDSA secp256k1`). */
export function describePublicKey(key: KeyObject): string {
  const d = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "rsa":
      return `RSA ${d.modulusLength} bits`;
    case "ec":
      return `ECDSA ${CURVES[d.namedCurve ?? ""] ?? d.namedCurve}`;
    case "ed25519":
      return "Ed25519";
    default:
      return String(key.asymmetricKeyType);
  }
}

/** Throws unless `spki` (DER SubjectPublicKeyInfo, or a KeyObject) is a key the CA signs for. */
export function checkPublicKey(spki: Uint8Array | ArrayBuffer | KeyObject): void {
  let key: KeyObject;
  try {
    key =
      spki instanceof Uint8Array || spki instanceof ArrayBuffer
        ? createPublicKey({ key: Buffer.from(spki as ArrayBuffer), format: "der", type: "spki" })
        : spki;
  } catch (err) {
    throw new WeftError("E_CSR_INVALID", "the public key does not parse", { reason: "bad_key", cause: err });
  }
  const d = key.asymmetricKeyDetails ?? {};
  const ok =
    (key.asymmetricKeyType === "rsa" &&
      (d.modulusLength ?? 0) >= RSA_MIN_BITS &&
      (d.modulusLength ?? 0) <= RSA_MAX_BITS) ||
    (key.asymmetricKeyType === "ec" && (d.namedCurve ?? "") in CURVES) ||
    key.asymmetricKeyType === "ed25519";
  if (!ok) {
    throw refuse(
      "key_not_allowed",
      `a ${describePublicKey(key)} key is not allowed; use ${ALLOWED_KEYS_TEXT}`,
    );
  }
}

/** Throws unless a CSR's signature algorithm (WebCrypto name and hash) is one the CA accepts. */
export function checkCsrSignature(alg: { name: string; hash: string | undefined }): void {
  const ok =
    alg.name === "Ed25519" ||
    ((alg.name === "ECDSA" || alg.name === "RSASSA-PKCS1-v1_5") &&
      alg.hash !== undefined &&
      HASHES.has(alg.hash));
  if (!ok) {
    const what = alg.hash ? `${alg.name} with ${alg.hash}` : alg.name;
    throw refuse(
      "signature_not_allowed",
      `the CSR is signed with ${what}, which is not allowed; sign it with ${ALLOWED_SIGNATURES_TEXT}`,
    );
  }
}
