/**
 * The `meshca` command line: every operator action on a trust domain (init, issue, sign, join tokens,
 * the CA server, bundle, inspect, verify, PKCS#12 export, rotation). This module only parses arguments and
 * prints; the work is done by `src/ca/*`. It is built around injected dependencies (streams, clock, cwd,
 * env, logger, shutdown signal) so tests run it in-process; `meshca-main.ts` wires the real ones.
 *
 * Exit codes: 0 success, 1 failure (including "chain is invalid" from `verify`), 2 usage error.
 */
import { X509Certificate } from "node:crypto";
import { access, readFile, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import {
  CertificateAuthority,
  createTrustDomain,
  type IssuedIdentity,
  type KeyAlgorithm,
  rotateIntermediate,
  rotateRoot,
} from "../ca/authority.ts";
import { createCaServer, DEFAULT_LISTEN, parseListenAddress } from "../ca/server.ts";
import { SpiffeId } from "../ca/spiffe-id.ts";
import { CaStore, writeFileAtomic, writeIdentityDir } from "../ca/store.ts";
import { TOKENS_FILE, TokenStore } from "../ca/tokens.ts";
import { bundleTrustDomain, parseBundle, verifySvid } from "../ca/verify.ts";
import { formatDuration, parseDuration } from "../config/units.ts";
import type { Clock } from "../core/clock.ts";
import { errorMessage, isWeftError, WeftError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

const DEFAULT_DIR = "certs";
const KEY_ALGORITHMS: KeyAlgorithm[] = ["ecdsa-p256", "rsa-2048", "rsa-3072", "ed25519"];

/** What the CLI needs from the outside world. */
export interface MeshcaDeps {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  clock: Clock;
  /** Relative paths (`--dir`, files) resolve against this. */
  cwd: string;
  env: Record<string, string | undefined>;
  /** Used by `serve` for its JSON log lines. */
  logger: Logger;
  /** `serve` runs until this resolves (SIGINT/SIGTERM in the real entry point). */
  waitForShutdown: () => Promise<void>;
  /** Called once `serve` listens, with its URL (tests use it instead of parsing stdout). */
  onServing?: (info: { url: string; port: number }) => void;
}

const EXIT_CODES_HELP = `
EXIT CODES
  0  success
  1  failure (the error is one line on stderr)
  2  usage error (unknown option, missing or malformed argument)`;

function help(examples: string[], exitCodes = EXIT_CODES_HELP): string {
  return `\nEXAMPLES\n${examples.map((e) => `  ${e}`).join("\n")}\n${exitCodes}\n`;
}

/** A duration with a unit (`30s`, `15m`, `24h`, `7d`, `1h30m`), for option parsers; rejects bare numbers. */
export function parseCliDuration(value: string): number {
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(value.trim())) {
    throw new InvalidArgumentError(`"${value}" is not a duration; use e.g. 30s, 15m, 24h, 7d`);
  }
  const ms = parseDuration(value);
  if (ms <= 0) throw new InvalidArgumentError("a duration must be above zero");
  return ms;
}

function parsePositiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new InvalidArgumentError(`"${value}" is not a whole number of at least 1`);
  }
  return Number(value);
}

function usage(message: string): WeftError {
  return new WeftError("E_USAGE", message);
}

