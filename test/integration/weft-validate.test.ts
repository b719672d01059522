/**
 * `weft validate` finds what `weft proxy` would find: each broken config is caught and each message
 * names the key and the file; relative paths resolve against the config file; readability is checked as
 * the proxy UID; `--print` shows the effective config and `--json` the same verdict as a document.
 */
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { parse as parseYaml } from "yaml";
import { createTestCa } from "../helpers/ca.ts";
import { weftCli } from "../helpers/cli.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";

checkLeaksAtEnd();

const weft = (args: string[]) => weftCli(...args);

const ca = await createTestCa({ trustDomain: "weft.local" });
const issued = await ca.issue("default/frontend");
const other = await createTestCa({ trustDomain: "other.local" });
const otherIssued = await other.issue("default/frontend");
const stranger = await ca.issue("default/stranger");

/** A folder with a good identity (relative names) and a weft.yaml built from `yaml`. */
async function setup(t: TestContext, yaml: string): Promise<{ dir: string; config: string }> {
  const dir = await mkdtemp(join(tmpdir(), "weft-validate-"));
  await chmod(dir, 0o755);
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, "cert.pem"), issued.chainPem, { mode: 0o644 });
  await writeFile(join(dir, "key.pem"), issued.keyPem, { mode: 0o644 });
  await writeFile(join(dir, "bundle.pem"), issued.bundlePem, { mode: 0o644 });
  const config = join(dir, "weft.yaml");
  await writeFile(config, yaml);
  return { dir, config };
}

const IDENTITY = "identity: { files: { cert: cert.pem, key: key.pem, bundle: bundle.pem } }";
const BASE = `trustDomain: weft.local\n${IDENTITY}\n`;

/** Run validate on `yaml` (after `prepare`); assert exit 1 and one line per [key, message pattern]. */
async function expectProblems(
  t: TestContext,
  yaml: string,
  expected: Array<[string, RegExp]>,
  prepare?: (dir: string) => Promise<void>,
  extraArgs: string[] = [],
): Promise<string> {
  const { dir, config } = await setup(t, yaml);
  await prepare?.(dir);
  const r = await weft(["validate", "-c", config, ...extraArgs]);
  assert.equal(r.code, 1, `exit 1 expected; stdout: ${r.stdout} stderr: ${r.stderr}`);
  assert.match(
    r.stderr,
    new RegExp(`^weft: E_CONFIG: the config has ${expected.length} problem\\(s\\):`, "m"),
  );
  for (const [key, message] of expected) {
    const line = r.stderr.split("\n").find((l) => l.startsWith(`  ${key}: `) && message.test(l));
    assert.ok(line, `a line for ${key} matching ${message} in:\n${r.stderr}`);
  }
  return dir;
}

