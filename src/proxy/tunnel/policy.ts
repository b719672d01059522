/**
 * Authorization policy for the tunnel: may the peer with SPIFFE ID X reach local port P? Pure: no I/O,
 * no clock. Rules name ports (or all ports) and the identities allowed, where `*` matches within one
 * path segment (`spiffe://weft.local/ns/*\/sa/frontend`). For a port that some rule covers, only the
 * identities those rules allow get in; for a port no rule covers, `default` decides: any identity of
 * this trust domain (`allow-trust-domain`) or nobody (`deny`). The peer is the `SpiffeId` its
 * certificate proved; patterns are matched by `SpiffeId.matches`.
 */
import type { SpiffeId } from "../../ca/spiffe-id.ts";

export interface PolicyRule {
  /** A name for metrics and `weft explain` (default `rules[<index>]`). */
  readonly name?: string;
  /** Local ports this rule covers; omitted = every port. */
  readonly ports?: readonly number[];
  /** SPIFFE IDs or patterns allowed to connect. */
  readonly allow: readonly string[];
}

export interface PolicyConfig {
  readonly default: "allow-trust-domain" | "deny";
  readonly rules: readonly PolicyRule[];
}

/** Why a peer was denied (the `rule` field of the log line). */
export type PolicyDenial = "not_in_rules" | "default_deny" | "other_trust_domain";

/**
 * `rule`: the rule that allowed (its name, or `rules[<index>]`), `default` when no rule covers the port;
 * for a denial by rules, every covering rule joined with `,`.
 */
export type PolicyDecision =
  | { readonly allowed: true; readonly rule: string }
  | { readonly allowed: false; readonly why: PolicyDenial; readonly rule: string };

/** The label of rule `i`: its name, or `rules[i]`. */
export function ruleName(rules: readonly PolicyRule[], i: number): string {
  return rules[i]?.name ?? `rules[${i}]`;
}

/** May `peer` reach local `port`? See the module comment for the rules. */
export function mayReach(
  policy: PolicyConfig,
  trustDomain: string,
  peer: SpiffeId,
  port: number,
): PolicyDecision {
  const covering = policy.rules
    .map((r, i) => ({ r, i }))
    .filter(({ r }) => r.ports === undefined || r.ports.includes(port));
  if (covering.length > 0) {
    const hit = covering.find(({ r }) => r.allow.some((p) => peer.matches(p)));
    if (hit) return { allowed: true, rule: ruleName(policy.rules, hit.i) };
    return {
      allowed: false,
      why: "not_in_rules",
      rule: covering.map(({ i }) => ruleName(policy.rules, i)).join(","),
    };
  }
  if (policy.default === "deny") return { allowed: false, why: "default_deny", rule: "default" };
  return peer.trustDomain === trustDomain
    ? { allowed: true, rule: "default" }
    : { allowed: false, why: "other_trust_domain", rule: "default" };
}
