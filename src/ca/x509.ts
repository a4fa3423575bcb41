/**
 * X.509 (ECDSA P-256) certificates for Mezite: the CA certificates, the client certificates agents
 * present (renewal, output, admin, node) and the auth service's TLS server certificate. Keys are
 * Node `KeyObject`s; certificates are built with the DER subset in der.ts and signed with Node's
 * crypto (see der.ts for why not @peculiar/x509). Pure: no I/O besides crypto.
 *
 * Custom extensions (all non-critical, so foreign verifiers ignore them) live under
 * 1.3.9999.1829, an arc we chose that is NOT registered with any authority; only Mezite reads
 * them. Replace it with a registered private enterprise number before other software must
 * interpret these certificates.
 *   .1 identity id  UTF8String  the agent identity's unique id (re-adding a name makes a new one)
 *   .2 instance id  UTF8String  the instance (one join) of that identity
 *   .3 generation   INTEGER     the instance's renewal generation, non-negative
 *   .4 cert kind    UTF8String  one of CertKind
 *   .5 node id      UTF8String  the node's unique id (a replaced or removed node's is dead)
 */
import {
  X509Certificate as NodeX509Certificate,
  createHash,
  createPrivateKey,
  createPublicKey,
  ECDH,
  createECDH,
  randomBytes,
  sign,
  type KeyObject,
} from "node:crypto";
import { isIP } from "node:net";
import { MeziteError } from "../lib/errors.js";
import * as der from "./der.js";
import { TAG, context, type Tlv } from "./der.js";

export const OID = {
  identityId: "1.3.9999.1829.1",
  instanceId: "1.3.9999.1829.2",
  generation: "1.3.9999.1829.3",
  certKind: "1.3.9999.1829.4",
  nodeId: "1.3.9999.1829.5",
} as const;

export type CertKind = "renewal" | "output" | "admin" | "node" | "server";
const CERT_KINDS: readonly string[] = ["renewal", "output", "admin", "node", "server"];

const STD_OID = {
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
} as const;

export interface KeyPair {
  publicKey: KeyObject;
  privateKey: KeyObject;
}

/**
 * A new P-256 key pair, made with ECDH and imported as JWK, never by generateKeyPairSync: in Node
 * 20 a generated pair shares a mutex with its key-generation job, exporting either key (as
 * p256Point does) holds it while allocating, and a garbage collection that destroys the job then
 * takes it again on the same thread: the process hangs for good (about 1 in 10,000 keys, seen as a
 * `mezd node join` stuck before its first packet). Imported keys share no mutex with a job, and
 * the point is known here, so it is never exported at all.
 */
export function generateP256(): KeyPair {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  const point = ecdh.getPublicKey();
  const jwk = { kty: "EC", crv: "P-256", x: point.subarray(1, 33).toString("base64url"), y: point.subarray(33, 65).toString("base64url") };
  const d = Buffer.alloc(32);
  const scalar = ecdh.getPrivateKey(); // big-endian, without leading zero bytes
  scalar.copy(d, 32 - scalar.length);
  const privateKey = createPrivateKey({ key: { ...jwk, d: d.toString("base64url") }, format: "jwk" });
  d.fill(0);
  scalar.fill(0);
  const publicKey = createPublicKey({ key: jwk, format: "jwk" });
  points.set(privateKey, point).set(publicKey, point);
  return { publicKey, privateKey };
}

// ---------------------------------------------------------------------------------------------
// Keys

function isP256(k: KeyObject): boolean {
  return k.asymmetricKeyType === "ec" && k.asymmetricKeyDetails?.namedCurve === "prime256v1";
}

function requireP256(k: KeyObject, type: "public" | "private", what: string): void {
  if (k?.type !== type || !isP256(k)) {
    throw new MeziteError("ERR_MALFORMED_KEY", `${what} must be an ECDSA P-256 ${type} key`);
  }
}

// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits, 65-byte point) }
const P256_SPKI_PREFIX = Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex");

// KeyObjects are immutable: each one's point is exported once (the CA key's on every issue otherwise).
const points = new WeakMap<KeyObject, Buffer>();

