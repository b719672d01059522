/**
 * Every certificate the CA issues, per identity, in `<ca dir>/serials.json` (0600, written atomically
 * under the same kind of flock as the token store): serial, SPIFFE ID, expiry, the root it chains to,
 * what renewed it, and whether it is revoked. This is revocation as far as short-lived certificates need
 * it (smallstep's passive revocation, plus a list for peers):
 *
 * - a revoked certificate cannot renew, and neither can one that a renewal already replaced
 *   (`superseded`), so a stolen key stops working when its certificate expires;
 * - the revoked serials that are not expired yet are served with the bundle (GET /v1/bundle as JSON),
 *   sidecars fetch them and refuse those serials on new handshakes and running pooled sessions;
 * - `meshca rotate --retire-root` asks which roots still anchor an unexpired certificate.
 *
 * Records are pruned a day after their certificate expires. A renewal claims the old serial before
 * signing (so two renewals racing with one certificate get one certificate), and a revocation that lands
 * while a renewal is in flight is carried over to the certificate that renewal produces.
 */
import { readFile, stat } from "node:fs/promises";
import type { Clock } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import { normalizeSerial } from "./cert-facts.ts";
import { LockedUpdates } from "./file-lock.ts";
import { writeFileAtomic } from "./store.ts";

export const SERIALS_FILE = "serials.json";
/** Records are kept this long after their certificate expired, then pruned. */
export const SERIAL_RETENTION_MS = 86_400_000;
export const REVOKE_REASONS = [
  "unspecified",
  "key_compromise",
  "superseded",
  "cessation_of_operation",
  "affiliation_changed",
] as const;
export type RevokeReason = (typeof REVOKE_REASONS)[number];

export interface SerialRecord {
  serial: string;
  id: string;
  notAfter: string;
  issuedAt: string;
  /** SHA-256 fingerprint of the bundle root this certificate chains to. */
  root: string;
  /** Serial of the certificate a renewal replaced this one with (`pending` while that renewal runs). */
  renewedBy?: string;
  revoked?: { at: string; reason: RevokeReason };
}

interface SerialFile {
  version: 1;
  certs: SerialRecord[];
}

/** A revoked certificate that has not expired: what peers must refuse. */
export interface RevokedSerial {
  serial: string;
  notAfter: string;
}

export class SerialStore {
  private readonly updates: LockedUpdates;
  private cache: { mtimeMs: number; size: number; data: SerialFile } | undefined;

  constructor(
    readonly file: string,
    private readonly clock: Clock,
  ) {
    this.updates = new LockedUpdates(`${file}.lock`);
  }

  /** Record a certificate just issued. */
  async record(cert: { serial: string; id: string; notAfter: Date; root: string }): Promise<void> {
    await this.update((data) => {
      data.certs.push(this.recordOf(cert));
    });
  }

  private recordOf(cert: { serial: string; id: string; notAfter: Date; root: string }): SerialRecord {
    return {
      serial: normalizeSerial(cert.serial),
      id: cert.id,
      notAfter: cert.notAfter.toISOString(),
      issuedAt: new Date(this.clock.now()).toISOString(),
      root: cert.root,
    };
  }

  /**
   * Claim `serial` (the presented certificate of `id`) for one renewal: throws E_REVOKED (reason
   * `revoked` or `superseded`) when it may not renew. Returns `complete` to call with the new certificate
   * (or with nothing, when signing failed, to give the claim back).
   */
  async claimRenewal(
    serialText: string,
    id: string,
    notAfter: Date,
    root: string,
  ): Promise<(next?: { serial: string; notAfter: Date; root: string }) => Promise<void>> {
    const serial = normalizeSerial(serialText);
    await this.update((data) => {
      let rec = data.certs.find((r) => r.serial === serial);
      if (!rec) {
        // Issued before records were kept, or by another copy of this CA: it renews once, and is
        // recorded from now on.
        rec = this.recordOf({ serial, id, notAfter, root });
        data.certs.push(rec);
      }
      if (rec.revoked) {
        throw new WeftError(
          "E_REVOKED",
          `the certificate ${serial} of ${id} was revoked at ${rec.revoked.at} (${rec.revoked.reason}); get a new one with a join token`,
          { reason: "revoked" },
        );
      }
      if (rec.renewedBy !== undefined) {
        throw new WeftError(
          "E_REVOKED",
          `the certificate ${serial} of ${id} was already renewed${rec.renewedBy === "pending" ? " (a renewal is in flight)" : ` (by ${rec.renewedBy})`}; renew with the newest certificate`,
          { reason: "superseded" },
        );
      }
      rec.renewedBy = "pending";
    });
    return async (next) => {
      await this.update((data) => {
        const rec = data.certs.find((r) => r.serial === serial);
        if (!next) {
          if (rec?.renewedBy === "pending") delete rec.renewedBy;
          return;
        }
        const added = this.recordOf({ ...next, id });
        if (rec) {
          rec.renewedBy = added.serial;
          // Revoked while this renewal ran: the new certificate is revoked with it.
          if (rec.revoked) added.revoked = { ...rec.revoked };
        }
        data.certs.push(added);
      });
    };
  }

