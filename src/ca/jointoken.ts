/**
 * Join-token cryptography (SPEC §4). A token is 32 random bytes that never travel and are never
 * stored: both sides derive from it, with HKDF-SHA256 and one label each, a public lookup id, an
 * Ed25519 key pair (the daemon proves it holds the token) and a MAC key (the server proves it
 * knew the token's registration). What gets signed or MAC'd is a transcript: an unambiguous
 * encoding of typed fields under a domain label, never serialized protobuf bytes.
 */
import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  randomBytes,
  sign,
  timingSafeEqual,
  verify,
  type KeyObject,
} from "node:crypto";
import { MeziteError } from "../lib/errors.js";

const TOKEN_BYTES = 32;

export const TOKEN_LABELS = {
  tokenId: "mezite/v1 token-id",
  signingKey: "mezite/v1 token-signing-key",
  macKey: "mezite/v1 token-mac-key",
} as const;

/** 32 random bytes as 64 lowercase hex characters. */
export function generateToken(): string {
  return randomBytes(TOKEN_BYTES).toString("hex");
}

/** Accepts exactly 64 hex characters (surrounding whitespace, e.g. a file's newline, is ignored). */
export function parseToken(s: string): Buffer {
  const t = typeof s === "string" ? s.trim() : "";
  // The message never echoes the input: a mistyped token is still mostly a secret.
  if (!/^[0-9a-fA-F]{64}$/.test(t)) {
    throw new MeziteError("ERR_TOKEN_INVALID", "a join token is exactly 64 hexadecimal characters");
  }
  return Buffer.from(t, "hex");
}

export interface TokenSecrets {
  /** 16 bytes as 32 lowercase hex characters: the public lookup key. */
  tokenId: string;
  signingKey: KeyObject;
  verifyKey: KeyObject;
  macKey: Buffer;
}

// PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410) up to the 32-byte seed:
// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

function hkdf(token: Buffer, info: string, length: number): Buffer {
  // No salt: the token is already uniformly random, which is what HKDF's salt would provide.
  return Buffer.from(hkdfSync("sha256", token, Buffer.alloc(0), info, length));
}

export function deriveTokenSecrets(token: Buffer): TokenSecrets {
  if (!Buffer.isBuffer(token) || token.length !== TOKEN_BYTES) {
    throw new MeziteError("ERR_TOKEN_INVALID", "a join token is exactly 32 bytes");
  }
  const seed = hkdf(token, TOKEN_LABELS.signingKey, 32);
  const signingKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: "der", type: "pkcs8" });
  return {
    tokenId: hkdf(token, TOKEN_LABELS.tokenId, 16).toString("hex"),
    signingKey,
    verifyKey: createPublicKey(signingKey),
    macKey: hkdf(token, TOKEN_LABELS.macKey, 32),
  };
}

/**
 * "MEZITE-TRANSCRIPT-V1", then the label and each field as: a one-byte type ('s' UTF-8 string,
 * 'b' bytes, 'i' integer as its decimal digits, 'l' a list of strings), a 4-byte big-endian
 * length (for a list: its item count, each item following as an 's' field), the bytes. Because
 * every field and every list item carries its type and length, no two different field lists
 * encode alike (["a,b"] and ["a", "b"] differ); numbers and bigints of equal value encode alike
 * on purpose, so either side may hold a uint64 either way.
 */
export function transcript(label: string, fields: TranscriptField[]): Buffer {
  const parts: Buffer[] = [Buffer.from("MEZITE-TRANSCRIPT-V1", "latin1"), field("s", Buffer.from(label, "utf8"))];
  fields.forEach((f, i) => {
    if (typeof f === "string") parts.push(field("s", Buffer.from(f, "utf8")));
    else if (f instanceof Uint8Array) parts.push(field("b", f));
    else if (typeof f === "bigint" || Number.isSafeInteger(f)) parts.push(field("i", Buffer.from(f.toString(10), "latin1")));
    else if (Array.isArray(f) && f.every((x) => typeof x === "string")) {
      parts.push(head("l", f.length));
      for (const item of f) parts.push(field("s", Buffer.from(item, "utf8")));
    } else throw new MeziteError("ERR_INTERNAL", `transcript field ${i} is not a string, bytes, an integer or a list of strings`);
  });
  return Buffer.concat(parts);
}

export type TranscriptField = string | Uint8Array | bigint | number | readonly string[];

function head(type: "s" | "b" | "i" | "l", length: number): Buffer {
  const h = Buffer.alloc(5);
  h.write(type, 0, "latin1");
  h.writeUInt32BE(length, 1);
  return h;
}

function field(type: "s" | "b" | "i", bytes: Uint8Array): Buffer {
  return Buffer.concat([head(type, bytes.length), bytes]);
}

export function signProof(key: KeyObject, data: Buffer): Buffer {
  if (key?.type !== "private" || key.asymmetricKeyType !== "ed25519") {
    throw new MeziteError("ERR_INTERNAL", "a join proof is signed with an Ed25519 private key");
  }
  return sign(null, data, key);
}

/** False for any bad signature, including one of the wrong length or from the wrong key type. */
export function verifyProof(pub: KeyObject, data: Buffer, sig: Uint8Array): boolean {
  if (pub?.type !== "public" || pub.asymmetricKeyType !== "ed25519" || !(sig instanceof Uint8Array) || sig.length !== 64) {
    return false;
  }
  try {
    return verify(null, data, pub, sig);
  } catch {
    return false;
  }
}

/** HMAC-SHA256. */
export function mac(macKey: Buffer, data: Buffer): Buffer {
  return createHmac("sha256", macKey).update(data).digest();
}

/** Constant-time comparison; false for a tag of the wrong length. */
export function verifyMac(macKey: Buffer, data: Buffer, tag: Uint8Array): boolean {
  const expected = mac(macKey, data);
  return tag instanceof Uint8Array && tag.length === expected.length && timingSafeEqual(expected, tag);
}
