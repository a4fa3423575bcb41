/**
 * OpenSSH certificates, `ssh-ed25519-cert-v01@openssh.com` with an Ed25519 CA (PROTOCOL.certkeys):
 * signing, parsing and verifying. Parsing checks structure only; verifySshCertificate checks the
 * CA, the signature and the validity window. Principals and options are the caller's to judge.
 */
import { randomBytes, sign, verify } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { MeziteError } from "../lib/errors.js";
import { ED25519_KEY_TYPE, ed25519PublicFromRaw, ed25519RawPublic, parseSshPublicKeyBlob, sshPublicKeyBlob } from "./sshkey.js";
import { SshReader, SshWriter, decodeBase64Strict } from "./sshwire.js";

export const ED25519_CERT_TYPE = "ssh-ed25519-cert-v01@openssh.com";

const CERT_TYPES = { user: 1, host: 2 } as const;
const UINT64_MAX = (1n << 64n) - 1n;

export interface SshCertFields {
  type: "user" | "host";
  /** Ed25519 subject key. */
  publicKey: KeyObject;
  serial: bigint;
  keyId: string;
  principals: string[];
  /** Unix seconds; 0 = since forever. */
  validAfter: number;
  /** Unix seconds; Infinity = forever (encoded as 2^64-1, as ssh-keygen does). */
  validBefore: number;
  /** e.g. {"force-command": "..."}; "" = empty data, else the value is an SSH string in the data. */
  criticalOptions?: Record<string, string>;
  /** e.g. {"permit-pty": "", "mezite-roles@mezite": "ci-deployer"}; encoded as criticalOptions. */
  extensions?: Record<string, string>;
}

export interface SshCertificate extends Required<SshCertFields> {
  nonce: Buffer;
  signatureKey: KeyObject;
  /** The whole certificate as signed, the bytes a cert file carries in base64. */
  blob: Buffer;
}

function usage(message: string): MeziteError {
  return new MeziteError("ERR_USAGE", `cannot sign certificate: ${message}`);
}

/** One line of text with no NUL, as OpenSSH's cstrings require. */
function checkText(value: string, field: string): void {
  if (value.includes("\0")) throw usage(`${field} contains a NUL character`);
}

function encodeTime(t: number, field: string): bigint {
  if (t === Infinity) return UINT64_MAX;
  if (!Number.isSafeInteger(t) || t < 0) throw usage(`${field} must be unix seconds (a non-negative integer)`);
  return BigInt(t);
}

function decodeTime(t: bigint): number {
  return t > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(t);
}

/** Options and extensions: sorted by name (byte order, as strcmp), "" = empty data. */
function encodeOptions(opts: Record<string, string>, field: string): Buffer {
  const names = Object.keys(opts).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const w = new SshWriter();
  for (const name of names) {
    const value = opts[name] as string;
    if (name === "") throw usage(`${field} has an empty name`);
    checkText(name, `${field} name`);
    checkText(value, `${field} ${name}`);
    w.string(name).string(value === "" ? Buffer.alloc(0) : new SshWriter().string(value).toBuffer());
  }
  return w.toBuffer();
}

