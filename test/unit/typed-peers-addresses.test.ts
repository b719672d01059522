/**
 * The proxy's identities and addresses are types, not strings (issue 16): a peer is a SpiffeId and
 * `none` is only its rendered label; address roles do not mix. The `@ts-expect-error` lines are checked
 * by `npm run typecheck`: should a role stop being its own type, the expected error goes and tsc fails.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { SpiffeId } from "../../src/ca/spiffe-id.ts";
import {
  clientOf,
  type EndpointAddr,
  endpointAddr,
  type OrigDstAddr,
  origDstAddr,
} from "../../src/proxy/addresses.ts";
import { isLoop } from "../../src/proxy/capture/original-dst.ts";
import { peerLabel } from "../../src/proxy/connection/record.ts";

test("peerLabel: the proved SpiffeId, the expected identity before the handshake, none for plaintext", () => {
  const id = SpiffeId.parse("spiffe://weft.local/ns/default/sa/api");
  assert.equal(peerLabel(id), "spiffe://weft.local/ns/default/sa/api");
  assert.equal(
    peerLabel({ expected: "spiffe://weft.local/ns/default/sa/db" }),
    "spiffe://weft.local/ns/default/sa/db",
  );
  assert.equal(peerLabel(undefined), "none");
});

test("address roles: one constructor each, no mixing without saying so", () => {
  const endpoint: EndpointAddr = endpointAddr({ address: "198.18.0.10", port: 8080 });
  const dst: OrigDstAddr = origDstAddr({ address: "198.18.100.1", port: 80 });
  // @ts-expect-error an endpoint is not an original destination
  const wrong: OrigDstAddr = endpoint;
  // @ts-expect-error nor is a bare address: its role is said where it is born
  const bare: OrigDstAddr = { address: "198.18.100.1", port: 80 };
  // @ts-expect-error the listeners' list holds listen addresses, not original destinations
  isLoop(dst, [dst]);
  assert.deepEqual([wrong, bare], [endpoint, dst], "the roles are types only: the values are the same");
  assert.equal(isLoop(dst, []), false);
});

test("clientOf: an accepted socket's peer, the IPv4-mapped prefix stripped", async (t) => {
  const server = net.createServer();
  t.after(() => server.close());
  await new Promise<void>((resolve) => server.listen(0, "::", resolve));
  const { port } = server.address() as net.AddressInfo;
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect({ host: "127.0.0.1", port });
  t.after(() => client.destroy());
  const socket = await accepted;
  t.after(() => socket.destroy());
  await new Promise<void>((resolve) => client.once("connect", resolve));
  assert.equal(socket.remoteAddress, "::ffff:127.0.0.1");
  assert.deepEqual(clientOf(socket), { address: "127.0.0.1", port: client.localPort });
});
