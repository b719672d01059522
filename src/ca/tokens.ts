/**
 * Join tokens: how a workload gets its first certificate. An operator makes a token with
 * `meshca token create --id ...`; the token is bound to one SPIFFE ID or a pattern, expires, and may be
 * used once (default) or a bounded number of times. Only a SHA-256 hash of each token is stored, in
 * `<ca dir>/tokens.json` (mode 0600, written atomically); the token itself is shown once at creation.
 *
 * Consumption is a read-check-decrement-write under an in-process mutex plus a cross-process flock
 * (file-lock.ts, released by the kernel when a holder dies), so
 * a replay racing the first use never gets a second certificate, and a `token create` run by the CLI while
 * `meshca serve` runs neither loses a token nor resurrects a spent one.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { Clock } from "../core/clock.ts";
import { WeftError } from "../core/errors.ts";
import { LockedUpdates } from "./file-lock.ts";
import { SpiffeId } from "./spiffe-id.ts";
import { writeFileAtomic } from "./store.ts";

/** The file name of the token store inside a CA directory. */
export const TOKENS_FILE = "tokens.json";
/** Default token lifetime: one hour. */
export const DEFAULT_TOKEN_TTL_MS = 3_600_000;
/** Longest lifetime a token may have: 30 days. */
export const MAX_TOKEN_TTL_MS = 30 * 86_400_000;
/** Most uses one token may allow. */
export const MAX_TOKEN_USES = 10_000;
/** Spent and expired tokens are kept this long (so a replay says "used"/"expired"), then pruned. */
export const TOKEN_RETENTION_MS = 7 * 86_400_000;

const TOKEN_PREFIX = "wjt.";
const TOKEN_RE = /^wjt\.[A-Za-z0-9_-]{43}$/;

/** One stored token: its hash and its terms, never the token. */
export interface TokenRecord {
  /** Hex SHA-256 of the token string. */
  hash: string;
  /** The SPIFFE ID or pattern (`*` = any characters within one path segment) the token may obtain. */
  idPattern: string;
  createdAt: string;
  expiresAt: string;
  maxUses: number;
  uses: number;
}

/** What `create` returns: the token (show it once, store it nowhere) and its terms. */
export interface CreatedToken {
  token: string;
  /** Short public reference (hash prefix) for `list`/`revoke`. */
  ref: string;
  idPattern: string;
  expiresAt: Date;
  maxUses: number;
}

/** A token's terms as listed for an operator. */
export interface TokenInfo {
  ref: string;
  idPattern: string;
  createdAt: Date;
  expiresAt: Date;
  maxUses: number;
  uses: number;
  state: "active" | "expired" | "used";
}

/** A successful consumption; `refund()` gives the use back if issuance then failed on the CA's side. */
export interface TokenUse {
  ref: string;
  idPattern: string;
  usesLeft: number;
  refund(): Promise<void>;
}

interface TokenFile {
  version: 1;
  tokens: TokenRecord[];
}

export interface TokenStoreOptions {
  /** Path of the JSON file (usually `<ca dir>/tokens.json`). */
  file: string;
  clock: Clock;
  /** When set, tokens may only be bound to IDs of this trust domain. */
  trustDomain?: string;
}

/** Hex SHA-256 of a token string. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/**
 * Checks an ID or pattern a token may be bound to: a valid SPIFFE ID once each `*` is read as one
 * character, with `*` only in the path. Returns the pattern unchanged; throws E_SPIFFE_ID.
 */
export function validateIdPattern(pattern: string, trustDomain?: string): string {
  const probe = SpiffeId.parse(pattern.replaceAll("*", "x"));
  const authorityEnd = "spiffe://".length + probe.trustDomain.length;
  if (pattern.slice(0, authorityEnd).includes("*")) {
    throw new WeftError("E_SPIFFE_ID", `"${pattern}": a wildcard may only appear in the path`, {
      reason: "wildcard_in_trust_domain",
    });
  }
  if (trustDomain !== undefined && probe.trustDomain !== trustDomain) {
    throw new WeftError(
      "E_SPIFFE_ID",
      `"${pattern}" is in trust domain ${probe.trustDomain}, but this CA serves ${trustDomain}`,
      { reason: "wrong_trust_domain" },
    );
  }
  return pattern;
}

