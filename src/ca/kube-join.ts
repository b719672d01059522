/**
 * Kubernetes join for `meshca serve`: a sidecar's first certificate is paid for with its projected
 * service-account token (audience `weft-ca`, short expiry) instead of a join token. The CA asks the API
 * server about the token with a TokenReview and accepts it only when
 *   - the API server authenticated it for our audience (`status.audiences` names it),
 *   - the user is a service account, `system:serviceaccount:<ns>:<sa>`,
 *   - the token is bound to a pod (`authentication.kubernetes.io/pod-name` in `extra`; the API server
 *     itself refuses a pod-bound token whose pod no longer exists);
 * and then the CSR may only ask for `spiffe://<td>/ns/<ns>/sa/<sa>`.
 *
 * Positive reviews are cached briefly (never past the token's own `exp`) and concurrent requests with
 * one token share one review, so a burst of CSRs costs one TokenReview. When the API server cannot be
 * asked, the answer is 503: fail closed, never sign. At start `checkPermissions` asks a
 * SelfSubjectAccessReview whether the CA may create TokenReviews, and names the missing rule if not.
 */
import { createHash } from "node:crypto";
import type { Clock } from "../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../core/errors.ts";
import { childOf, type Logger } from "../core/log.ts";
import { HttpsKubeApi, type KubeApi, KubeApiError } from "../k8s/client.ts";
import { resolveConnection } from "../k8s/config.ts";
import { SpiffeId } from "./spiffe-id.ts";

export const DEFAULT_KUBE_AUDIENCE = "weft-ca";
export const DEFAULT_REVIEW_CACHE_MS = 60_000;
const MAX_CACHE_ENTRIES = 10_000;
const POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name";
/** How long a denied permission check is asked again before it counts, and how often. */
export const RBAC_SETTLE_MS = 5_000;
const RBAC_RETRY_MS = 250;

export interface KubeJoinOptions {
  readonly api: KubeApi;
  readonly trustDomain: string;
  readonly audience?: string;
  readonly clock: Clock;
  readonly logger: Logger;
  /** How long a positive review is reused (default 60 s; never past the token's expiry). */
  readonly cacheMs?: number;
}

export interface KubeJoinResult {
  /** The one identity this token entitles its bearer to. */
  readonly id: SpiffeId;
  /** For the issuance log: `k8s:<ns>/<sa>/<pod>`. */
  readonly ref: string;
}

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; uid?: string; extra?: Record<string, string[]> };
}

function refused(reason: string, message: string): WeftError {
  return new WeftError("E_TOKEN_INVALID", message, { reason });
}

