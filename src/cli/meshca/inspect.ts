/** `meshca inspect`: a certificate or chain summarised for humans. */
import type { Command } from "commander";
import { help, type MeshcaContext, readText, splitCertificates } from "./context.ts";
import { describeCertificate } from "./describe.ts";

export function registerInspect(program: Command, ctx: MeshcaContext): void {
  const { deps, out, path } = ctx;
  program
    .command("inspect")
    .description("show a certificate or chain for humans: ID, subject, issuer, serial, validity, key, role")
    .argument("<cert.pem>", "a PEM file with one or more certificates")
    .addHelpText(
      "after",
      help(["meshca inspect certs/issued/default-web/chain.pem", "meshca inspect certs/root.pem"]),
    )
    .action(async (file: string) => {
      const pem = await readText(path(file), "certificate");
      const certs = splitCertificates(pem, path(file));
      certs.forEach((cert, i) => {
        if (i > 0) out("");
        for (const line of describeCertificate(
          cert,
          deps.clock.now(),
          `certificate ${i + 1} of ${certs.length}`,
        ))
          out(line);
      });
    });
}