function idMatches(id: SpiffeId, pattern: string): boolean {
  return pattern.includes("*") ? id.matches(pattern) : id.toString() === pattern;
}

/** The join-token store of one CA directory. */
export class TokenStore {
  readonly file: string;
  private readonly clock: Clock;
  private readonly trustDomain: string | undefined;
  private readonly updates: LockedUpdates;

  constructor(options: TokenStoreOptions) {
    this.file = options.file;
    this.clock = options.clock;
    this.trustDomain = options.trustDomain;
    this.updates = new LockedUpdates(`${options.file}.lock`);
  }

  /**
   * Makes a token bound to `idPattern`, valid for `ttlMs`, usable `maxUses` times (default 1).
   * The returned `token` is the only copy that will ever exist.
   */
  async create(options: { idPattern: string; ttlMs?: number; maxUses?: number }): Promise<CreatedToken> {
    const idPattern = validateIdPattern(options.idPattern, this.trustDomain);
    const ttlMs = options.ttlMs ?? DEFAULT_TOKEN_TTL_MS;
    const maxUses = options.maxUses ?? 1;
    if (!Number.isFinite(ttlMs) || ttlMs <= 0 || ttlMs > MAX_TOKEN_TTL_MS) {
      throw new WeftError("E_USAGE", `token TTL must be above 0 and at most 30d, got ${ttlMs} ms`, {
        reason: "token_ttl",
      });
    }
    if (!Number.isInteger(maxUses) || maxUses < 1 || maxUses > MAX_TOKEN_USES) {
      throw new WeftError("E_USAGE", `token uses must be a whole number from 1 to ${MAX_TOKEN_USES}`, {
        reason: "token_uses",
      });
    }
    const token = TOKEN_PREFIX + randomBytes(32).toString("base64url");
    const hash = hashToken(token);
    const now = this.clock.now();
    const record: TokenRecord = {
      hash,
      idPattern,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlMs).toISOString(),
      maxUses,
      uses: 0,
    };
    await this.update((data) => {
      data.tokens.push(record);
    });
    return { token, ref: hash.slice(0, 12), idPattern, expiresAt: new Date(now + ttlMs), maxUses };
  }

  /**
   * Spends one use of `token` for identity `id`, or throws E_TOKEN_INVALID (malformed or unknown),
   * E_TOKEN_EXPIRED, E_TOKEN_USED or E_TOKEN_MISMATCH. Nothing is spent when it throws.
   */
  async consume(token: string, id: SpiffeId): Promise<TokenUse> {
    if (typeof token !== "string" || !TOKEN_RE.test(token)) {
      throw new WeftError("E_TOKEN_INVALID", "the join token is malformed; expect wjt. and 43 characters", {
        reason: "malformed",
      });
    }
    const hash = hashToken(token);
    let result: { idPattern: string; usesLeft: number } | undefined;
    await this.update((data) => {
      const record = data.tokens.find((r) => r.hash === hash);
      if (!record) {
        throw new WeftError("E_TOKEN_INVALID", "the join token is not known to this CA", {
          reason: "unknown",
        });
      }
      const expiresAt = Date.parse(record.expiresAt);
      if (!(this.clock.now() < expiresAt)) {
        throw new WeftError(
          "E_TOKEN_EXPIRED",
          `the join token expired at ${record.expiresAt}; make a new one with meshca token create`,
          { reason: "expired" },
        );
      }
      if (record.uses >= record.maxUses) {
        throw new WeftError(
          "E_TOKEN_USED",
          `the join token has been used ${record.uses} of ${record.maxUses} time(s); make a new one`,
          { reason: "used" },
        );
      }
      if (!idMatches(id, record.idPattern)) {
        throw new WeftError(
          "E_TOKEN_MISMATCH",
          `the join token is bound to ${record.idPattern}, not to ${id.toString()}`,
          { reason: "mismatch" },
        );
      }
      record.uses += 1;
      result = { idPattern: record.idPattern, usesLeft: record.maxUses - record.uses };
    });
    const spent = result!;
    let refunded = false;
    return {
      ref: hash.slice(0, 12),
      idPattern: spent.idPattern,
      usesLeft: spent.usesLeft,
      refund: async () => {
        if (refunded) return;
        refunded = true;
        await this.update((data) => {
          const record = data.tokens.find((r) => r.hash === hash);
          if (record && record.uses > 0) record.uses -= 1;
        });
      },
    };
  }

  /** Every stored token's terms and state (never a token or a full hash). */
  async list(): Promise<TokenInfo[]> {
    const data = await this.read();
    const now = this.clock.now();
    return data.tokens.map((r) => ({
      ref: r.hash.slice(0, 12),
      idPattern: r.idPattern,
      createdAt: new Date(r.createdAt),
      expiresAt: new Date(r.expiresAt),
      maxUses: r.maxUses,
      uses: r.uses,
      state: r.uses >= r.maxUses ? "used" : now >= Date.parse(r.expiresAt) ? "expired" : "active",
    }));
  }

  /** Spends every remaining use of the token whose reference starts with `ref` (at least 6 hex digits). */
  async revoke(ref: string): Promise<void> {
    if (!/^[0-9a-f]{6,64}$/.test(ref)) {
      throw new WeftError("E_USAGE", `"${ref}" is not a token reference; use the ref from meshca token list`);
    }
    await this.update((data) => {
      const hits = data.tokens.filter((r) => r.hash.startsWith(ref));
      if (hits.length !== 1) {
        throw new WeftError(
          "E_TOKEN_INVALID",
          hits.length === 0
            ? `no token has reference ${ref}`
            : `reference ${ref} is ambiguous; give more digits`,
          { reason: hits.length === 0 ? "unknown" : "ambiguous" },
        );
      }
      hits[0]!.uses = hits[0]!.maxUses;
    });
  }

  private async read(): Promise<TokenFile> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, tokens: [] };
      throw new WeftError("E_IO", `cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    return parseTokenFile(text, this.file);
  }

  /** Runs `mutate` on the current file contents and writes the result, one at a time per process. */
  private update(mutate: (data: TokenFile) => void): Promise<void> {
    return this.updates.run(async () => {
      const data = await this.read();
      mutate(data);
      const cutoff = this.clock.now() - TOKEN_RETENTION_MS;
      data.tokens = data.tokens.filter((r) => Date.parse(r.expiresAt) > cutoff);
      await writeFileAtomic(this.file, `${JSON.stringify(data, null, 2)}\n`, 0o600);
    });
  }
}

function parseTokenFile(text: string, file: string): TokenFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new WeftError("E_IO", `${file} is not valid JSON; restore it or remove it`, { cause: err });
  }
  const data = raw as Partial<TokenFile> | null;
  if (data?.version !== 1 || !Array.isArray(data.tokens)) {
    throw new WeftError("E_IO", `${file} is not a Weft token store (version 1)`);
  }
  for (const r of data.tokens) {
    const ok =
      r &&
      typeof r.hash === "string" &&
      /^[0-9a-f]{64}$/.test(r.hash) &&
      typeof r.idPattern === "string" &&
      typeof r.expiresAt === "string" &&
      !Number.isNaN(Date.parse(r.expiresAt)) &&
      Number.isInteger(r.maxUses) &&
      Number.isInteger(r.uses);
    if (!ok) throw new WeftError("E_IO", `${file} holds a malformed token record`);
  }
  return data as TokenFile;
}