/** The uncompressed point 04||X||Y, via JWK: ~25x faster than Node's DER export. */
function p256Point(k: KeyObject): Buffer {
  let point = points.get(k);
  if (!point) {
    const jwk = k.export({ format: "jwk" });
    const x = Buffer.from(jwk.x ?? "", "base64url");
    const y = Buffer.from(jwk.y ?? "", "base64url");
    if (x.length !== 32 || y.length !== 32) throw new MeziteError("ERR_MALFORMED_KEY", "expected an ECDSA P-256 key");
    point = Buffer.concat([Buffer.from([4]), x, y]);
    points.set(k, point);
  }
  return Buffer.from(point); // callers may write to their copy
}

/** PKCS#8 PEM ("PRIVATE KEY"), unencrypted: whoever stores it protects the file. */
export function privateKeyToPem(k: KeyObject): string {
  if (k?.type !== "private") throw new MeziteError("ERR_MALFORMED_KEY", "expected a private key");
  return k.export({ type: "pkcs8", format: "pem" }) as string;
}

/** An unencrypted PKCS#8 key, P-256 or Ed25519 (the two key types Mezite uses). */
export function pemToPrivateKey(pem: string): KeyObject {
  const bytes = pemDecode(pem, "PRIVATE KEY");
  let k: KeyObject;
  try {
    k = createPrivateKey({ key: bytes, format: "der", type: "pkcs8" });
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_KEY", "private key is not a valid PKCS#8 key", { cause: e });
  }
  if (!isP256(k) && k.asymmetricKeyType !== "ed25519") {
    throw new MeziteError("ERR_MALFORMED_KEY", "private key must be ECDSA P-256 or Ed25519");
  }
  return k;
}

/** DER SubjectPublicKeyInfo of a P-256 key (of a private key: its public half). */
export function publicKeyToDer(k: KeyObject): Buffer {
  if (!(k?.type === "public" || k?.type === "private") || !isP256(k)) {
    throw new MeziteError("ERR_MALFORMED_KEY", "expected an ECDSA P-256 key");
  }
  return Buffer.concat([P256_SPKI_PREFIX, p256Point(k)]);
}

/** An uncompressed P-256 point (04||X||Y) known to lie on the curve: a public key as bytes. */
export type P256Point = Buffer & { readonly __onP256: true };

/**
 * A DER SubjectPublicKeyInfo holding a P-256 key, as its point. Only the canonical encoding (named
 * curve, uncompressed point, nothing trailing) is accepted, so one key has exactly one stored
 * form. No KeyObject is made: the keys that arrive this way are certified, never used here, and
 * importing one costs OpenSSL 3.0 ~100 µs where checking the point costs ~35 µs.
 */
export function p256PointFromDer(bytes: Uint8Array): P256Point {
  const point = spkiPoint(toBuffer(bytes, "ERR_MALFORMED_KEY", "public key"));
  if (!point) throw new MeziteError("ERR_MALFORMED_KEY", "public key is not a canonical DER ECDSA P-256 SubjectPublicKeyInfo");
  try {
    ECDH.convertKey(point, "prime256v1"); // decodes the point, refusing one off the curve
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_KEY", "public key is not a point on P-256", { cause: e });
  }
  return Buffer.from(point) as P256Point;
}

/** The point of a canonical P-256 SPKI, undefined for any other SPKI. */
function spkiPoint(spki: Buffer): Buffer | undefined {
  const n = P256_SPKI_PREFIX.length;
  const ok = spki.length === n + 65 && spki.subarray(0, n).equals(P256_SPKI_PREFIX) && spki[n] === 4;
  return ok ? spki.subarray(n) : undefined;
}

/** Via JWK: twice as fast as Node's DER decoder, and it too refuses points off the curve. */
function importPoint(point: Buffer): KeyObject {
  const coordinate = (from: number): string => point.subarray(from, from + 32).toString("base64url");
  return createPublicKey({ key: { kty: "EC", crv: "P-256", x: coordinate(1), y: coordinate(33) }, format: "jwk" });
}

// ---------------------------------------------------------------------------------------------
// Building certificates

/** A random positive 64-bit serial (never zero). */
export function randomSerial(): bigint {
  for (;;) {
    const s = randomBytes(8).readBigUInt64BE();
    if (s !== 0n) return s;
  }
}

/** The form ParsedCert.serial uses: lowercase hex, even length, no superfluous leading zeros. */
export function serialToHex(serial: bigint): string {
  const h = serial.toString(16);
  return h.length % 2 ? `0${h}` : h;
}

const ECDSA_WITH_SHA256 = der.seq(der.oid("1.2.840.10045.4.3.2"));
const VERSION_3 = der.tlv(context(0, true), der.uint(2n));

