/**
 * One CaClient start against a CA server, as a child process (the netns tests run it inside a host's
 * namespace): `ca-client-once.ts <url> <bundle.pem> <token> <spiffe-id>`. Prints `obtained <id> <serial
 * expiry>` and exits 0, or `failed: <message>` and exits 1. One attempt, no retries.
 */
import { readFile } from "node:fs/promises";
import { CaClient } from "../../src/ca/client.ts";
import { systemClock } from "../../src/core/clock.ts";
import { errorMessage } from "../../src/core/errors.ts";
import { MemoryLogger } from "../../src/core/log.ts";

const [url, bundlePath, token, id] = process.argv.slice(2);
const client = new CaClient({
  url: url!,
  bundlePem: await readFile(bundlePath!, "utf8"),
  id: id!,
  token: token!,
  clock: systemClock,
  logger: new MemoryLogger(),
  startMaxAttempts: 1,
  onIdentity: (m) => process.stdout.write(`obtained ${m.id.toString()} until ${m.notAfter.toISOString()}\n`),
});
try {
  await client.start();
  client.stop();
} catch (err) {
  process.stdout.write(`failed: ${errorMessage(err)}\n`);
  process.exit(1);
}
