/**
 * Certificate rotation during a live 30-second stream: the client sidecar's identity files are replaced
 * (atomically, as cert-manager or `meshca issue --force` would) several times while a paced stream runs
 * through the pair. The stream survives byte-exact, and a connection opened after the rotation
 * presents the new certificate (the server sidecar sees its serial).
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, hashUntilEnd, startApp } from "../helpers/apps.ts";
import { checkLeaksAtEnd } from "../helpers/leaks.ts";
import {
  reloadIdentity,
  startSidecarPair,
  TRANSPORTS,
  waitForLog,
  writeIdentity,
} from "../helpers/sidecar.ts";

checkLeaksAtEnd();

const STREAM_MS = 30_000;
const CHUNK = 64 * 1024;

for (const transport of TRANSPORTS) {
  test(`${transport}: rotation during a live 30 s stream: the stream survives byte-exact; new connections present the new certificate`, async (t) => {
    let received: Promise<{ sha256: string; bytes: number }> | undefined;
    const sink = await startApp((s) => {
      received = hashUntilEnd(s);
      s.once("end", () => s.end());
    });
    t.after(() => sink.close());
    const pair = await startSidecarPair(t, { transport, appPort: sink.port });
    const client = await connect(pair.explicitPort);

    // A paced writer: one 64 KiB chunk every 20 ms for 30 s (about 100 MiB), rotating every 6 s.
    const rounds = STREAM_MS / 20;
    const serials = [new X509Certificate(pair.clientIssued.certPem).serialNumber];
    let rotations = 0;
    const writing = (async () => {
      let total = 0;
      const hashes: Buffer[] = [];
      for (let i = 0; i < rounds; i++) {
        const chunk = Buffer.alloc(CHUNK, i % 251);
        hashes.push(chunk);
        total += chunk.length;
        if (!client.write(chunk)) await new Promise((r) => client.once("drain", r));
        if (i > 0 && i % 300 === 0) {
          const fresh = await pair.ca.issue("default/frontend");
          await writeIdentity(pair.clientFiles, fresh);
          await reloadIdentity(pair.client);
          serials.push(new X509Certificate(fresh.certPem).serialNumber);
          rotations++;
        }
        await sleep(20); // paced, so the rotations fall in the middle of a live stream
      }
      client.end();
      return { total, hashes };
    })();
    const { total, hashes } = await writing;
    const got = await received!;
    const { createHash } = await import("node:crypto");
    const h = createHash("sha256");
    for (const b of hashes) h.update(b);
    assert.ok(rotations >= 4, `rotated ${rotations} times`);
    assert.equal(got.bytes, total, "every byte of the live stream arrived");
    assert.equal(got.sha256, h.digest("hex"), "byte-exact across rotations");
    const first = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed");
    assert.equal(first.reason, "closed", "the long connection ended normally, not by rotation");

    // A new connection after the rotation presents the newest certificate.
    const newest = serials[serials.length - 1]!;
    const c2 = await connect(pair.explicitPort);
    c2.end("ping");
    const line = await waitForLog(pair.serverLog, (r) => r.msg === "connection closed" && r !== first);
    assert.equal(line.peer_identity, "spiffe://weft.local/ns/default/sa/frontend");
    assert.equal(
      String(line.peer_serial).toUpperCase(),
      newest.toUpperCase(),
      "the peer saw the newest certificate",
    );
    assert.equal(
      String(first.peer_serial).toUpperCase(),
      serials[0]!.toUpperCase(),
      "the live stream kept its first certificate",
    );
  });
}
