/**
 * A hostile peer sidecar that holds a valid certificate: it opens a mutual-TLS connection to a tunnel
 * port with ALPN h2 and writes raw HTTP/2 frames of its own making, so a test decides exactly which
 * frames go out in one write (Node's own client would order, pace and validate them).
 */
import tls from "node:tls";
import { encodeProxyV2, PP2_TYPE_WEFT_SERVICE } from "../../src/proxy/transport/proxy-protocol.ts";

export const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const TYPE_DATA = 0x0;
const TYPE_HEADERS = 0x1;
const TYPE_RST_STREAM = 0x3;
const TYPE_SETTINGS = 0x4;
const FLAG_END_HEADERS = 0x4;
export const H2_CANCEL = 0x8;

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK: a literal header field without indexing, name from the static table (index < 15), short value. */
function literal(nameIndex: number, value: string): Buffer {
  const v = Buffer.from(value, "latin1");
  if (v.length > 126) throw new Error("value too long for this encoder");
  return Buffer.concat([Buffer.from([nameIndex, v.length]), v]);
}

/** HEADERS (END_HEADERS) for `CONNECT <authority>` on `streamId`. */
export function connectHeaders(streamId: number, authority = "127.0.0.1:15008"): Buffer {
  const block = Buffer.concat([literal(2, "CONNECT"), literal(1, authority)]);
  return frame(TYPE_HEADERS, FLAG_END_HEADERS, streamId, block);
}

export function data(streamId: number, payload: Buffer, endStream = false): Buffer {
  return frame(TYPE_DATA, endStream ? 0x1 : 0, streamId, payload);
}

export function rstStream(streamId: number, code = H2_CANCEL): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code, 0);
  return frame(TYPE_RST_STREAM, 0, streamId, p);
}

/** The client preface and an empty SETTINGS frame: what opens a session. */
export function sessionStart(): Buffer {
  return Buffer.concat([H2_PREFACE, frame(TYPE_SETTINGS, 0, 0)]);
}

/** A tunnel PROXY v2 header for app `port`, naming `service` in Weft's TLV. */
export function tunnelHeader(port: number, service = "backend"): Buffer {
  return encodeProxyV2({
    command: "PROXY",
    source: { address: "127.0.0.1", port: 40000 },
    destination: { address: "127.0.0.1", port },
    tlvs: [{ type: PP2_TYPE_WEFT_SERVICE, value: Buffer.from(service, "utf8") }],
  });
}

/** A session preface, then HEADERS (CONNECT) + DATA (a PROXY header) + RST_STREAM for `count` streams. */
export function resetBurst(count: number, appPort: number): Buffer {
  const parts = [sessionStart()];
  const header = tunnelHeader(appPort);
  for (let i = 0; i < count; i++) {
    const id = 2 * i + 1;
    parts.push(connectHeaders(id), data(id, header), rstStream(id));
  }
  return Buffer.concat(parts);
}

export interface PeerCredentials {
  readonly keyPem: string;
  readonly chainPem: string;
  readonly bundlePem: string;
}

/** A verified mutual-TLS connection to a tunnel port with ALPN `alpn` (default h2). */
export function dialTunnel(
  port: number,
  id: PeerCredentials,
  alpn = "h2",
  host = "127.0.0.1",
): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host,
      port,
      key: id.keyPem,
      cert: id.chainPem,
      ca: id.bundlePem,
      ALPNProtocols: [alpn],
      // The server's SPIFFE identity is not a host name; the test trusts the bundle only.
      checkServerIdentity: () => undefined,
      minVersion: "TLSv1.3",
    });
    s.once("secureConnect", () => {
      s.off("error", reject);
      s.on("error", () => {});
      resolve(s);
    });
    s.once("error", reject);
  });
}
