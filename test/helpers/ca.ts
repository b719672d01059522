/**
 * A fresh trust domain per test run (no fixtures on disk): `issue("default/backend")` gives a key and
 * chain for spiffe://<td>/ns/default/sa/backend.
 */
import {
  type CaMaterial,
  CertificateAuthority,
  createTrustDomain,
  type IssuedIdentity,
  type KeyAlgorithm,
} from "../../src/ca/authority.ts";
import { parseBundle, type TrustBundle } from "../../src/ca/verify.ts";
import type { Clock } from "../../src/core/clock.ts";

export interface TestCa {
  readonly trustDomain: string;
  readonly material: CaMaterial;
  readonly ca: CertificateAuthority;
  readonly bundle: TrustBundle;
  issue(
    idOrShorthand: string,
    opts?: { ttlMs?: number; notBefore?: Date; keyAlgorithm?: KeyAlgorithm },
  ): Promise<IssuedIdentity>;
}

export function idFor(trustDomain: string, idOrShorthand: string): string {
  if (idOrShorthand.startsWith("spiffe://")) return idOrShorthand;
  const [ns, sa] = idOrShorthand.split("/");
  return `spiffe://${trustDomain}/ns/${ns}/sa/${sa}`;
}

export async function createTestCa(opts: { trustDomain?: string; clock?: Clock } = {}): Promise<TestCa> {
  const trustDomain = opts.trustDomain ?? "weft.local";
  const material = await createTrustDomain({ trustDomain, ...(opts.clock ? { clock: opts.clock } : {}) });
  const ca = new CertificateAuthority(material, opts.clock ? { clock: opts.clock } : {});
  return {
    trustDomain,
    material,
    ca,
    bundle: parseBundle(material.bundlePem, trustDomain),
    issue: (idOrShorthand, o = {}) =>
      ca.issue({
        id: idFor(trustDomain, idOrShorthand),
        ...(o.ttlMs !== undefined ? { ttlMs: o.ttlMs } : {}),
        ...(o.keyAlgorithm ? { keyAlgorithm: o.keyAlgorithm } : {}),
        ...(o.notBefore !== undefined ? { notBefore: new Date(o.notBefore) } : {}),
      }),
  };
}