function decodeOptions(r: SshReader, field: string): Record<string, string> {
  const entries: [string, string][] = [];
  const seen = new Set<string>();
  while (r.remaining > 0) {
    const name = r.text(`${field} name`);
    if (seen.has(name)) r.fail(`${field} ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const data = r.nested(`${field} data`);
    let value = "";
    if (data.remaining > 0) {
      value = data.text(`${field} value`);
      data.end();
    }
    entries.push([name, value]);
  }
  // fromEntries defines own properties, so a name like "__proto__" stays data.
  return Object.fromEntries(entries);
}

export function signSshCertificate(fields: SshCertFields, caPrivateKey: KeyObject): Buffer {
  if (caPrivateKey.type !== "private" || caPrivateKey.asymmetricKeyType !== "ed25519") {
    throw usage("the CA key must be an Ed25519 private key");
  }
  if (!Object.hasOwn(CERT_TYPES, fields.type)) throw usage(`type must be "user" or "host"`);
  if (fields.serial < 0n || fields.serial > UINT64_MAX) throw usage("serial must fit in 64 bits");
  // An empty list means "any principal" to OpenSSH: never issue that by accident.
  if (fields.principals.length === 0) throw usage("at least one principal is required");
  for (const p of fields.principals) {
    if (p === "") throw usage("a principal is empty");
    checkText(p, "principal");
  }
  checkText(fields.keyId, "key id");
  const validAfter = encodeTime(fields.validAfter, "validAfter");
  const validBefore = encodeTime(fields.validBefore, "validBefore");
  if (validAfter >= validBefore) throw usage("validAfter must be before validBefore");

  const principals = new SshWriter();
  for (const p of fields.principals) principals.string(p);
  const body = new SshWriter()
    .string(ED25519_CERT_TYPE)
    .string(randomBytes(32))
    .string(ed25519RawPublic(fields.publicKey))
    .uint64(fields.serial)
    .uint32(CERT_TYPES[fields.type])
    .string(fields.keyId)
    .string(principals.toBuffer())
    .uint64(validAfter)
    .uint64(validBefore)
    .string(encodeOptions(fields.criticalOptions ?? {}, "critical option"))
    .string(encodeOptions(fields.extensions ?? {}, "extension"))
    .string("") // reserved
    .string(sshPublicKeyBlob(caPrivateKey))
    .toBuffer();
  const signature = new SshWriter().string(ED25519_KEY_TYPE).string(sign(null, body, caPrivateKey)).toBuffer();
  return Buffer.concat([body, new SshWriter().string(signature).toBuffer()]);
}

export function formatSshCertificate(blob: Buffer, comment?: string): string {
  const line = `${ED25519_CERT_TYPE} ${blob.toString("base64")}`;
  if (comment === undefined || comment === "") return line;
  if (/[\0\r\n]/.test(comment)) throw usage("a comment must be a single line");
  return `${line} ${comment}`;
}

/** Splits a blob into its fields plus the signed part and the raw signature. */
function decode(blob: Buffer): { cert: SshCertificate; signed: Buffer; signature: Buffer } {
  const r = new SshReader(blob, "ERR_MALFORMED_CERT", "certificate");
  const certType = r.text("certificate type");
  if (certType !== ED25519_CERT_TYPE) r.fail(`type ${JSON.stringify(certType)} is not ${ED25519_CERT_TYPE}`);
  const nonce = Buffer.from(r.string("nonce"));
  const pk = r.string("public key");
  if (pk.length !== 32) r.fail("public key is not 32 bytes");
  const serial = r.uint64("serial");
  const typeCode = r.uint32("cert type");
  const type = typeCode === CERT_TYPES.user ? "user" : typeCode === CERT_TYPES.host ? "host" : r.fail(`unknown cert type ${typeCode}`);
  const keyId = r.text("key id");
  const pr = r.nested("principals");
  const principals: string[] = [];
  while (pr.remaining > 0) principals.push(pr.text("principal"));
  const validAfter = decodeTime(r.uint64("valid after"));
  const validBefore = decodeTime(r.uint64("valid before"));
  const criticalOptions = decodeOptions(r.nested("critical options"), "critical option");
  const extensions = decodeOptions(r.nested("extensions"), "extension");
  r.string("reserved");
  const signatureKey = parseSshPublicKeyBlob(r.string("signature key"), "ERR_MALFORMED_CERT", "certificate signature key");
  const signed = blob.subarray(0, r.offset);
  const sr = r.nested("signature");
  r.end();
  if (sr.text("signature type") !== ED25519_KEY_TYPE) sr.fail(`signature is not ${ED25519_KEY_TYPE}`);
  const signature = sr.string("signature");
  if (signature.length !== 64) sr.fail("Ed25519 signature is not 64 bytes");
  sr.end();

  let publicKey: KeyObject;
  try {
    publicKey = ed25519PublicFromRaw(pk);
  } catch {
    return r.fail("invalid Ed25519 public key");
  }
  const cert: SshCertificate = {
    type,
    publicKey,
    serial,
    keyId,
    principals,
    validAfter,
    validBefore,
    criticalOptions,
    extensions,
    nonce,
    signatureKey,
    blob: Buffer.from(blob),
  };
  return { cert, signed, signature };
}

/** Accepts a certificate line ("ssh-ed25519-cert-v01@openssh.com BASE64 [comment]"), bare base64 or the raw blob. */
export function parseSshCertificate(input: string | Uint8Array): SshCertificate {
  let blob: Buffer;
  if (typeof input === "string") {
    const fields = input.trim().split(/[ \t]+/);
    let b64 = fields[0] ?? "";
    if (fields.length > 1) {
      if (fields[0] !== ED25519_CERT_TYPE) {
        throw new MeziteError("ERR_MALFORMED_CERT", `malformed certificate: expected a ${ED25519_CERT_TYPE} line`);
      }
      b64 = fields[1] as string;
    }
    blob = decodeBase64Strict(b64, "ERR_MALFORMED_CERT", "certificate");
  } else {
    blob = Buffer.from(input);
  }
  return decode(blob).cert;
}

/**
 * Throws ERR_WRONG_CA, ERR_BAD_SIGNATURE, ERR_CERT_NOT_YET_VALID or ERR_CERT_EXPIRED (checked in
 * that order). The signature is checked over `cert.blob`, and the fields of `cert` must be the
 * ones in that blob, so a certificate object edited after parsing does not verify.
 */
export function verifySshCertificate(cert: SshCertificate, caPublicKey: KeyObject, nowSeconds: number): void {
  if (!Number.isFinite(nowSeconds)) throw new MeziteError("ERR_USAGE", "the current time must be a finite number of seconds");
  const { cert: signedCert, signed, signature } = decode(cert.blob);
  if (!ed25519RawPublic(signedCert.signatureKey).equals(ed25519RawPublic(caPublicKey))) {
    throw new MeziteError("ERR_WRONG_CA", "certificate is not signed by the expected CA");
  }
  if (!verify(null, signed, caPublicKey, signature)) {
    throw new MeziteError("ERR_BAD_SIGNATURE", "certificate signature does not verify");
  }
  if (!sameFields(cert, signedCert)) {
    throw new MeziteError("ERR_BAD_SIGNATURE", "certificate fields differ from the signed certificate");
  }
  if (nowSeconds < signedCert.validAfter) {
    throw new MeziteError("ERR_CERT_NOT_YET_VALID", `certificate is valid from ${signedCert.validAfter} (unix seconds), now is ${nowSeconds}`);
  }
  if (nowSeconds >= signedCert.validBefore) {
    throw new MeziteError("ERR_CERT_EXPIRED", `certificate expired at ${signedCert.validBefore} (unix seconds), now is ${nowSeconds}`);
  }
}

function sameFields(a: SshCertificate, b: SshCertificate): boolean {
  const plain = (c: SshCertificate) =>
    JSON.stringify([
      c.type, c.serial.toString(), c.keyId, c.principals, c.validAfter, c.validBefore,
      Object.entries(c.criticalOptions), Object.entries(c.extensions), c.nonce.toString("hex"),
      ed25519RawPublic(c.publicKey).toString("hex"), ed25519RawPublic(c.signatureKey).toString("hex"),
    ]);
  return plain(a) === plain(b);
}