function extension(id: string, critical: boolean, value: Uint8Array): Buffer {
  return der.seq(der.oid(id), ...(critical ? [der.BOOLEAN_TRUE] : []), der.octetString(value));
}

function name(commonName: string, organization?: string): Buffer {
  const rdn = (type: string, value: string): Buffer => der.set(der.seq(der.oid(type), der.utf8String(value)));
  return der.seq(
    ...(organization === undefined ? [] : [rdn(STD_OID.organization, organization)]),
    rdn(STD_OID.commonName, commonName),
  );
}

// RFC 5280 §4.2.1.3 bits: digitalSignature is bit 0 (0x80), keyCertSign bit 5, cRLSign bit 6.
const KU_DIGITAL_SIGNATURE = extension(STD_OID.keyUsage, true, der.bitString(Buffer.from([0x80]), 7));
const KU_CERT_AND_CRL_SIGN = extension(STD_OID.keyUsage, true, der.bitString(Buffer.from([0x06]), 1));
// pathLen 0: a Mezite CA signs leaf certificates only, never another CA.
const BC_CA = extension(STD_OID.basicConstraints, true, der.seq(der.BOOLEAN_TRUE, der.uint(0n)));
const BC_LEAF = extension(STD_OID.basicConstraints, true, der.seq());
const EKU_CLIENT = extension(STD_OID.extKeyUsage, false, der.seq(der.oid(STD_OID.clientAuth)));
const EKU_SERVER = extension(STD_OID.extKeyUsage, false, der.seq(der.oid(STD_OID.serverAuth)));

/** RFC 5280 §4.2.1.2 method 1: SHA-1 over the subjectPublicKey bits (the point). */
const keyIdentifier = (point: Buffer): Buffer => createHash("sha1").update(point).digest();
const ski = (point: Buffer): Buffer => extension(STD_OID.subjectKeyIdentifier, false, der.octetString(keyIdentifier(point)));

interface TbsFields {
  serial: bigint;
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  point: Buffer;
  extensions: Buffer[];
}

function signCertificate(f: TbsFields, caKey: KeyObject): string {
  if (!(f.notBefore.getTime() < f.notAfter.getTime())) {
    throw new MeziteError("ERR_INTERNAL", "certificate validity: notBefore must be a date before notAfter");
  }
  // RFC 5280 §4.1.2.2: positive, at most 20 octets.
  if (f.serial <= 0n || f.serial >= 1n << 159n) {
    throw new MeziteError("ERR_INTERNAL", "certificate serial must be positive and fit in 20 octets");
  }
  let validity: Buffer;
  try {
    validity = der.seq(der.time(f.notBefore), der.time(f.notAfter));
  } catch (e) {
    throw new MeziteError("ERR_INTERNAL", "certificate validity dates are out of range", { cause: e });
  }
  const tbs = der.seq(
    VERSION_3,
    der.uint(f.serial),
    ECDSA_WITH_SHA256,
    f.issuer,
    validity,
    f.subject,
    Buffer.concat([P256_SPKI_PREFIX, f.point]),
    der.tlv(context(3, true), der.seq(...f.extensions)),
  );
  // Node's ECDSA signature is already the DER Ecdsa-Sig-Value X.509 wants.
  const signature = sign("sha256", tbs, caKey);
  return pemEncode(der.seq(tbs, ECDSA_WITH_SHA256, der.bitString(signature)), "CERTIFICATE");
}

export async function createCaCertificate(o: {
  commonName: string;
  organization?: string;
  keys: KeyPair;
  notBefore: Date;
  notAfter: Date;
}): Promise<string> {
  requireP256(o.keys.publicKey, "public", "CA public key");
  requireP256(o.keys.privateKey, "private", "CA private key");
  const point = p256Point(o.keys.publicKey);
  if (!point.equals(p256Point(o.keys.privateKey))) {
    throw new MeziteError("ERR_MALFORMED_KEY", "CA public and private keys are not one pair");
  }
  const subject = name(o.commonName, o.organization);
  return signCertificate(
    {
      serial: randomSerial(),
      issuer: subject,
      subject,
      notBefore: o.notBefore,
      notAfter: o.notAfter,
      point,
      extensions: [BC_CA, KU_CERT_AND_CRL_SIGN, ski(point)],
    },
    o.keys.privateKey,
  );
}

