/** `meshca inspect`: a certificate or chain summarised for humans. */
import type { Command } from "commander";
import { jsonOption } from "../conventions.ts";
import { help, type MeshcaContext, readText, splitCertificates } from "./context.ts";
import { certificateFacts, describeCertificate } from "./describe.ts";

export function registerInspect(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path } = ctx;
  program
    .command("inspect")
    .description("show a certificate or chain for humans: ID, subject, issuer, serial, validity, key, role")
    .argument("<cert.pem>", "a PEM file with one or more certificates")
    .addOption(jsonOption())
    .addHelpText(
      "after",
      help([
        "meshca inspect certs/issued/default-web/chain.pem",
        "meshca inspect certs/root.pem --json | jq -r '.certificates[0].notAfter'",
      ]),
    )
    .action(async (file: string, opts: { json?: boolean }) => {
      const pem = await readText(path(file), "certificate");
      const certs = splitCertificates(pem, path(file));
      const now = deps.clock.now();
      ctx.emit(
        opts.json,
        { file: path(file), certificates: certs.map((c) => certificateFacts(c, now)) },
        () =>
          certs.forEach((cert, i) => {
            if (i > 0) out("");
            for (const line of describeCertificate(cert, now, `certificate ${i + 1} of ${certs.length}`))
              out(line);
          }),
      );
    });
}