/** The `exp` claim of a JWT, without verifying it (only to bound how long a review is cached). */
function tokenExpiryMs(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

export class KubeJoin {
  readonly audience: string;
  private readonly cache = new Map<string, { result: KubeJoinResult; until: number }>();
  private readonly inflight = new Map<string, Promise<KubeJoinResult>>();
  private reviewCount = 0;

  constructor(private readonly o: KubeJoinOptions) {
    this.audience = o.audience ?? DEFAULT_KUBE_AUDIENCE;
  }

  /** TokenReviews sent so far. */
  get reviews(): number {
    return this.reviewCount;
  }

  /** The identity `token` entitles its bearer to; throws E_TOKEN_INVALID (401) or E_KUBE_* (503). */
  async authenticate(token: string): Promise<KubeJoinResult> {
    const key = createHash("sha256").update(token).digest("base64url");
    const now = this.o.clock.now();
    const hit = this.cache.get(key);
    if (hit && hit.until > now) return hit.result;
    if (hit) this.cache.delete(key);
    const pending = this.inflight.get(key);
    if (pending) return pending;
    const review = this.review(token).finally(() => this.inflight.delete(key));
    this.inflight.set(key, review);
    const result = await review;
    const exp = tokenExpiryMs(token);
    const until = Math.min(
      now + (this.o.cacheMs ?? DEFAULT_REVIEW_CACHE_MS),
      exp ?? Number.POSITIVE_INFINITY,
    );
    if (until > now) {
      if (this.cache.size >= MAX_CACHE_ENTRIES) {
        for (const [k, v] of this.cache) if (v.until <= now) this.cache.delete(k);
        if (this.cache.size >= MAX_CACHE_ENTRIES) this.cache.delete(this.cache.keys().next().value!);
      }
      this.cache.set(key, { result, until });
    }
    return result;
  }

  private async review(token: string): Promise<KubeJoinResult> {
    this.reviewCount++;
    let status: TokenReviewStatus;
    try {
      const answer = await this.o.api.request<{ status?: TokenReviewStatus }>({
        method: "POST",
        path: "/apis/authentication.k8s.io/v1/tokenreviews",
        body: {
          apiVersion: "authentication.k8s.io/v1",
          kind: "TokenReview",
          spec: { token, audiences: [this.audience] },
        },
        timeoutMs: 10_000,
      });
      status = answer.status ?? {};
    } catch (err) {
      // Fail closed: a CA that cannot ask the API server signs nothing.
      if (err instanceof KubeApiError && err.status === 403) {
        throw new WeftError(
          "E_KUBE_RBAC",
          "the CA may not create tokenreviews (authentication.k8s.io): grant it that rule",
          { reason: "rbac", cause: err },
        );
      }
      if (isWeftError(err)) {
        throw new WeftError("E_KUBE_UNREACHABLE", `token review failed: ${errorMessage(err)}`, {
          reason: "review_failed",
          cause: err,
        });
      }
      throw err;
    }
    if (!status.authenticated) {
      const why = status.error ?? "not authenticated";
      throw refused(
        /expired/i.test(why) ? "expired" : "not_authenticated",
        `the API server refused the token: ${why}`,
      );
    }
    if (!(status.audiences ?? []).includes(this.audience)) {
      throw refused("wrong_audience", `the token is not for audience ${this.audience}`);
    }
    const m = /^system:serviceaccount:([a-z0-9][a-z0-9-]*):([a-z0-9][a-z0-9.-]*)$/.exec(
      status.user?.username ?? "",
    );
    if (!m) {
      throw refused(
        "not_service_account",
        `the token's user ${JSON.stringify(status.user?.username ?? "")} is not a service account`,
      );
    }
    const pod = status.user?.extra?.[POD_NAME_EXTRA]?.[0];
    if (!pod) {
      throw refused(
        "not_pod_bound",
        "the token is not bound to a pod: mount a projected service-account token",
      );
    }
    const [, ns, sa] = m;
    const id = SpiffeId.parse(`spiffe://${this.o.trustDomain}/ns/${ns}/sa/${sa}`);
    return { id, ref: `k8s:${ns}/${sa}/${pod}` };
  }

  /**
   * Whether this CA may create TokenReviews, asked of the API server (SelfSubjectAccessReview); throws
   * E_KUBE_RBAC naming the missing rule, or E_KUBE_UNREACHABLE. A denial is asked again for
   * `RBAC_SETTLE_MS` before it counts: the API server's authorizer learns of a ClusterRoleBinding from
   * its own watch, so a binding applied together with the CA (one `kubectl apply`) can be denied for
   * a moment after it was created.
   */
  async checkPermissions(): Promise<void> {
    const rule = { group: "authentication.k8s.io", resource: "tokenreviews", verb: "create" };
    const deadline = this.o.clock.now() + RBAC_SETTLE_MS;
    for (let asked = 1; !(await this.mayReviewTokens(rule)); asked++) {
      if (this.o.clock.now() >= deadline) {
        throw new WeftError(
          "E_KUBE_RBAC",
          `missing RBAC rule: apiGroups ["${rule.group}"], resources ["${rule.resource}"], verbs ["${rule.verb}"] (bind the weft-ca ClusterRole to this service account)`,
          { reason: "rbac" },
        );
      }
      if (asked === 1) {
        this.o.logger.info(
          { rule, settleMs: RBAC_SETTLE_MS },
          "kubernetes join: not allowed yet; asking again while RBAC settles",
        );
      }
      await new Promise<void>((resolve) => this.o.clock.setTimeout(resolve, RBAC_RETRY_MS));
    }
    this.o.logger.info({ rule }, "kubernetes join: permissions checked");
  }

  private async mayReviewTokens(rule: { group: string; resource: string; verb: string }): Promise<boolean> {
    let answer: { status?: { allowed?: boolean; reason?: string } };
    try {
      answer = await this.o.api.request({
        method: "POST",
        path: "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body: {
          apiVersion: "authorization.k8s.io/v1",
          kind: "SelfSubjectAccessReview",
          spec: { resourceAttributes: rule },
        },
        timeoutMs: 10_000,
      });
    } catch (err) {
      throw new WeftError("E_KUBE_UNREACHABLE", `cannot check the CA's permissions: ${errorMessage(err)}`, {
        reason: "access_review_failed",
        cause: err,
      });
    }
    return answer.status?.allowed === true;
  }
}

/**
 * The Kubernetes join `meshca serve --kubernetes` runs: a client from `kubeconfig` (else `KUBECONFIG`,
 * else in-cluster), its permissions checked before the server listens. `close()` ends the client.
 */
export async function startKubeJoin(
  options: { kubeconfig?: string; audience?: string; trustDomain: string },
  deps: { env: Readonly<Record<string, string | undefined>>; clock: Clock; logger: Logger },
): Promise<{ join: KubeJoin; close(): void }> {
  const api = new HttpsKubeApi(
    resolveConnection(options.kubeconfig ? { kubeconfig: options.kubeconfig } : {}, deps.env, deps.clock),
  );
  const join = new KubeJoin({
    api,
    trustDomain: options.trustDomain,
    ...(options.audience ? { audience: options.audience } : {}),
    clock: deps.clock,
    logger: childOf(deps.logger, { component: "kube-join" }),
  });
  try {
    await join.checkPermissions();
  } catch (err) {
    api.close();
    throw err;
  }
  return { join, close: () => api.close() };
}
