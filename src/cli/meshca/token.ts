/** `meshca token create | list | revoke`: join tokens, stored only as hashes. */
import type { Command } from "commander";
import { errorMessage, isWeftError } from "../../core/errors.ts";
import { jsonOption } from "../conventions.ts";
import { countdown, help, type MeshcaContext, parseCliDuration, parsePositiveInt, usage } from "./context.ts";

export function registerToken(program: Command, ctx: MeshcaContext): void {
  const { out, loadCa, tokenStore, dirOption } = ctx;
  const token = program
    .command("token")
    .description("join tokens: one-time credentials a workload trades for its first certificate")
    .addHelpText(
      "after",
      help([
        "meshca token create --id spiffe://weft.local/ns/default/sa/web",
        "meshca token list",
        "meshca token revoke 3f9a1c",
      ]),
    );
  token
    .command("create")
    .description(
      "make a join token bound to an ID or pattern; the token is printed once and stored only as a hash",
    )
    .requiredOption("--id <id-or-pattern>", "SPIFFE ID, or a pattern where * matches within one path segment")
    .option("--ttl <duration>", "how long the token stays valid", parseCliDuration, 3_600_000)
    .option("--uses <n>", "how many certificates the token may obtain", parsePositiveInt, 1)
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca token create --id spiffe://weft.local/ns/default/sa/web",
        "meshca token create --id 'spiffe://weft.local/ns/batch/sa/*' --ttl 15m --uses 20",
        "TOKEN=$(meshca token create --id spiffe://weft.local/ns/default/sa/web 2>/dev/null)",
      ]),
    )
    .action((opts: { id: string; ttl: number; uses: number; dir: string; json?: boolean }) =>
      tokenCreate(ctx, opts),
    );
  token
    .command("list")
    .description("list join tokens (reference, identity, uses, expiry; never the tokens)")
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText("after", help(["meshca token list --dir certs", "meshca token list --json"]))
    .action((opts: { dir: string; json?: boolean }) => tokenList(ctx, opts));
  token
    .command("revoke")
    .description("spend every remaining use of a token, by its reference from `token list`")
    .argument("<ref>", "token reference (at least 6 hex digits)")
    .addOption(dirOption())
    .addOption(jsonOption())
    .addHelpText("after", help(["meshca token revoke 3f9a1c"]))
    .action(async (ref: string, opts: { dir: string; json?: boolean }) => {
      const { ca } = await loadCa(opts.dir);
      await tokenStore(opts.dir, ca.trustDomain).revoke(ref.toLowerCase());
      ctx.emit(opts.json, { revoked: ref.toLowerCase() }, () => out(`revoked token ${ref}`));
    });
}

async function tokenCreate(
  ctx: MeshcaContext,
  opts: { id: string; ttl: number; uses: number; dir: string; json?: boolean },
): Promise<void> {
  const { deps, out, err, loadCa, tokenStore } = ctx;
  const { ca } = await loadCa(opts.dir);
  const created = await tokenStore(opts.dir, ca.trustDomain)
    .create({ idPattern: opts.id, ttlMs: opts.ttl, maxUses: opts.uses })
    .catch((e: unknown) => {
      throw isWeftError(e, "E_SPIFFE_ID") ? usage(`--id: ${errorMessage(e)}`) : e;
    });
  ctx.emit(
    opts.json,
    {
      token: created.token,
      ref: created.ref,
      idPattern: created.idPattern,
      maxUses: created.maxUses,
      expiresAt: created.expiresAt.toISOString(),
    },
    () => {
      out(created.token);
      err(
        `token ${created.ref} for ${created.idPattern}: ${created.maxUses} use(s), expires ${created.expiresAt.toISOString()} ` +
          `(${countdown(created.expiresAt, deps.clock.now())}); it is shown only now`,
      );
    },
  );
}

async function tokenList(ctx: MeshcaContext, opts: { dir: string; json?: boolean }): Promise<void> {
  const { out, loadCa, tokenStore } = ctx;
  const { ca } = await loadCa(opts.dir);
  const tokens = await tokenStore(opts.dir, ca.trustDomain).list();
  if (opts.json) {
    const rows = tokens.map((t) => ({
      ref: t.ref,
      state: t.state,
      uses: t.uses,
      maxUses: t.maxUses,
      expiresAt: t.expiresAt.toISOString(),
      idPattern: t.idPattern,
    }));
    ctx.emit(true, { tokens: rows }, () => {});
    return;
  }
  if (tokens.length === 0) {
    out("no tokens");
    return;
  }
  out(["REF".padEnd(12), "STATE".padEnd(8), "USES".padEnd(9), "EXPIRES".padEnd(24), "ID"].join("  "));
  for (const t of tokens) {
    out(
      [
        t.ref,
        t.state.padEnd(8),
        `${t.uses}/${t.maxUses}`.padEnd(9),
        t.expiresAt.toISOString().padEnd(24),
        t.idPattern,
      ].join("  "),
    );
  }
}
