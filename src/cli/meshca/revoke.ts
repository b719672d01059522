/** `meshca revoke`: revoke one certificate by serial, or every unexpired certificate of an identity. */
import { type Command, Option } from "commander";
import { REVOKE_REASONS, type RevokeReason } from "../../ca/serials.ts";
import { SpiffeId } from "../../ca/spiffe-id.ts";
import { errorMessage } from "../../core/errors.ts";
import { help, type MeshcaContext, usage } from "./context.ts";

export function registerRevoke(program: Command, ctx: MeshcaContext): void {
  const { out, loadCa, serialStore, dirOption } = ctx;
  program
    .command("revoke")
    .description(
      "revoke certificates: they can no longer renew, and sidecars refuse them once they fetch the list",
    )
    .option("--serial <hex>", "the serial of one certificate (meshca inspect shows it)")
    .option("--id <spiffe-id>", "every unexpired certificate of this identity")
    .addOption(
      new Option("--reason <reason>", "why (recorded, shown with the list)")
        .choices([...REVOKE_REASONS])
        .default("unspecified"),
    )
    .option("--list", "list the revoked certificates that have not expired, and exit")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca revoke --serial 5f1c0a7e9d2b4c11a0e3f6b8d9c2e4a1 --reason key_compromise",
        "meshca revoke --id spiffe://weft.local/ns/default/sa/web --reason key_compromise",
        "meshca revoke --list",
      ]),
    )
    .action(
      async (opts: { serial?: string; id?: string; reason: RevokeReason; list?: boolean; dir: string }) => {
        await loadCa(opts.dir);
        const store = serialStore(opts.dir);
        if (opts.list) {
          const revoked = (await store.list()).filter((r) => r.revoked);
          if (revoked.length === 0) out("no revoked certificates");
          for (const r of revoked) {
            out(
              `${r.serial}  ${r.id}  revoked ${r.revoked!.at} (${r.revoked!.reason}), expires ${r.notAfter}`,
            );
          }
          return;
        }
        if ((opts.serial === undefined) === (opts.id === undefined)) {
          throw usage("give exactly one of --serial <hex> or --id <spiffe-id>");
        }
        if (opts.serial !== undefined && !/^(0x)?[0-9a-fA-F:]{1,96}$/.test(opts.serial)) {
          throw usage(`--serial "${opts.serial}" is not a hexadecimal serial number`);
        }
        if (opts.id !== undefined) {
          try {
            SpiffeId.parse(opts.id);
          } catch (e) {
            throw usage(`--id "${opts.id}": ${errorMessage(e)}`);
          }
        }
        const target =
          opts.serial !== undefined
            ? { serial: opts.serial.replace(/^0x/, "").replaceAll(":", "") }
            : { id: SpiffeId.parse(opts.id!).toString() };
        const hit = await store.revoke(target, opts.reason);
        if (hit.length === 0) {
          out("already revoked; nothing changed");
          return;
        }
        for (const r of hit) out(`revoked ${r.serial} (${r.id}), valid until ${r.notAfter}: ${opts.reason}`);
        out(
          "  it can no longer renew; sidecars refuse it within their revocation refresh (identity.ca.revocationRefresh)",
        );
      },
    );
}
