/**
 * SPIFFE IDs as a value type: `spiffe://<trust-domain><path>`, parsed once, with one error reason per
 * rule of the SPIFFE-ID specification (scheme, trust-domain characters, path segments, no port,
 * userinfo, query or fragment). Weft's workload IDs have the Kubernetes-style path `/ns/<ns>/sa/<sa>`.
 */
import { WeftError } from "../core/errors.ts";

const TD_CHARS = /^[a-z0-9._-]+$/;
const SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;
/** The spec bounds the whole URI at 2048 bytes and the trust domain at 255. */
const MAX_ID_LENGTH = 2048;
const MAX_TD_LENGTH = 255;

function fail(reason: string, message: string): never {
  throw new WeftError("E_SPIFFE_ID", message, { reason });
}

export function isValidTrustDomain(td: string): boolean {
  return td.length > 0 && td.length <= MAX_TD_LENGTH && TD_CHARS.test(td);
}

export class SpiffeId {
  private constructor(
    readonly trustDomain: string,
    /** "" for the trust domain's own ID, else `/seg/seg...`. */
    readonly path: string,
  ) {}

  /** Parse and check every rule; throws `E_SPIFFE_ID` with the rule in `reason`. */
  static parse(text: string): SpiffeId {
    if (typeof text !== "string" || text.length === 0) fail("empty", "a SPIFFE ID cannot be empty");
    if (text.length > MAX_ID_LENGTH) fail("too_long", `a SPIFFE ID is at most ${MAX_ID_LENGTH} bytes`);
    const schemeEnd = text.indexOf("://");
    if (schemeEnd < 0 || text.slice(0, schemeEnd).toLowerCase() !== "spiffe") {
      fail("wrong_scheme", `"${text}" does not start with spiffe://`);
    }
    if (text.slice(0, schemeEnd) !== "spiffe")
      fail("wrong_scheme", `the scheme must be lower-case spiffe in "${text}"`);
    const rest = text.slice(schemeEnd + 3);
    if (rest.includes("?")) fail("query_not_allowed", `"${text}" has a query; SPIFFE IDs cannot`);
    if (rest.includes("#")) fail("fragment_not_allowed", `"${text}" has a fragment; SPIFFE IDs cannot`);
    const slash = rest.indexOf("/");
    const td = slash < 0 ? rest : rest.slice(0, slash);
    const path = slash < 0 ? "" : rest.slice(slash);
    if (td.length === 0) fail("missing_trust_domain", `"${text}" has no trust domain`);
    if (td.includes("@")) fail("userinfo_not_allowed", `"${text}" has user info; SPIFFE IDs cannot`);
    if (td.includes(":")) fail("port_not_allowed", `"${text}" has a port; SPIFFE IDs cannot`);
    if (td.length > MAX_TD_LENGTH)
      fail("trust_domain_too_long", `the trust domain is over ${MAX_TD_LENGTH} characters`);
    if (!TD_CHARS.test(td)) {
      fail(
        "bad_trust_domain_char",
        `trust domain "${td}" may only hold lower-case letters, digits, ".", "-" and "_"`,
      );
    }
    if (path !== "") SpiffeId.checkPath(path, text);
    return new SpiffeId(td, path);
  }

  private static checkPath(path: string, text: string): void {
    if (path === "/") fail("trailing_slash", `"${text}" ends with a slash`);
    const segments = path.slice(1).split("/");
    segments.forEach((seg, i) => {
      if (seg === "") {
        fail(
          i === segments.length - 1 ? "trailing_slash" : "empty_segment",
          `"${text}" has an empty path segment`,
        );
      }
      if (seg === "." || seg === "..") fail("dot_segment", `"${text}" has a "${seg}" path segment`);
      if (!SEGMENT_CHARS.test(seg)) {
        fail("bad_path_char", `path segment "${seg}" may only hold letters, digits, ".", "-" and "_"`);
      }
    });
  }

  /** `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`. */
  static workload(trustDomain: string, namespace: string, serviceAccount: string): SpiffeId {
    return SpiffeId.parse(`spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`);
  }

  /** The trust domain's own ID (no path), as signing certificates carry it. */
  static trustDomainId(trustDomain: string): SpiffeId {
    return SpiffeId.parse(`spiffe://${trustDomain}`);
  }

  get namespace(): string | undefined {
    return /^\/ns\/([^/]+)\/sa\/[^/]+$/.exec(this.path)?.[1];
  }

  get serviceAccount(): string | undefined {
    return /^\/ns\/[^/]+\/sa\/([^/]+)$/.exec(this.path)?.[1];
  }

  toString(): string {
    return `spiffe://${this.trustDomain}${this.path}`;
  }

  toJSON(): string {
    return this.toString();
  }

  equals(other: SpiffeId | string): boolean {
    return this.toString() === (typeof other === "string" ? other : other.toString());
  }

  /**
   * Glob match: `*` stands for any characters within one path segment (never a `/`), so
   * `spiffe://td/ns/prod/sa/*` matches every service account of namespace prod, and nothing deeper.
   */
  matches(pattern: string): boolean {
    if (!pattern.includes("*")) return this.equals(pattern);
    const re = new RegExp(
      `^${pattern
        .split("*")
        .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
        .join("[^/]*")}$`,
    );
    return re.test(this.toString());
  }
}
