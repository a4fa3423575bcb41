/**
 * The dashboard's secrets (a sign-in link's, a session cookie's, a form token): 32 random bytes,
 * base64url, as they travel in a link or cookie. The service stores only their SHA-256, which
 * mezctl sends for a link it makes (so the service never holds a usable link). Shared by mezctl
 * and the web service, so it imports nothing but node:crypto.
 */
import { createHash, randomBytes } from "node:crypto";

export function newSecret(): string {
  return randomBytes(32).toString("base64url");
}

/** The SHA-256 of a secret's 32 decoded bytes; undefined for a string that is not a secret. */
export function secretDigest(secret: string): Buffer | undefined {
  if (!/^[A-Za-z0-9_-]{43}$/.test(secret)) return undefined;
  return createHash("sha256").update(Buffer.from(secret, "base64url")).digest();
}
