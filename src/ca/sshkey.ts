/**
 * Ed25519 keys in OpenSSH's encodings: the public key blob and authorized_keys line, the
 * unencrypted `openssh-key-v1` private key file (PROTOCOL.key; OpenSSH rejects Node's PKCS#8 PEM
 * for Ed25519) and the SHA256 fingerprint. Node's KeyObject is the in-memory form throughout.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { MeziteError } from "../lib/errors.js";
import type { ErrorCode } from "../lib/errors.js";
import { SshReader, SshWriter, decodeBase64Strict } from "./sshwire.js";

export const ED25519_KEY_TYPE = "ssh-ed25519";

// DER prefix of an Ed25519 PKCS#8 key (RFC 8410); the 32-byte seed follows.
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const AUTH_MAGIC = Buffer.from("openssh-key-v1\0", "latin1");
const PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END = "-----END OPENSSH PRIVATE KEY-----";
const BLOCK_SIZE = 8; // cipher "none"

function malformed(message: string, cause?: unknown): MeziteError {
  return new MeziteError("ERR_MALFORMED_KEY", message, cause === undefined ? undefined : { cause });
}

function requireEd25519(key: KeyObject, kind: "public" | "private" | "any"): void {
  if (key.asymmetricKeyType !== "ed25519" || (kind !== "any" && key.type !== kind)) {
    throw malformed(`expected an Ed25519 ${kind === "any" ? "" : `${kind} `}key`);
  }
}

// KeyObjects are immutable, so each one's public half is exported once. Through JWK: Node 20's
// DER export costs ~165 µs per call in OpenSSL 3.0, JWK ~2 µs (npm run bench: the CA key is
// exported on every renewal).
const rawPublics = new WeakMap<KeyObject, Buffer>();

/** The 32-byte public key; a private key is accepted and its public half returned. */
export function ed25519RawPublic(key: KeyObject): Buffer {
  let raw = rawPublics.get(key);
  if (!raw) {
    requireEd25519(key, "any");
    raw = Buffer.from(key.export({ format: "jwk" }).x ?? "", "base64url");
    if (raw.length !== 32) throw malformed("expected an Ed25519 key");
    rawPublics.set(key, raw);
  }
  return Buffer.from(raw); // callers may write to their copy
}

/** Via JWK: ~15x faster than importing a DER SubjectPublicKeyInfo in Node 20. */
export function ed25519PublicFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw malformed(`an Ed25519 public key is 32 bytes, not ${raw.length}`);
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(raw).toString("base64url") }, format: "jwk" });
  } catch (e) {
    throw malformed("invalid Ed25519 public key", e);
  }
}

/**
 * A new Ed25519 private key from a random seed, never by generateKeyPairSync: a generated key
 * shares a mutex with its key-generation job, and exporting it (ed25519RawPublic) can deadlock
 * against the job's destructor in a garbage collection (see x509.ts generateP256).
 */
export function generateEd25519(): KeyObject {
  const seed = randomBytes(32);
  try {
    return ed25519PrivateFromSeed(seed);
  } finally {
    seed.fill(0);
  }
}

function ed25519PrivateFromSeed(seed: Uint8Array): KeyObject {
  try {
    return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: "der", type: "pkcs8" });
  } catch (e) {
    throw malformed("invalid Ed25519 private key", e);
  }
}

function ed25519Seed(priv: KeyObject): Buffer {
  return Buffer.from(priv.export({ format: "jwk" }).d ?? "", "base64url");
}

export function sshPublicKeyBlob(pub: KeyObject): Buffer {
  return new SshWriter().string(ED25519_KEY_TYPE).string(ed25519RawPublic(pub)).toBuffer();
}

/** Parses a public key blob; `code`/`what` let a certificate parser report its own error code. */
export function parseSshPublicKeyBlob(blob: Uint8Array, code: ErrorCode = "ERR_MALFORMED_KEY", what = "public key"): KeyObject {
  const r = new SshReader(blob, code, what);
  const type = r.text("key type");
  if (type !== ED25519_KEY_TYPE) r.fail(`key type ${JSON.stringify(type)} is not ${ED25519_KEY_TYPE}`);
  const raw = r.string("Ed25519 public key");
  if (raw.length !== 32) r.fail("Ed25519 public key is not 32 bytes");
  r.end();
  try {
    return ed25519PublicFromRaw(raw);
  } catch {
    return r.fail("invalid Ed25519 public key");
  }
}

/** A comment must stay on its one line. */
function checkComment(comment: string): void {
  if (/[\0\r\n]/.test(comment)) throw new MeziteError("ERR_USAGE", "a key comment must be a single line");
}