  /**
   * Revoke one certificate by serial, or every unexpired certificate of an identity. Returns the serials
   * revoked now (already revoked ones are not repeated); throws E_USAGE when nothing matches.
   */
  async revoke(target: { serial: string } | { id: string }, reason: RevokeReason): Promise<SerialRecord[]> {
    const now = this.clock.now();
    const hit: SerialRecord[] = [];
    await this.update((data) => {
      const matches =
        "serial" in target
          ? data.certs.filter((r) => r.serial === normalizeSerial(target.serial))
          : data.certs.filter((r) => r.id === target.id && Date.parse(r.notAfter) > now);
      if (matches.length === 0) {
        throw new WeftError(
          "E_USAGE",
          "serial" in target
            ? `no certificate with serial ${normalizeSerial(target.serial)} is recorded by this CA (meshca revoke --list shows them)`
            : `no unexpired certificate of ${target.id} is recorded by this CA`,
          { reason: "not_found" },
        );
      }
      for (const r of matches) {
        if (r.revoked) continue;
        r.revoked = { at: new Date(now).toISOString(), reason };
        hit.push({ ...r });
      }
    });
    return hit;
  }

  /** Revoked certificates that have not expired yet (served with the bundle). */
  async revokedUnexpired(): Promise<RevokedSerial[]> {
    const now = this.clock.now();
    const data = await this.readCached();
    return data.certs
      .filter((r) => r.revoked && Date.parse(r.notAfter) > now)
      .map((r) => ({ serial: r.serial, notAfter: r.notAfter }));
  }

  /** Every record (for `meshca revoke --list` and root retirement). */
  async list(): Promise<SerialRecord[]> {
    return (await this.readCached()).certs.map((r) => ({ ...r }));
  }

  /** Re-parses the file only when its size or mtime changed (the bundle endpoint reads it often). */
  private async readCached(): Promise<SerialFile> {
    let st: { mtimeMs: number; size: number };
    try {
      st = await stat(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, certs: [] };
      throw new WeftError("E_IO", `cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    if (this.cache && this.cache.mtimeMs === st.mtimeMs && this.cache.size === st.size)
      return this.cache.data;
    const data = await this.read();
    this.cache = { mtimeMs: st.mtimeMs, size: st.size, data };
    return data;
  }

  private async read(): Promise<SerialFile> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, certs: [] };
      throw new WeftError("E_IO", `cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new WeftError("E_IO", `${this.file} is not valid JSON; restore it or remove it`, { cause: err });
    }
    const data = raw as Partial<SerialFile> | null;
    const ok =
      data?.version === 1 &&
      Array.isArray(data.certs) &&
      data.certs.every(
        (r) =>
          r &&
          typeof r.serial === "string" &&
          /^[0-9a-f]{1,64}$/.test(r.serial) &&
          typeof r.id === "string" &&
          typeof r.root === "string" &&
          !Number.isNaN(Date.parse(r.notAfter)),
      );
    if (!ok) throw new WeftError("E_IO", `${this.file} is not a Weft serial store (version 1)`);
    return data as SerialFile;
  }

  private update(mutate: (data: SerialFile) => void): Promise<void> {
    return this.updates.run(async () => {
      const data = await this.read();
      mutate(data);
      const cutoff = this.clock.now() - SERIAL_RETENTION_MS;
      data.certs = data.certs.filter((r) => Date.parse(r.notAfter) > cutoff);
      await writeFileAtomic(this.file, `${JSON.stringify(data)}\n`, 0o600);
      this.cache = undefined;
    });
  }
}