/** Builds the `meshca` program. Parse with `parseAsync(argv, { from: "user" })`, or use `runMeshca`. */
export function buildMeshcaProgram(deps: MeshcaDeps): Command {
  const out = (line: string) => deps.stdout.write(`${line}\n`);
  const err = (line: string) => deps.stderr.write(`${line}\n`);
  const path = (p: string) => resolve(deps.cwd, p);
  const storeAt = (dir: string) => new CaStore(path(dir));

  async function loadCa(dir: string): Promise<{ store: CaStore; ca: CertificateAuthority }> {
    const store = storeAt(dir);
    if (!(await store.exists())) {
      throw new WeftError(
        "E_IO",
        `no CA in ${path(dir)}; create one with: meshca init --trust-domain <td> --dir ${dir}`,
      );
    }
    const material = await store.load();
    return { store, ca: new CertificateAuthority(material, { clock: deps.clock }) };
  }

  function tokenStore(dir: string, trustDomain: string): TokenStore {
    return new TokenStore({ file: resolve(path(dir), TOKENS_FILE), clock: deps.clock, trustDomain });
  }

  const program = new Command("meshca");
  program
    .description("Weft's certificate authority: SPIFFE identities for a trust domain")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => deps.stdout.write(s),
      writeErr: (s) => deps.stderr.write(s),
    })
    .showSuggestionAfterError(true)
    .helpCommand(true)
    .addHelpText(
      "after",
      help([
        "meshca init --trust-domain weft.local",
        "meshca issue --ns default --sa web --ttl 24h",
        "meshca token create --id spiffe://weft.local/ns/default/sa/web",
        "meshca serve --listen 127.0.0.1:15443",
        "meshca inspect certs/issued/default-web/cert.pem",
      ]),
    );

  const dirOption = () => new Option("--dir <dir>", "CA directory").default(DEFAULT_DIR);

  // ---- init ----
  program
    .command("init")
    .description("create a trust domain: root CA, intermediate signing CA and trust bundle")
    .requiredOption("--trust-domain <td>", "trust domain name, e.g. weft.local")
    .addOption(dirOption())
    .option(
      "--root-ttl <duration>",
      "lifetime of the root CA (default: the library's, 10 years)",
      parseCliDuration,
    )
    .option("--intermediate-ttl <duration>", "lifetime of the intermediate CA", parseCliDuration)
    .option("--force", "replace an existing CA in --dir (its issued certificates stop verifying)")
    .addHelpText(
      "after",
      help([
        "meshca init --trust-domain weft.local",
        "meshca init --trust-domain prod.example --dir /etc/weft/ca --intermediate-ttl 90d",
        "meshca init --trust-domain weft.local --force     # throw the old CA away",
      ]),
    )
    .action(
      async (opts: {
        trustDomain: string;
        dir: string;
        rootTtl?: number;
        intermediateTtl?: number;
        force?: boolean;
      }) => {
        const store = storeAt(opts.dir);
        if ((await store.exists()) && !opts.force) {
          throw new WeftError(
            "E_EXISTS",
            `a CA already exists in ${path(opts.dir)}; pass --force to replace it`,
          );
        }
        let probe: SpiffeId;
        try {
          probe = SpiffeId.parse(`spiffe://${opts.trustDomain}`);
        } catch (e) {
          throw usage(`--trust-domain "${opts.trustDomain}": ${errorMessage(e)}`);
        }
        const material = await createTrustDomain({
          trustDomain: probe.trustDomain,
          ...(opts.rootTtl ? { rootTtlMs: opts.rootTtl } : {}),
          ...(opts.intermediateTtl ? { intermediateTtlMs: opts.intermediateTtl } : {}),
          clock: deps.clock,
        });
        await store.save(material, { force: Boolean(opts.force) });
        if (opts.force) await rm(resolve(path(opts.dir), TOKENS_FILE), { force: true });
        const root = new X509Certificate(material.rootCertPem);
        out(`created trust domain ${material.trustDomain} in ${path(opts.dir)}`);
        out(
          `  root CA:         ${root.subject.replaceAll("\n", ", ")}, valid until ${new Date(root.validTo).toISOString()}`,
        );
        out(`  root sha256:     ${root.fingerprint256}`);
        out(`  trust bundle:    meshca bundle --dir ${opts.dir}`);
      },
    );

  // ---- issue ----
  program
    .command("issue")
    .description("make a key and a leaf certificate for a workload identity (key written 0600)")
    .option("--id <spiffe-id>", "the SPIFFE ID, e.g. spiffe://weft.local/ns/default/sa/web")
    .option("--ns <namespace>", "namespace (with --sa, instead of --id)")
    .option("--sa <service-account>", "service account (with --ns)")
    .option(
      "--ttl <duration>",
      "certificate lifetime (default 24h, never past the intermediate)",
      parseCliDuration,
    )
    .addOption(
      new Option("--key-alg <algorithm>", "leaf key algorithm").choices(KEY_ALGORITHMS).default("ecdsa-p256"),
    )
    .option(
      "--out <dir>",
      "write key.pem, cert.pem, chain.pem, bundle.pem here (default: <dir>/issued/<name>)",
    )
    .option("--name <name>", "name of the identity's folder under <dir>/issued (default <ns>-<sa>)")
    .option("--force", "overwrite the identity's existing files")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca issue --ns default --sa web",
        "meshca issue --id spiffe://weft.local/ns/payments/sa/api --ttl 1h --out ./api-identity",
        "meshca issue --ns legacy --sa billing --key-alg rsa-2048   # for peers without ECDSA",
      ]),
    )
    .action(
      async (opts: {
        id?: string;
        ns?: string;
        sa?: string;
        ttl?: number;
        keyAlg: KeyAlgorithm;
        out?: string;
        name?: string;
        force?: boolean;
        dir: string;
      }) => {
        const { store, ca } = await loadCa(opts.dir);
        const id = identityFromOptions(opts, ca.trustDomain);
        const name = opts.name ?? defaultName(id);
        if (!/^[A-Za-z0-9._-]{1,128}$/.test(name) || name === "." || name === "..") {
          throw usage(`--name "${name}" may only hold letters, digits, ".", "_" and "-"`);
        }
        const files = opts.out ? flatPaths(path(opts.out)) : issuedPaths(path(opts.dir), name);
        if (!opts.force) {
          for (const f of Object.values(files)) {
            if (await fileExists(f)) {
              throw new WeftError("E_EXISTS", `${f} exists; pass --force to replace the identity's files`);
            }
          }
        }
        const identity = await ca.issue({
          id,
          ...(opts.ttl ? { ttlMs: opts.ttl } : {}),
          keyAlgorithm: opts.keyAlg,
        });
        const written = opts.out
          ? await writeFlat(path(opts.out), identity)
          : await store.writeIssued(name, identity, { force: Boolean(opts.force) });
        out(`issued ${identity.id.toString()}`);
        out(`  serial:     ${identity.serial}`);
        out(
          `  not after:  ${identity.notAfter.toISOString()} (${countdown(identity.notAfter, deps.clock.now())})`,
        );
        out(`  key:        ${written.keyPath}`);
        out(`  cert:       ${written.certPath}`);
        out(`  chain:      ${written.chainPath}`);
        out(`  bundle:     ${written.bundlePath}`);
      },
    );

  // ---- sign ----
  program
    .command("sign")
    .description("sign a workload CSR (PEM) and print the chain (leaf + intermediate)")
    .argument("<csr.pem>", "the CSR file; it must ask for exactly one SPIFFE ID")
    .option(
      "--id-allow <pattern>",
      "only sign IDs matching this ID or pattern (* = one path segment); default: any ID of the trust domain",
    )
    .option("--ttl <duration>", "certificate lifetime (default 24h)", parseCliDuration)
    .option("--out <chain.pem>", "write the chain here instead of stdout")
    .option("--force", "overwrite --out if it exists")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca sign web.csr --id-allow 'spiffe://weft.local/ns/default/sa/*' > web-chain.pem",
        "meshca sign api.csr --ttl 1h --out api-chain.pem",
      ]),
    )
    .action(
      async (
        csrFile: string,
        opts: { idAllow?: string; ttl?: number; out?: string; force?: boolean; dir: string },
      ) => {
        const { ca } = await loadCa(opts.dir);
        const csrPem = await readText(path(csrFile), "CSR");
        if (opts.idAllow !== undefined) {
          try {
            SpiffeId.parse(opts.idAllow.replaceAll("*", "x"));
          } catch (e) {
            throw usage(`--id-allow "${opts.idAllow}": ${errorMessage(e)}`);
          }
        }
        if (opts.out && !opts.force && (await fileExists(path(opts.out)))) {
          throw new WeftError("E_EXISTS", `${path(opts.out)} exists; pass --force to replace it`);
        }
        const allow = opts.idAllow;
        const issued = await ca.signCsr(csrPem, {
          authorize: (id) => {
            const ok =
              allow === undefined ? true : allow.includes("*") ? id.matches(allow) : id.toString() === allow;
            if (!ok) {
              throw new WeftError(
                "E_CSR_IDENTITY",
                `the CSR asks for ${id.toString()}, which --id-allow ${allow} does not allow`,
                {
                  reason: "not_allowed",
                },
              );
            }
          },
          ...(opts.ttl ? { ttlMs: opts.ttl } : {}),
        });
        if (opts.out) {
          await writeFileAtomic(path(opts.out), issued.chainPem, 0o644);
          err(
            `signed ${issued.id.toString()} serial ${issued.serial}, valid until ${issued.notAfter.toISOString()}: ${path(opts.out)}`,
          );
        } else {
          deps.stdout.write(issued.chainPem.endsWith("\n") ? issued.chainPem : `${issued.chainPem}\n`);
          err(
            `signed ${issued.id.toString()} serial ${issued.serial}, valid until ${issued.notAfter.toISOString()}`,
          );
        }
      },
    );

  // ---- token ----
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
    .addHelpText(
      "after",
      help([
        "meshca token create --id spiffe://weft.local/ns/default/sa/web",
        "meshca token create --id 'spiffe://weft.local/ns/batch/sa/*' --ttl 15m --uses 20",
        "TOKEN=$(meshca token create --id spiffe://weft.local/ns/default/sa/web 2>/dev/null)",
      ]),
    )
    .action(async (opts: { id: string; ttl: number; uses: number; dir: string }) => {
      const { ca } = await loadCa(opts.dir);
      const created = await tokenStore(opts.dir, ca.trustDomain)
        .create({ idPattern: opts.id, ttlMs: opts.ttl, maxUses: opts.uses })
        .catch((e: unknown) => {
          throw isWeftError(e, "E_SPIFFE_ID") ? usage(`--id: ${errorMessage(e)}`) : e;
        });
      out(created.token);
      err(
        `token ${created.ref} for ${created.idPattern}: ${created.maxUses} use(s), expires ${created.expiresAt.toISOString()} ` +
          `(${countdown(created.expiresAt, deps.clock.now())}); it is shown only now`,
      );
    });
  token
    .command("list")
    .description("list join tokens (reference, identity, uses, expiry; never the tokens)")
    .addOption(dirOption())
    .addHelpText("after", help(["meshca token list --dir certs"]))
    .action(async (opts: { dir: string }) => {
      const { ca } = await loadCa(opts.dir);
      const tokens = await tokenStore(opts.dir, ca.trustDomain).list();
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
    });
  token
    .command("revoke")
    .description("spend every remaining use of a token, by its reference from `token list`")
    .argument("<ref>", "token reference (at least 6 hex digits)")
    .addOption(dirOption())
    .addHelpText("after", help(["meshca token revoke 3f9a1c"]))
    .action(async (ref: string, opts: { dir: string }) => {
      const { ca } = await loadCa(opts.dir);
      await tokenStore(opts.dir, ca.trustDomain).revoke(ref.toLowerCase());
      out(`revoked token ${ref}`);
    });

  // ---- serve ----
  program
    .command("serve")
    .description("run the CA server: sign CSRs for join tokens, renew over mTLS, serve the bundle")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--san <name...>", "extra DNS names or IPs for the server certificate (repeatable)")
    .option("--leaf-ttl <duration>", "lifetime of the certificates it signs (default 24h)", parseCliDuration)
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca serve",
        "meshca serve --listen 0.0.0.0:15443 --san ca.weft.local --san 10.0.0.2",
        "curl --cacert certs/bundle.pem https://127.0.0.1:15443/v1/bundle",
      ]),
    )
    .action(async (opts: { listen: string; san?: string[]; leafTtl?: number; dir: string }) => {
      const listen = parseListenAddress(opts.listen);
      const { ca } = await loadCa(opts.dir);
      const server = await createCaServer({
        ca,
        tokens: tokenStore(opts.dir, ca.trustDomain),
        logger: deps.logger,
        clock: deps.clock,
        listen,
        ...(opts.san ? { sans: opts.san } : {}),
        ...(opts.leafTtl ? { leafTtlMs: opts.leafTtl } : {}),
      });
      out(`serving ${ca.trustDomain} at ${server.url}`);
      deps.onServing?.({ url: server.url, port: server.port });
      try {
        await deps.waitForShutdown();
      } finally {
        await server.close();
      }
    });

  // ---- bundle ----
  program
    .command("bundle")
    .description("print the trust bundle (every root of the trust domain, PEM)")
    .option("--out <file>", "write it to a file instead of stdout")
    .option("--force", "overwrite --out if it exists")
    .addOption(dirOption())
    .addHelpText(
      "after",
      help(["meshca bundle > bundle.pem", "meshca bundle --out /etc/weft/bundle.pem --force"]),
    )
    .action(async (opts: { out?: string; force?: boolean; dir: string }) => {
      const { ca } = await loadCa(opts.dir);
      const pem = ca.bundlePem();
      if (opts.out) {
        if (!opts.force && (await fileExists(path(opts.out)))) {
          throw new WeftError("E_EXISTS", `${path(opts.out)} exists; pass --force to replace it`);
        }
        await writeFileAtomic(path(opts.out), pem, 0o644);
        err(`wrote the ${ca.trustDomain} bundle to ${path(opts.out)}`);
      } else {
        deps.stdout.write(pem.endsWith("\n") ? pem : `${pem}\n`);
      }
    });

  // ---- inspect ----
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

  // ---- verify ----
  program
    .command("verify")
    .description("check a chain against a trust bundle and the SPIFFE X.509-SVID rules")
    .argument("<chain.pem>", "leaf first, then intermediates")
    .option("--bundle <file>", "trust bundle PEM (default: the bundle of the CA in --dir)")
    .option(
      "--trust-domain <td>",
      "trust domain of --bundle (default: the one its roots name, or the CA's in --dir); never taken from the leaf",
    )
    .option("--id <spiffe-id>", "also require this exact SPIFFE ID")
    .addOption(
      new Option("--role <role>", "also check the extended key usage for this TLS role").choices([
        "client",
        "server",
      ]),
    )
    .addOption(dirOption())
    .addHelpText(
      "after",
      help(
        [
          "meshca verify certs/issued/default-web/chain.pem",
          "meshca verify chain.pem --bundle bundle.pem --id spiffe://weft.local/ns/default/sa/web",
        ],
        `
EXIT CODES
  0  the chain is a valid X.509-SVID (its SPIFFE ID is printed)
  1  it is not (the broken rule is on stderr) or a file could not be read
  2  usage error`,
      ),
    )
    .action(
      async (
        file: string,
        opts: { bundle?: string; trustDomain?: string; id?: string; role?: "client" | "server"; dir: string },
      ) => {
        const chainPem = await readText(path(file), "chain");
        let expected: SpiffeId | undefined;
        if (opts.id !== undefined) {
          try {
            expected = SpiffeId.parse(opts.id);
          } catch (e) {
            throw usage(`--id "${opts.id}": ${errorMessage(e)}`);
          }
        }
        let bundlePem: string;
        let trustDomain = opts.trustDomain;
        if (opts.bundle) {
          bundlePem = await readText(path(opts.bundle), "bundle");
          // The trust domain comes from the bundle (or the operator), never from the leaf being judged:
          // otherwise a leaf of any trust domain signed under these roots would vouch for itself.
          const named = bundleTrustDomain(bundlePem);
          if (trustDomain !== undefined && named !== undefined && named !== trustDomain) {
            throw usage(
              `--trust-domain ${trustDomain} differs from the trust domain the bundle names (${named})`,
            );
          }
          trustDomain ??= named;
          if (trustDomain === undefined) {
            throw usage(
              `the bundle ${path(opts.bundle)} names no trust domain (no spiffe:// URI SAN on its roots); give --trust-domain`,
            );
          }
        } else {
          const { ca } = await loadCa(opts.dir);
          bundlePem = ca.bundlePem();
          trustDomain ??= ca.trustDomain;
        }
        const id = verifySvid(chainPem, parseBundle(bundlePem, trustDomain), {
          now: new Date(deps.clock.now()),
          role: opts.role ?? "any",
        });
        if (expected && !id.equals(expected)) {
          throw new WeftError(
            "E_SVID",
            `the chain is valid but names ${id.toString()}, not ${expected.toString()}`,
            {
              reason: "unexpected_id",
            },
          );
        }
        const leaf = splitCertificates(chainPem, path(file))[0]!;
        const notAfter = new Date(leaf.validTo);
        out(
          `valid: ${id.toString()} (expires ${notAfter.toISOString()}, ${countdown(notAfter, deps.clock.now())})`,
        );
      },
    );

  // ---- export ----
  program
    .command("export")
    .description("write a PKCS#12 keystore (key + chain) for JVM and .NET applications")
    .requiredOption("--p12 <out.p12>", "the keystore file to write (mode 0600)")
    .requiredOption("--cert <chain.pem>", "the identity's chain: leaf first")
    .requiredOption("--key <key.pem>", "the identity's private key")
    .option("--password-file <file>", "read the keystore password from this file (first line)")
    .option("--password-env <VAR>", "read the keystore password from this environment variable")
    .option(
      "--password <password>",
      "the password on the command line (visible to other users; needs --insecure)",
    )
    .option("--insecure", "allow --password")
    .option("--name <alias>", "the key entry's alias (friendly name)")
    .option("--force", "overwrite --p12 if it exists")
    .addHelpText(
      "after",
      help([
        "meshca export --p12 web.p12 --cert certs/issued/default-web/chain.pem --key certs/issued/default-web/key.pem --password-file pw.txt",
        "KS_PASS=... meshca export --p12 web.p12 --cert chain.pem --key key.pem --password-env KS_PASS --name web",
        "keytool -list -keystore web.p12 -storetype PKCS12 -storepass:file pw.txt",
      ]),
    )
    .action(
      async (opts: {
        p12: string;
        cert: string;
        key: string;
        passwordFile?: string;
        passwordEnv?: string;
        password?: string;
        insecure?: boolean;
        name?: string;
        force?: boolean;
      }) => {
        const sources = [opts.passwordFile, opts.passwordEnv, opts.password].filter((s) => s !== undefined);
        if (sources.length !== 1) {
          throw usage("give exactly one of --password-file, --password-env or --password (with --insecure)");
        }
        if (opts.password !== undefined && !opts.insecure) {
          throw usage(
            "--password puts the secret in the process list and shell history; use --password-file or --password-env, or add --insecure",
          );
        }
        let password: string;
        if (opts.passwordFile !== undefined) {
          password = (await readText(path(opts.passwordFile), "password")).split(/\r?\n/)[0]!;
        } else if (opts.passwordEnv !== undefined) {
          const value = deps.env[opts.passwordEnv];
          if (value === undefined) throw usage(`environment variable ${opts.passwordEnv} is not set`);
          password = value;
        } else {
          password = opts.password!;
        }
        if (password.length === 0) throw usage("the keystore password is empty");
        const target = path(opts.p12);
        if (!opts.force && (await fileExists(target))) {
          throw new WeftError("E_EXISTS", `${target} exists; pass --force to replace it`);
        }
        const chainPem = await readText(path(opts.cert), "chain");
        const keyPem = await readText(path(opts.key), "key");
        // Loaded on demand: node-forge is only needed here.
        const { exportPkcs12 } = await import("../ca/pkcs12.ts");
        const der = exportPkcs12({
          keyPem,
          chainPem,
          password,
          ...(opts.name ? { friendlyName: opts.name } : {}),
        });
        await writeFileAtomic(target, der, 0o600);
        out(`wrote ${target} (${der.length} bytes)`);
      },
    );

  // ---- rotate ----
  program
    .command("rotate")
    .description("rotate the root (new root joins the bundle beside the old one) or the intermediate")
    .argument("<which>", "root or intermediate")
    .option("--root-ttl <duration>", "lifetime of the new root", parseCliDuration)
    .option("--intermediate-ttl <duration>", "lifetime of the new intermediate", parseCliDuration)
    .addOption(dirOption())
    .addHelpText(
      "after",
      help([
        "meshca rotate intermediate",
        "meshca rotate root          # then distribute the new bundle: meshca bundle --out ... --force",
        "# restart meshca serve afterwards so it signs with the new CA",
      ]),
    )
    .action(async (which: string, opts: { rootTtl?: number; intermediateTtl?: number; dir: string }) => {
      if (which !== "root" && which !== "intermediate") {
        throw usage(`rotate takes "root" or "intermediate", not "${which}"`);
      }
      const store = storeAt(opts.dir);
      if (!(await store.exists())) {
        throw new WeftError(
          "E_IO",
          `no CA in ${path(opts.dir)}; create one with: meshca init --trust-domain <td>`,
        );
      }
      const material = await store.load();
      const ttl = {
        ...(opts.rootTtl ? { rootTtlMs: opts.rootTtl } : {}),
        ...(opts.intermediateTtl ? { intermediateTtlMs: opts.intermediateTtl } : {}),
        clock: deps.clock,
      };
      const next =
        which === "root" ? await rotateRoot(material, ttl) : await rotateIntermediate(material, ttl);
      await store.save(next, { force: true });
      const roots = splitCertificates(next.bundlePem, "bundle");
      const inter = new X509Certificate(next.intermediateCertPem);
      out(`rotated the ${which} of ${next.trustDomain}`);
      out(`  bundle now holds ${roots.length} root(s):`);
      for (const r of roots) out(`    ${r.fingerprint256}  valid until ${new Date(r.validTo).toISOString()}`);
      out(`  intermediate valid until ${new Date(inter.validTo).toISOString()}`);
      if (which === "root")
        out("  distribute the new bundle to every sidecar: meshca bundle --out <file> --force");
    });

  return program;
}

