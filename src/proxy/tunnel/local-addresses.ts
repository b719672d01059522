/**
 * The addresses of this host (or pod: the network namespace the sidecar runs in), for the rule that a
 * peer reaches the app at the address it was sent to, and nowhere else: in transparent mode the tunnel
 * and permissive plaintext dial the original destination, which must be one of these (not loopback).
 * Read from the interfaces at most once per `ttlMs` (addresses of a pod rarely change).
 */
import os from "node:os";
import type { Clock } from "../../core/clock.ts";
import { normalizeAddress } from "../../discovery/types.ts";

export interface LocalAddressSet {
  /** Whether `address` is assigned to an interface of this host. */
  has(address: string): boolean;
}

export class LocalAddresses implements LocalAddressSet {
  private addresses = new Set<string>();
  private readAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly clock: Clock,
    private readonly ttlMs = 5_000,
    private readonly read: () => ReturnType<typeof os.networkInterfaces> = os.networkInterfaces,
  ) {}

  has(address: string): boolean {
    const now = this.clock.monotonic();
    if (now - this.readAt > this.ttlMs) {
      const next = new Set<string>();
      for (const list of Object.values(this.read())) {
        for (const a of list ?? []) next.add(normalizeAddress(a.address.replace(/%.*$/, "")));
      }
      this.addresses = next;
      this.readAt = now;
    }
    return this.addresses.has(normalizeAddress(address));
  }
}