test("a good config with relative paths passes from any working directory", async (t) => {
  const { config } = await setup(t, BASE);
  const r = await weft(["validate", "-c", config]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /valid \(trust domain weft\.local, 0 services/);
  assert.notEqual(process.cwd(), join(config, ".."), "the test runs from elsewhere than the config's folder");
});

test("a missing certificate is named with its key and absolute path", async (t) => {
  await expectProblems(t, BASE, [["identity.files.cert", /\/cert\.pem does not exist/]], (dir) =>
    rm(join(dir, "cert.pem")),
  );
});

test("a directory as the key", async (t) => {
  await expectProblems(
    t,
    BASE,
    [["identity.files.key", /\/key\.pem is a directory, not a file/]],
    async (dir) => {
      await rm(join(dir, "key.pem"));
      await mkdir(join(dir, "key.pem"));
    },
  );
});

test("a key that does not match the certificate", async (t) => {
  await expectProblems(
    t,
    BASE,
    [["identity.files.key", /key\.pem does not match the certificate in \S+cert\.pem/]],
    (dir) => writeFile(join(dir, "key.pem"), stranger.keyPem),
  );
});

test("a certificate of another trust domain", async (t) => {
  await expectProblems(
    t,
    BASE,
    [
      [
        "identity.files.cert",
        /cert\.pem: .*spiffe:\/\/other\.local\/ns\/default\/sa\/frontend is not in trust domain weft\.local/,
      ],
    ],
    async (dir) => {
      await writeFile(join(dir, "cert.pem"), otherIssued.chainPem);
      await writeFile(join(dir, "key.pem"), otherIssued.keyPem);
      await writeFile(join(dir, "bundle.pem"), `${issued.bundlePem}${otherIssued.bundlePem}`);
    },
  );
});

test("a certificate that does not chain to the bundle, and an expired one", async (t) => {
  await expectProblems(
    t,
    BASE,
    [["identity.files.cert", /does not lead to a root in the trust bundle \S+bundle\.pem/]],
    (dir) => writeFile(join(dir, "bundle.pem"), otherIssued.bundlePem),
  );
  const expired = await ca.issue("default/frontend", {
    notBefore: new Date(Date.now() - 7_200_000),
    ttlMs: 3_600_000,
  });
  await expectProblems(t, BASE, [["identity.files.cert", /cert\.pem: .*expired/]], async (dir) => {
    await writeFile(join(dir, "cert.pem"), expired.chainPem);
    await writeFile(join(dir, "key.pem"), expired.keyPem);
  });
});

test("a services file with typos: each error names the file and the key", async (t) => {
  await expectProblems(
    t,
    `${BASE}discovery: { file: services.yaml }\n`,
    [
      ["discovery.file", /services\.yaml: services\[0\]: Unrecognized key: "endpionts"/],
      ["discovery.file", /services\.yaml: services\[0\]: give exactly one of endpoints or dns/],
      ["discovery.file", /services\.yaml: services\[1\]\.ports\[0\]/],
    ],
    (dir) =>
      writeFile(
        join(dir, "services.yaml"),
        "services:\n  - { name: backend, ports: [8080], endpionts: [] }\n  - { name: db, ports: [99999], endpoints: [] }\n",
      ),
  );
  await expectProblems(t, `${BASE}discovery: { file: nowhere.yaml }\n`, [
    ["discovery.file", /nowhere\.yaml does not exist/],
  ]);
});

test("two listeners on one port, and overlapping wildcard addresses", async (t) => {
  await expectProblems(
    t,
    `${BASE}listeners:\n  tunnel: { port: 15001 }\n  admin: { address: 127.0.0.1, port: 9001 }\n  explicit: [ { listen: "127.0.0.1:9001", service: backend } ]\nservices: [ { name: backend, ports: [80], endpoints: [ { address: 10.0.0.1 } ] } ]\n`,
    [
      ["listeners.tunnel", /0\.0\.0\.0:15001 clashes with listeners\.outbound \(0\.0\.0\.0:15001\)/],
      ["listeners.explicit[0].listen", /127\.0\.0\.1:9001 clashes with listeners\.admin/],
    ],
  );
});

test("an explicit listener naming a service (or port) that does not exist", async (t) => {
  await expectProblems(
    t,
    `${BASE}listeners:\n  explicit:\n    - { listen: "127.0.0.1:9001", service: backnd }\n    - { listen: "127.0.0.1:9002", service: backend, port: 81 }\n    - { listen: "127.0.0.1:9003", service: db }\nservices: [ { name: backend, ports: [80], endpoints: [ { address: 10.0.0.1 } ] } ]\ndiscovery: { file: services.yaml }\n`,
    [
      ["listeners.explicit[0].service", /no service named backnd \(declared: backend, db\)/],
      ["listeners.explicit[1].port", /service backend has no port 81 \(its ports: 80\)/],
    ],
    (dir) =>
      writeFile(
        join(dir, "services.yaml"),
        "services: [ { name: db, ports: [5432], endpoints: [ { address: 10.0.0.2 } ] } ]\n",
      ),
  );
});

test("two services claiming one VIP or one endpoint", async (t) => {
  await expectProblems(
    t,
    `${BASE}services:\n  - { name: a, ports: [80], vips: [10.96.0.1], endpoints: [ { address: 10.0.0.1 } ] }\n  - { name: b, ports: [80], vips: [10.96.0.1], endpoints: [ { address: 10.0.0.2 } ] }\n  - { name: c, ports: [{ port: 81, targetPort: 80 }], endpoints: [ { address: 10.0.0.1 } ] }\n`,
    [
      ["services[1]", /service b claims 10\.96\.0\.1:80, which service a \(services\[0\]\) already owns/],
      ["services[2]", /service c claims 10\.0\.0\.1:80, which service a \(services\[0\]\) already owns/],
    ],
  );
});

test("two identical endpoints of one service (the schema's own check, reported by validate too)", async (t) => {
  await expectProblems(
    t,
    `${BASE}services:\n  - { name: a, ports: [80], endpoints: [ { address: 10.0.0.1 }, { address: 10.0.0.1 } ] }\n`,
    [["services[0].endpoints[1]", /same address, port and tunnelPort as endpoints\[0\]/]],
  );
});

test("files the proxy UID cannot read fail validation, even when validate runs as root", async (t) => {
  const lockDown = async (dir: string): Promise<void> => {
    await chmod(join(dir, "key.pem"), 0o600);
    await chmod(dir, 0o700);
  };
  const args = process.getuid?.() === 0 ? [] : ["--proxy-uid", "1337"];
  const dir = await expectProblems(
    t,
    BASE,
    [
      [
        "identity.files.cert",
        /cert\.pem is not readable by UID 1337 \(the proxy user\): folder \S+ \(mode 0700/,
      ],
      ["identity.files.key", /key\.pem is not readable by UID 1337/],
      ["identity.files.bundle", /bundle\.pem is not readable by UID 1337/],
    ],
    lockDown,
    args,
  );
  await chmod(dir, 0o755);
  const r = await weft(["validate", "-c", join(dir, "weft.yaml"), ...args]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /identity\.files\.key: \S+key\.pem is not readable by UID 1337 \(the proxy user\): mode 0600/,
  );
  assert.doesNotMatch(r.stderr, /cert\.pem is not readable/);
});

test("--print shows the effective config with defaults; --json gives the verdict and the problems", async (t) => {
  const { dir, config } = await setup(t, `${BASE}timeouts: { idle: 5m }\n`);
  const printed = await weft(["validate", "-c", config, "--print"]);
  assert.equal(printed.code, 0, printed.stderr);
  const eff = parseYaml(printed.stdout) as {
    timeouts: Record<string, number>;
    identity: { files: Record<string, string> };
    listeners: { admin: { address: string } };
  };
  assert.equal(eff.timeouts.idle, 300_000);
  assert.equal(eff.timeouts.connect, 5_000, "defaults filled in");
  assert.equal(eff.identity.files.key, join(dir, "key.pem"), "paths resolved against the config's folder");
  assert.equal(eff.listeners.admin.address, "127.0.0.1");

  const ok = await weft(["validate", "-c", config, "--json"]);
  assert.equal(ok.code, 0, ok.stderr);
  const okDoc = JSON.parse(ok.stdout);
  assert.equal(okDoc.valid, true);
  assert.deepEqual(okDoc.problems, []);

  await rm(join(dir, "bundle.pem"));
  const bad = await weft(["validate", "-c", config, "--json"]);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr, "");
  const badDoc = JSON.parse(bad.stdout);
  assert.equal(badDoc.valid, false);
  assert.equal(badDoc.problems.length, 1);
  assert.equal(badDoc.problems[0].key, "identity.files.bundle");
  assert.equal(badDoc.problems[0].severity, "error");

  await writeFile(config, "trustDomain: weft.local\ntimeouts: { idle: soon }\n");
  const schema = JSON.parse((await weft(["validate", "-c", config, "--json"])).stdout);
  assert.equal(schema.valid, false);
  assert.deepEqual(schema.problems.map((p: { key: string }) => p.key).sort(), ["identity", "timeouts.idle"]);
});