/** Runs `meshca` with `argv` (without node and script); returns the exit code and prints errors in one line. */
export async function runMeshca(argv: string[], deps: MeshcaDeps): Promise<number> {
  const program = buildMeshcaProgram(deps);
  try {
    await program.parseAsync(argv, { from: "user" });
    return EXIT_OK;
  } catch (e) {
    return exitCodeFor(e, deps);
  }
}

function exitCodeFor(e: unknown, deps: MeshcaDeps): number {
  if (e instanceof CommanderError) {
    // Commander already printed its message. --help and --version succeed; `commander.help` is help shown
    // because a command group was given without its subcommand, which is a usage error.
    if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return EXIT_OK;
    if (e.code === "commander.executeSubCommandAsync") return e.exitCode;
    return EXIT_USAGE;
  }
  const line = errorMessage(e).replaceAll(/\s*\n\s*/g, " ");
  deps.stderr.write(`meshca: ${line}\n`);
  return isWeftError(e, "E_USAGE") ? EXIT_USAGE : EXIT_FAILURE;
}

// ---- helpers ----

function identityFromOptions(opts: { id?: string; ns?: string; sa?: string }, trustDomain: string): SpiffeId {
  const byParts = opts.ns !== undefined || opts.sa !== undefined;
  if (opts.id !== undefined && byParts) throw usage("give either --id or --ns with --sa, not both");
  if (opts.id === undefined && !byParts)
    throw usage("give the identity: --id spiffe://... or --ns <namespace> --sa <account>");
  let id: SpiffeId;
  try {
    if (opts.id !== undefined) id = SpiffeId.parse(opts.id);
    else {
      if (opts.ns === undefined || opts.sa === undefined) throw usage("--ns and --sa go together");
      id = SpiffeId.workload(trustDomain, opts.ns, opts.sa);
    }
  } catch (e) {
    if (isWeftError(e, "E_USAGE")) throw e;
    throw usage(errorMessage(e));
  }
  if (id.trustDomain !== trustDomain) {
    throw usage(`${id.toString()} is not in this CA's trust domain ${trustDomain}`);
  }
  return id;
}