export function formatAuthorizedKey(pub: KeyObject, comment?: string): string {
  const line = `${ED25519_KEY_TYPE} ${sshPublicKeyBlob(pub).toString("base64")}`;
  if (comment === undefined || comment === "") return line;
  checkComment(comment);
  return `${line} ${comment}`;
}

export function parseAuthorizedKey(line: string): KeyObject {
  const m = /^(\S+)[ \t]+(\S+)(?:[ \t]+[^\r\n]*)?$/.exec(line.trim());
  if (m === null) throw malformed("expected an authorized_keys line: ssh-ed25519 BASE64 [comment]");
  if (m[1] !== ED25519_KEY_TYPE) throw malformed(`key type ${JSON.stringify(m[1])} is not ${ED25519_KEY_TYPE}`);
  const blob = decodeBase64Strict(m[2] as string, "ERR_MALFORMED_KEY", "public key");
  return parseSshPublicKeyBlob(blob);
}

export function encodeOpenSSHPrivateKey(priv: KeyObject, comment = ""): string {
  requireEd25519(priv, "private");
  checkComment(comment);
  const pub = ed25519RawPublic(priv);
  const check = randomBytes(4);
  const secret = new SshWriter()
    .raw(check)
    .raw(check)
    .string(ED25519_KEY_TYPE)
    .string(pub)
    .string(Buffer.concat([ed25519Seed(priv), pub])) // OpenSSH keeps seed || public
    .string(comment)
    .toBuffer();
  const padLen = (BLOCK_SIZE - (secret.length % BLOCK_SIZE)) % BLOCK_SIZE;
  const padding = Buffer.from(Array.from({ length: padLen }, (_, i) => i + 1));
  const body = new SshWriter()
    .raw(AUTH_MAGIC)
    .string("none") // cipher
    .string("none") // kdf
    .string("") // kdf options
    .uint32(1)
    .string(sshPublicKeyBlob(priv))
    .string(Buffer.concat([secret, padding]))
    .toBuffer();
  const lines = body.toString("base64").match(/.{1,70}/g) ?? [];
  return `${PEM_BEGIN}\n${lines.join("\n")}\n${PEM_END}\n`;
}

export function parseOpenSSHPrivateKey(text: string): KeyObject {
  const trimmed = text.trim();
  if (!trimmed.startsWith(PEM_BEGIN) || !trimmed.endsWith(PEM_END)) {
    throw malformed("not an OpenSSH private key (expected -----BEGIN OPENSSH PRIVATE KEY-----)");
  }
  const b64 = trimmed.slice(PEM_BEGIN.length, trimmed.length - PEM_END.length).replace(/\s+/g, "");
  const body = decodeBase64Strict(b64, "ERR_MALFORMED_KEY", "private key");

  const r = new SshReader(body, "ERR_MALFORMED_KEY", "private key");
  if (!r.raw(AUTH_MAGIC.length, "magic").equals(AUTH_MAGIC)) r.fail("bad magic");
  const cipher = r.text("cipher name");
  const kdf = r.text("kdf name");
  r.string("kdf options");
  if (cipher !== "none" || kdf !== "none") r.fail("encrypted private keys are not supported");
  if (r.uint32("key count") !== 1) r.fail("expected exactly one key");
  const pubKey = parseSshPublicKeyBlob(r.string("public key"));
  const s = r.nested("private section");
  r.end();

  if (s.remaining % BLOCK_SIZE !== 0) s.fail("private section is not padded to the block size");
  if (s.uint32("checkint") !== s.uint32("checkint")) s.fail("check integers differ");
  if (s.text("key type") !== ED25519_KEY_TYPE) s.fail(`key type is not ${ED25519_KEY_TYPE}`);
  const pub = s.string("public key");
  const secret = s.string("private key");
  s.string("comment");
  const padLen = s.remaining;
  const padding = s.raw(padLen, "padding");
  if (padLen >= BLOCK_SIZE || padding.some((b, i) => b !== i + 1)) s.fail("bad padding");

  const raw = ed25519RawPublic(pubKey);
  if (!pub.equals(raw) || secret.length !== 64 || !secret.subarray(32).equals(raw)) {
    s.fail("private key does not match its public key");
  }
  const priv = ed25519PrivateFromSeed(secret.subarray(0, 32));
  if (!ed25519RawPublic(priv).equals(raw)) s.fail("private key does not match its public key");
  return priv;
}

/** "SHA256:<base64 without padding>", as `ssh-keygen -l` prints it. */
export function sshFingerprint(pub: KeyObject): string {
  return `SHA256:${createHash("sha256").update(sshPublicKeyBlob(pub)).digest("base64").replace(/=+$/, "")}`;
}
