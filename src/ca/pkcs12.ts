/**
 * PKCS#12 (RFC 7292) export of a workload identity, for JVM and .NET applications that terminate TLS
 * themselves. node-forge cannot handle EC keys or certificates as objects, so the PFX is assembled from
 * its ASN.1 and PKCS#12 key-derivation building blocks: the private key is a PKCS#8 key encrypted by
 * Node (PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC, as OpenSSL 3 writes it), the certificates go in plain
 * cert bags, and the whole is protected by an HMAC-SHA256 MAC keyed with the PKCS#12 KDF. `openssl
 * pkcs12` and Java's `keytool` read the result.
 */
import { createHmac, createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import forge from "node-forge";
import { WeftError } from "../core/errors.ts";
import { splitPemCertificates } from "./x509.ts";

const { asn1 } = forge;
const OID = {
  data: "1.2.840.113549.1.7.1",
  certBag: "1.2.840.113549.1.12.10.1.3",
  shroudedKeyBag: "1.2.840.113549.1.12.10.1.2",
  x509Certificate: "1.2.840.113549.1.9.22.1",
  friendlyName: "1.2.840.113549.1.9.20",
  localKeyId: "1.2.840.113549.1.9.21",
  sha256: "2.16.840.1.101.3.4.2.1",
};
const MAC_ITERATIONS = 2048;

const der = (node: forge.asn1.Asn1): string => asn1.toDer(node).getBytes();
const seq = (items: forge.asn1.Asn1[]) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
const set = (items: forge.asn1.Asn1[]) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, items);
const oid = (o: string) =>
  asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(o).getBytes());
const octets = (bytes: string) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, bytes);
const explicit0 = (node: forge.asn1.Asn1) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [node]);
const integer = (n: number) =>
  asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(n).getBytes());
const bin = (b: Buffer) => b.toString("binary");

function bmpString(text: string): forge.asn1.Asn1 {
  // forge's DER writer turns a BMPString value into UTF-16BE itself.
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BMPSTRING, false, text);
}

function attributes(localKeyId: string, friendlyName?: string): forge.asn1.Asn1 {
  const attrs = [seq([oid(OID.localKeyId), set([octets(localKeyId)])])];
  if (friendlyName) attrs.push(seq([oid(OID.friendlyName), set([bmpString(friendlyName)])]));
  return set(attrs);
}

/** A ContentInfo of type data holding the DER of `content`. */
function dataContentInfo(content: forge.asn1.Asn1): forge.asn1.Asn1 {
  return seq([oid(OID.data), explicit0(octets(der(content)))]);
}

export function exportPkcs12(opts: {
  keyPem: string;
  chainPem: string;
  password: string;
  friendlyName?: string;
}): Buffer {
  const certs = splitPemCertificates(opts.chainPem);
  if (certs.length === 0)
    throw new WeftError("E_PEM", "the chain holds no PEM certificate", { reason: "empty_chain" });
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(opts.keyPem);
  } catch (err) {
    throw new WeftError("E_PEM", "the private key does not parse", { reason: "bad_key", cause: err });
  }
  const leaf = new X509Certificate(certs[0]!);
  if (!leaf.checkPrivateKey(key)) {
    throw new WeftError("E_PEM", "the private key does not belong to the first certificate of the chain", {
      reason: "key_mismatch",
    });
  }
  // The key bag: PKCS#8 encrypted by OpenSSL through Node (PBES2 with PBKDF2 + AES-256-CBC).
  const encryptedKey = key.export({
    type: "pkcs8",
    format: "der",
    cipher: "aes-256-cbc",
    passphrase: opts.password,
  });
  const localKeyId = bin(
    leaf.fingerprint256
      ? Buffer.from(leaf.fingerprint256.replace(/:/g, ""), "hex").subarray(0, 20)
      : randomBytes(20),
  );
  const keyBag = seq([
    oid(OID.shroudedKeyBag),
    explicit0(asn1.fromDer(bin(encryptedKey))),
    attributes(localKeyId, opts.friendlyName),
  ]);
  const certBags = certs.map((pem, i) =>
    seq([
      oid(OID.certBag),
      explicit0(seq([oid(OID.x509Certificate), explicit0(octets(bin(new X509Certificate(pem).raw)))])),
      ...(i === 0 ? [attributes(localKeyId, opts.friendlyName)] : []),
    ]),
  );
  const authSafe = seq([dataContentInfo(seq(certBags)), dataContentInfo(seq([keyBag]))]);
  const authSafeDer = der(authSafe);

  // MAC: HMAC-SHA256 over the AuthenticatedSafe, keyed by the PKCS#12 KDF (ID 3) from the password.
  const salt = randomBytes(16);
  const macKey = forge.pkcs12.generateKey(
    opts.password,
    forge.util.createBuffer(bin(salt)),
    3,
    MAC_ITERATIONS,
    32,
    forge.md.sha256.create(),
  );
  const mac = createHmac("sha256", Buffer.from(macKey.getBytes(), "binary"))
    .update(Buffer.from(authSafeDer, "binary"))
    .digest();
  const pfx = seq([
    integer(3),
    seq([oid(OID.data), explicit0(octets(authSafeDer))]),
    seq([
      seq([
        seq([oid(OID.sha256), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, "")]),
        octets(bin(mac)),
      ]),
      octets(bin(salt)),
      integer(MAC_ITERATIONS),
    ]),
  ]);
  return Buffer.from(der(pfx), "binary");
}