function defaultName(id: SpiffeId): string {
  if (id.namespace !== undefined && id.serviceAccount !== undefined)
    return `${id.namespace}-${id.serviceAccount}`;
  const name = id.path
    .replace(/^\//, "")
    .replaceAll("/", "-")
    .replaceAll(/[^A-Za-z0-9._-]/g, "_");
  return name.length > 0 ? name.slice(0, 128) : "trust-domain";
}

interface WrittenIdentity {
  certPath: string;
  keyPath: string;
  chainPath: string;
  bundlePath: string;
}

/** Where `CaStore.writeIssued` puts an identity's files (checked before issuing, for --force gating). */
function issuedPaths(caDir: string, name: string): WrittenIdentity {
  return flatPaths(resolve(caDir, "issued", name));
}

/** The files `issue --out <dir>` writes. */
function flatPaths(dir: string): WrittenIdentity {
  return {
    keyPath: resolve(dir, "key.pem"),
    certPath: resolve(dir, "cert.pem"),
    chainPath: resolve(dir, "chain.pem"),
    bundlePath: resolve(dir, "bundle.pem"),
  };
}

async function writeFlat(dir: string, identity: IssuedIdentity): Promise<WrittenIdentity> {
  // The CLI checked for existing files (and --force) before issuing.
  return writeIdentityDir(dir, identity, { force: true });
}

async function fileExists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

async function readText(p: string, what: string): Promise<string> {
  try {
    return await readFile(p, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new WeftError(
      "E_IO",
      `cannot read the ${what} file ${p}: ${code === "ENOENT" ? "no such file" : errorMessage(e)}`,
    );
  }
}

/** Every certificate in a PEM text, in order. Throws E_PEM when there is none or one is malformed. */
export function splitCertificates(pem: string, source: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new WeftError("E_PEM", `${source} holds no PEM certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (e) {
      throw new WeftError("E_PEM", `certificate ${i + 1} in ${source} is malformed: ${errorMessage(e)}`);
    }
  });
}

/** `expires in 23h 59m` / `expired 2h ago` / `not valid for another 5m`. */
export function countdown(notAfter: Date, now: number): string {
  const left = notAfter.getTime() - now;
  return left > 0 ? `expires in ${formatDuration(left)}` : `expired ${formatDuration(-left)} ago`;
}

function describeKey(cert: X509Certificate): string {
  const key = cert.publicKey;
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "ec": {
      const curve = details.namedCurve;
      const name =
        curve === "prime256v1"
          ? "P-256"
          : curve === "secp384r1"
            ? "P-384"
            : curve === "secp521r1"
              ? "P-521"
              : curve;
      return `ECDSA ${name}`;
    }
    case "rsa":
      return `RSA ${details.modulusLength} bits`;
    case "ed25519":
      return "Ed25519";
    default:
      return String(key.asymmetricKeyType);
  }
}

/** The human summary `meshca inspect` prints for one certificate. */
export function describeCertificate(cert: X509Certificate, now: number, title: string): string[] {
  const uris = (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((s) => s.startsWith("URI:"))
    .map((s) => s.slice(4));
  const others = (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((s) => s.length > 0 && !s.startsWith("URI:"));
  const selfSigned = cert.subject === cert.issuer && cert.checkIssued(cert);
  const role = cert.ca ? (selfSigned ? "root CA" : "intermediate CA") : "leaf";
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  const validity =
    now < notBefore.getTime()
      ? `not valid for another ${formatDuration(notBefore.getTime() - now)}`
      : countdown(notAfter, now);
  const lines = [
    `${title}: ${role}`,
    `  SPIFFE ID:   ${uris.length === 0 ? "(none)" : uris.join(", ")}`,
    `  subject:     ${cert.subject.replaceAll("\n", ", ") || "(empty)"}`,
    `  issuer:      ${cert.issuer.replaceAll("\n", ", ") || "(empty)"}`,
    `  serial:      ${cert.serialNumber.toLowerCase()}`,
    `  not before:  ${notBefore.toISOString()}`,
    `  not after:   ${notAfter.toISOString()} (${validity})`,
    `  key:         ${describeKey(cert)}`,
    `  CA:          ${cert.ca ? "yes" : "no"}`,
  ];
  if (others.length > 0) lines.push(`  other SANs:  ${others.join(", ")}`);
  if (cert.keyUsage && cert.keyUsage.length > 0)
    lines.push(`  ext usage:   ${cert.keyUsage.map(ekuName).join(", ")}`);
  lines.push(`  sha256:      ${cert.fingerprint256}`);
  return lines;
}

function ekuName(oid: string): string {
  return oid === "1.3.6.1.5.5.7.3.1" ? "serverAuth" : oid === "1.3.6.1.5.5.7.3.2" ? "clientAuth" : oid;
}