export interface LeafOptions {
  caCertPem: string;
  caKey: KeyObject;
  /** A P-256 public key, as a KeyObject or as a checked point. */
  publicKey: KeyObject | P256Point;
  /** Random positive 64-bit (randomSerial) when absent. */
  serial?: bigint;
  notBefore: Date;
  notAfter: Date;
}

interface Issuer {
  subject: Buffer;
  point: Buffer;
  aki: Buffer;
}

// Each distinct CA certificate is decoded once, not per issue. A handful of CAs exist.
const issuers = new Map<string, Issuer>();

function issuer(caCertPem: string): Issuer {
  let found = issuers.get(caCertPem);
  if (!found) {
    const ca = decodeCertificate(pemDecode(caCertPem, "CERTIFICATE"));
    const point = spkiPoint(ca.spki.raw);
    if (!point) throw new MeziteError("ERR_WRONG_CA", "CA certificate does not hold an ECDSA P-256 key");
    const skiExt = ca.extensions.get(STD_OID.subjectKeyIdentifier);
    const keyId = skiExt ? malformedIfThrows(() => der.readOne(skiExt, TAG.OCTET_STRING).value) : keyIdentifier(point);
    // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
    const aki = extension(STD_OID.authorityKeyIdentifier, false, der.seq(der.tlv(context(0, false), keyId)));
    found = { subject: ca.subject.raw, point, aki };
    if (issuers.size >= 32) issuers.clear();
    issuers.set(caCertPem, found);
  }
  return found;
}

function issueLeaf(o: LeafOptions, subject: Buffer, extensions: Buffer[]): string {
  const point = Buffer.isBuffer(o.publicKey) ? o.publicKey : (requireP256(o.publicKey, "public", "certificate public key"), p256Point(o.publicKey));
  requireP256(o.caKey, "private", "CA signing key");
  const ca = issuer(o.caCertPem);
  if (!p256Point(o.caKey).equals(ca.point)) {
    throw new MeziteError("ERR_WRONG_CA", "the CA signing key does not belong to the CA certificate");
  }
  return signCertificate(
    {
      serial: o.serial ?? randomSerial(),
      issuer: ca.subject,
      subject,
      notBefore: o.notBefore,
      notAfter: o.notAfter,
      point,
      extensions: [BC_LEAF, KU_DIGITAL_SIGNATURE, ski(point), ca.aki, ...extensions],
    },
    o.caKey,
  );
}

export async function issueClientCertificate(
  o: LeafOptions & {
    commonName: string;
    organization?: string;
    spiffeId?: string;
    kind: CertKind;
    identityId?: string;
    instanceId?: string;
    generation?: bigint;
    nodeId?: string;
  },
): Promise<string> {
  if (!CERT_KINDS.includes(o.kind)) throw new MeziteError("ERR_INTERNAL", "unknown certificate kind");
  if (o.generation !== undefined && o.generation < 0n) {
    throw new MeziteError("ERR_INTERNAL", "certificate generation must not be negative");
  }
  const exts = [EKU_CLIENT];
  if (o.spiffeId !== undefined) {
    const uri = der.tlv(context(6, false), ia5(o.spiffeId, "SPIFFE ID"));
    exts.push(extension(STD_OID.subjectAltName, false, der.seq(uri)));
  }
  exts.push(extension(OID.certKind, false, der.utf8String(o.kind)));
  if (o.identityId !== undefined) exts.push(extension(OID.identityId, false, der.utf8String(o.identityId)));
  if (o.instanceId !== undefined) exts.push(extension(OID.instanceId, false, der.utf8String(o.instanceId)));
  if (o.generation !== undefined) exts.push(extension(OID.generation, false, der.uint(o.generation)));
  if (o.nodeId !== undefined) exts.push(extension(OID.nodeId, false, der.utf8String(o.nodeId)));
  return issueLeaf(o, name(o.commonName, o.organization), exts);
}

export async function issueServerCertificate(
  o: LeafOptions & { commonName: string; dnsNames: string[]; ipAddresses: string[] },
): Promise<string> {
  if (o.dnsNames.length + o.ipAddresses.length === 0) {
    throw new MeziteError("ERR_CONFIG", "a TLS server certificate needs at least one DNS name or IP address");
  }
  const names = [
    ...o.dnsNames.map((d) => der.tlv(context(2, false), ia5(d, "DNS name"))),
    ...o.ipAddresses.map((ip) => der.tlv(context(7, false), ipBytes(ip))),
  ];
  return issueLeaf(o, name(o.commonName), [
    EKU_SERVER,
    extension(STD_OID.subjectAltName, false, der.seq(...names)),
    extension(OID.certKind, false, der.utf8String("server")),
  ]);
}

