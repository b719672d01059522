/**
 * The failure → close-reason tables (connection/close-reasons.ts), row by row: what each upstream
 * failure and each PROXY header refusal ends a connection with, and which error code an upstream failure
 * carries. Every reason a table gives is one of CLOSE_REASONS (the metric's closed label set).
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { WeftError } from "../../src/core/errors.ts";
import {
  CLOSE_REASONS,
  proxyHeaderCloseReason,
  UPSTREAM_FAILURES,
  upstreamCloseReason,
  upstreamFailure,
} from "../../src/proxy/connection/close-reasons.ts";
import { PEER_REASONS } from "../../src/proxy/transport/answer.ts";
import {
  PROXY_HEADER_FAILURES,
  PROXY_V2_SIGNATURE,
  ProxyHeaderParser,
  readProxyHeader,
} from "../../src/proxy/transport/proxy-protocol.ts";

const known = new Set<string>(CLOSE_REASONS);

test("each upstream failure: its error code and the close reason of the connection it ends", () => {
  const expected: Record<string, [string, string]> = {
    connect_refused: ["E_CONNECT", "upstream_connect_failed"],
    connect_reset: ["E_CONNECT", "upstream_reset"],
    connect_failed: ["E_CONNECT", "upstream_connect_failed"],
    connect_timeout: ["E_TIMEOUT", "upstream_timeout"],
    handshake_failed: ["E_TLS_HANDSHAKE", "upstream_handshake_failed"],
    handshake_timeout: ["E_TIMEOUT", "upstream_timeout"],
    bad_alpn: ["E_TLS_HANDSHAKE", "upstream_handshake_failed"],
    identity_mismatch: ["E_PEER_IDENTITY", "upstream_identity_mismatch"],
    not_ready: ["E_CONNECT", "upstream_connect_failed"],
    aborted: ["E_CONNECT", "downstream_reset"],
    keepalive_timeout: ["E_TIMEOUT", "upstream_timeout"],
    answer_timeout: ["E_TIMEOUT", "upstream_timeout"],
    svid_expired: ["E_SVID", "upstream_untrusted"],
    svid_untrusted: ["E_SVID", "upstream_untrusted"],
  };
  for (const r of PEER_REASONS) expected[r] = ["E_PEER_REFUSED", r];
  for (const r of UPSTREAM_FAILURES) assert.ok(expected[r], `a row for ${r}`);
  for (const [reason, [code, close]] of Object.entries(expected)) {
    const err = upstreamFailure(reason as never, "m");
    assert.equal(err.code, code, reason);
    assert.equal(err.reason, reason);
    assert.equal(upstreamCloseReason(err, false), close, reason);
    assert.equal(upstreamCloseReason(err, true), close, `${reason}, client gone`);
    assert.ok(known.has(close), `${close} is a close reason`);
  }
});

test("what is not an upstream failure: no endpoint, a deadline, a client that left, anything else", () => {
  const noEndpoint = new WeftError("E_NO_ROUTE", "no endpoint", { reason: "no_endpoint" });
  assert.equal(upstreamCloseReason(noEndpoint, false), "no_endpoint");
  // The retry deadline and the connect deadline abort with a bare E_TIMEOUT.
  assert.equal(upstreamCloseReason(new WeftError("E_TIMEOUT", "retry deadline"), false), "upstream_timeout");
  assert.equal(
    upstreamCloseReason(new WeftError("E_CONNECT", "client went away"), true),
    "upstream_connect_failed",
  );
  assert.equal(upstreamCloseReason(new Error("x"), true), "downstream_reset");
  assert.equal(upstreamCloseReason(new Error("x"), false), "upstream_connect_failed");
  assert.equal(upstreamCloseReason(undefined, false), "upstream_connect_failed");
  // A reason that is a property of every object is no row.
  const odd = new WeftError("E_CONNECT", "m", { reason: "constructor" });
  assert.equal(upstreamCloseReason(odd, false), "upstream_connect_failed");
});

test("each PROXY header refusal: truncated, unsupported, timed out or malformed", () => {
  const expected: Record<string, string> = {
    proxy_header_timeout: "proxy_header_timeout",
    truncated: "proxy_header_truncated",
    closed: "proxy_header_truncated",
    truncated_addresses: "proxy_header_truncated",
    udp_transport: "proxy_header_unsupported",
    unix_family: "proxy_header_unsupported",
    unspec_family: "proxy_header_unsupported",
    local_with_family: "proxy_header_unsupported",
  };
  for (const r of PROXY_HEADER_FAILURES) {
    const close = proxyHeaderCloseReason(new WeftError("E_PROXY_HEADER", "m", { reason: r }));
    assert.equal(close, expected[r] ?? "proxy_header_malformed", r);
    assert.ok(known.has(close));
  }
  assert.equal(proxyHeaderCloseReason(new WeftError("E_TIMEOUT", "m")), "proxy_header_timeout");
  assert.equal(proxyHeaderCloseReason(new Error("x")), "proxy_header_malformed");
});

test("the codec's own refusals land on their rows: bad signature, stream ended, deadline", async () => {
  const parser = new ProxyHeaderParser();
  const bad = Buffer.from(PROXY_V2_SIGNATURE);
  bad[0] = 0;
  assert.throws(
    () => parser.push(Buffer.concat([bad, Buffer.alloc(4)])),
    (err) => proxyHeaderCloseReason(err) === "proxy_header_malformed",
  );
  const ended = new PassThrough();
  const reading = readProxyHeader(ended, { timeoutMs: 1000, clock: new ManualClock() });
  ended.end(PROXY_V2_SIGNATURE.subarray(0, 5));
  await assert.rejects(reading, (err) => proxyHeaderCloseReason(err) === "proxy_header_truncated");
  const clock = new ManualClock();
  const stalled = readProxyHeader(new PassThrough(), { timeoutMs: 1000, clock });
  clock.advance(1000);
  await assert.rejects(stalled, (err) => proxyHeaderCloseReason(err) === "proxy_header_timeout");
});