function ia5(s: string, what: string): Buffer {
  if (!/^[\x21-\x7e]+$/.test(s)) {
    throw new MeziteError("ERR_CONFIG", `${what} must be printable ASCII without spaces: ${JSON.stringify(s)}`);
  }
  return Buffer.from(s, "latin1");
}

function ipBytes(ip: string): Buffer {
  const family = isIP(ip);
  if (family === 4) return Buffer.from(ip.split(".").map(Number));
  if (family !== 6 || ip.includes("%")) throw new MeziteError("ERR_CONFIG", `not an IP address: ${JSON.stringify(ip)}`);
  let text = ip;
  if (text.includes(".")) {
    // An embedded IPv4 tail (::ffff:10.0.0.1) becomes the last two 16-bit groups.
    const at = text.lastIndexOf(":");
    const [a = 0, b = 0, c = 0, d = 0] = text.slice(at + 1).split(".").map(Number);
    text = `${text.slice(0, at + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const groups = (s: string): string[] => (s === "" ? [] : s.split(":"));
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading certificates

export interface ParsedCert {
  subjectCommonName: string;
  /** serialToHex form. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** The first spiffe:// URI SAN. */
  spiffeId?: string;
  kind?: CertKind;
  identityId?: string;
  instanceId?: string;
  generation?: bigint;
  nodeId?: string;
  /** RFC 2253 attributes in certificate order, e.g. "O=test\, inc, CN=User CA". */
  issuer: string;
  publicKey: KeyObject;
}

interface Decoded {
  serial: bigint;
  notBefore: Date;
  notAfter: Date;
  subject: Tlv;
  spki: Tlv;
  /** OID → the extension's value (the content of extnValue). */
  extensions: Map<string, Buffer>;
}

function malformedIfThrows<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof MeziteError) throw e;
    throw new MeziteError("ERR_MALFORMED_CERT", "certificate could not be parsed", { cause: e });
  }
}

const TRUE_CONTENT = Buffer.from([0xff]);

/** Walks the DER Certificate structure (RFC 5280 §4.1) for the fields Mezite reads. */
function decodeCertificate(bytes: Buffer): Decoded {
  return malformedIfThrows(() => {
    const cert = der.readOne(bytes, TAG.SEQUENCE);
    const [tbs] = der.children(cert, [TAG.SEQUENCE, TAG.SEQUENCE, TAG.BIT_STRING]) as [Tlv, Tlv, Tlv];
    const fields = der.children(tbs);
    let i = fields[0]?.tag === context(0, true) ? 1 : 0;
    const next = (tag: number): Tlv => {
      const f = fields[i++];
      if (!f || f.tag !== tag) throw new der.DerError("unexpected TBSCertificate structure");
      return f;
    };
    const serial = der.readUint(next(TAG.INTEGER));
    next(TAG.SEQUENCE); // signature algorithm
    next(TAG.SEQUENCE); // issuer
    const validity = der.children(next(TAG.SEQUENCE), [undefined, undefined]);
    const [notBefore, notAfter] = validity.map(der.readTime) as [Date, Date];
    const subject = next(TAG.SEQUENCE);
    const spki = next(TAG.SEQUENCE);
    const extensions: Decoded["extensions"] = new Map();
    for (const f of fields.slice(i)) {
      if (f.tag !== context(3, true)) continue; // issuer/subject unique ids: unused
      for (const e of der.children(der.readOne(f.value, TAG.SEQUENCE))) {
        // Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING };
        // DER omits a FALSE default, so a present BOOLEAN must be TRUE.
        const parts = der.children(e);
        const [idTlv, critical] = parts;
        const value = parts[parts.length - 1];
        const criticalOk = parts.length === 2 || (critical?.tag === TAG.BOOLEAN && critical.value.equals(TRUE_CONTENT));
        if (!idTlv || !value || value.tag !== TAG.OCTET_STRING || parts.length > 3 || !criticalOk) {
          throw new der.DerError("malformed extension");
        }
        const id = der.readOid(idTlv);
        if (extensions.has(id)) throw new MeziteError("ERR_MALFORMED_CERT", `certificate repeats extension ${id}`);
        extensions.set(id, value.value);
      }
    }
    return { serial, notBefore, notAfter, subject, spki, extensions };
  });
}

/** Exactly one CERTIFICATE block; whitespace around it is allowed, other text is not. */
export function parseCertificatePem(pem: string): ParsedCert {
  return parseCertificateDer(pemDecode(pem, "CERTIFICATE"));
}

export function parseCertificateDer(bytes: Uint8Array): ParsedCert {
  const buf = toBuffer(bytes, "ERR_MALFORMED_CERT", "certificate");
  // OpenSSL's parse is the gatekeeper for the whole structure; ours reads what it cannot expose.
  const node = nodeCert(buf);
  return readFields(buf, () => node.issuer);
}

/**
 * A TLS peer's certificate, which OpenSSL has already parsed and verified: only our own walk of
 * its DER, no second OpenSSL parse (~0.4 ms per renewal in Node 20). Issuer and public key are
 * read when first asked for; renewal needs neither.
 */
export function parseVerifiedCertificate(cert: NodeX509Certificate): ParsedCert {
  return readFields(cert.raw, () => cert.issuer);
}

function readFields(buf: Buffer, issuerText: () => string): ParsedCert {
  const d = decodeCertificate(buf);
  return malformedIfThrows(() => {
    let issuer: string | undefined;
    let publicKey: KeyObject | undefined;
    const parsed: ParsedCert = {
      subjectCommonName: commonName(d.subject),
      serial: serialToHex(d.serial),
      notBefore: d.notBefore,
      notAfter: d.notAfter,
      get issuer() {
        return (issuer ??= issuerText().split("\n").join(", "));
      },
      get publicKey() {
        return (publicKey ??= malformedIfThrows(() => certPublicKey(d.spki.raw)));
      },
    };
    const text = (id: string): string | undefined => {
      const e = d.extensions.get(id);
      return e && der.readString(der.readOne(e, TAG.UTF8_STRING));
    };
    const san = d.extensions.get(STD_OID.subjectAltName);
    if (san) {
      const uris = der.children(der.readOne(san, TAG.SEQUENCE)).filter((n) => n.tag === context(6, false));
      const spiffe = uris.map((u) => u.value.toString("latin1")).find((u) => u.startsWith("spiffe://"));
      if (spiffe !== undefined) parsed.spiffeId = spiffe;
    }
    const kind = text(OID.certKind);
    if (kind !== undefined) {
      if (!CERT_KINDS.includes(kind)) throw new MeziteError("ERR_MALFORMED_CERT", "certificate has an unknown kind");
      parsed.kind = kind as CertKind;
    }
    const identityId = text(OID.identityId);
    if (identityId !== undefined) parsed.identityId = identityId;
    const instanceId = text(OID.instanceId);
    if (instanceId !== undefined) parsed.instanceId = instanceId;
    const nodeId = text(OID.nodeId);
    if (nodeId !== undefined) parsed.nodeId = nodeId;
    const generation = d.extensions.get(OID.generation);
    if (generation) parsed.generation = der.readUint(der.readOne(generation, TAG.INTEGER));
    return parsed;
  });
}

function certPublicKey(spki: Buffer): KeyObject {
  const point = spkiPoint(spki);
  return point ? importPoint(point) : createPublicKey({ key: spki, format: "der", type: "spki" });
}

/** The first CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue), "" when there is none. */
function commonName(n: Tlv): string {
  for (const rdn of der.children(n)) {
    for (const atv of der.children(rdn)) {
      const [type, value] = der.children(atv, [TAG.OID, undefined]) as [Tlv, Tlv];
      if (der.readOid(type) === STD_OID.commonName) return der.readString(value);
    }
  }
  return "";
}

/**
 * True when caCertPem's key signed certPem and the names and key identifiers chain (OpenSSL's
 * X509_check_issued). Validity dates are not checked here. Malformed input throws.
 */
export async function verifyCertificateSignature(certPem: string, caCertPem: string): Promise<boolean> {
  return signedBy(nodeCert(pemDecode(certPem, "CERTIFICATE")), nodeCert(pemDecode(caCertPem, "CERTIFICATE")));
}

/** Whether `ca` issued `cert`: names and key identifiers chain (X509_check_issued) and its key signed it. */
export function signedBy(cert: NodeX509Certificate, ca: NodeX509Certificate): boolean {
  return cert.checkIssued(ca) && cert.verify(ca.publicKey);
}

/** Whether `now` (ms) lies within the certificate's validity. */
export function validAt(cert: NodeX509Certificate, now: number): boolean {
  return Date.parse(cert.validFrom) <= now && now <= Date.parse(cert.validTo);
}

/**
 * Why `leaf` may not serve as the auth service at `host` to a client that trusts the CAs of `cas`
 * (the cluster's TLS CA bundle) and nothing else, or undefined when it may. These are the checks
 * OpenSSL makes with those CAs as its only trust anchors, for a chain of one (a Mezite CA has
 * pathLen 0: it signs leaf certificates only):
 * - issued and signed by one of `cas` that is a CA and valid now;
 * - valid now itself;
 * - for serverAuth: the same CA issues nodes' certificates, for clientAuth only;
 * - for the host dialled.
 */
export function serverCertificateProblem(leaf: NodeX509Certificate, cas: readonly NodeX509Certificate[], host: string, now = Date.now()): string | undefined {
  const issuers = cas.filter((ca) => ca.ca && signedBy(leaf, ca));
  if (issuers.length === 0) return "is not signed by the cluster's TLS CA";
  if (!issuers.some((ca) => validAt(ca, now))) return `is signed by a TLS CA that is not valid now (valid from ${issuers[0]!.validFrom} to ${issuers[0]!.validTo})`;
  if (!validAt(leaf, now)) return `is not valid now (valid from ${leaf.validFrom} to ${leaf.validTo})`;
  if (!leaf.keyUsage?.includes(STD_OID.serverAuth)) return "is not a server certificate";
  if (!(isIP(host) ? leaf.checkIP(host) : leaf.checkHost(host, { subject: "never" }))) return `is not for ${host}`;
  return undefined;
}

/** "sha256:" + hex SHA-256 of the CA certificate's DER SubjectPublicKeyInfo. */
export function caPin(caCertPem: string): string {
  const bytes = pemDecode(caCertPem, "CERTIFICATE");
  nodeCert(bytes);
  return `sha256:${createHash("sha256").update(decodeCertificate(bytes).spki.raw).digest("hex")}`;
}

/** The certificates of a PEM bundle (concatenated CERTIFICATE blocks), each as its own PEM. */
export function splitCertificateBundle(bundle: string): string[] {
  const blocks = bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new MeziteError("ERR_MALFORMED_PEM", "expected one or more PEM CERTIFICATE blocks");
  return blocks.map((b) => `${b}\n`);
}

/** Whether a CA certificate of the bundle has one of the pins (caPin). */
export function bundleHasPin(bundle: string, pins: string[]): boolean {
  return splitCertificateBundle(bundle).some((pem) => pins.includes(caPin(pem)));
}

function nodeCert(bytes: Buffer): NodeX509Certificate {
  try {
    return new NodeX509Certificate(bytes);
  } catch (e) {
    throw new MeziteError("ERR_MALFORMED_CERT", "certificate could not be parsed", { cause: e });
  }
}

function toBuffer(bytes: Uint8Array, code: "ERR_MALFORMED_CERT" | "ERR_MALFORMED_KEY", what: string): Buffer {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) throw new MeziteError(code, `${what} is empty or not bytes`);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

// ---------------------------------------------------------------------------------------------
// PEM

const PEM_RE = /^-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]+)-----END \1-----$/;

export function pemEncode(bytes: Uint8Array, label: string): string {
  const lines = Buffer.from(bytes).toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** Strict: one block with the expected label and canonical base64 (line breaks are free). */
export function pemDecode(pem: string, label: string): Buffer {
  if (typeof pem !== "string") throw new MeziteError("ERR_MALFORMED_PEM", `expected PEM text (${label})`);
  const m = PEM_RE.exec(pem.trim());
  if (!m || m[1] !== label) throw new MeziteError("ERR_MALFORMED_PEM", `expected exactly one PEM "${label}" block`);
  const body = (m[2] ?? "").replace(/\s+/g, "");
  const bytes = Buffer.from(body, "base64");
  if (bytes.length === 0 || bytes.toString("base64") !== body) {
    throw new MeziteError("ERR_MALFORMED_PEM", `PEM "${label}" block has invalid base64`);
  }
  return bytes;
}
