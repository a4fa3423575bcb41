/**
 * Dashboard sign-in (SPEC §18): one-time sign-in links and the sessions they open. Both live in
 * the backend, so every auth service sharing it knows them, keyed by the SHA-256 of their secret:
 * a database reader learns nothing that signs in or rides a session. A link is consumed by a
 * delete-if-unchanged, so of two uses (on any number of services) exactly one opens a session.
 * `mezctl admin revoke-certs` (a leaked admin.identity) also ends every link and session made
 * before it: they were opened with an admin certificate.
 */
import { timingSafeEqual } from "node:crypto";
import { newSecret, secretDigest } from "../lib/dashboard-secret.js";
import { MeziteError } from "../lib/errors.js";
import type { AdminCaller, AuthContext } from "../auth/context.js";
import { revokedBefore } from "../auth/admin-cert.js";
import { decode, encode, keys } from "../auth/records.js";

/** How long a sign-in link works. */
export const SIGN_IN_TTL_MS = 5 * 60_000;
/** How long a session lasts from sign-in; it is not extended by use. */
export const SESSION_TTL_MS = 12 * 3_600_000;

interface SignInRecord {
  /** Who asked for the link: the admin certificate's name and serial. */
  admin: string;
  created: number;
  expires: number;
}

export interface Session {
  /** Public: the first hex digits of the secret's hash, naming the session in audit events. */
  id: string;
  admin: string;
  created: number;
  expires: number;
  /** The form token every state-changing request must carry (CSRF). */
  csrf: string;
}

/** What the service stores of a secret (lib/dashboard-secret.ts): its SHA-256, hex. */
const secretHash = (secret: string): string | undefined => secretDigest(secret)?.toString("hex");

/** The admin API's half: stores a link's hash (mezctl made the secret) for SIGN_IN_TTL_MS. */
export async function createSignIn(ctx: AuthContext, by: AdminCaller, hash: Uint8Array): Promise<number> {
  if (hash.length !== 32) throw new MeziteError("ERR_USAGE", "invalid request: the sign-in link's hash must be 32 bytes");
  const now = ctx.now();
  const hex = Buffer.from(hash).toString("hex");
  const record: SignInRecord = { admin: by.audit.actor, created: now, expires: now + SIGN_IN_TTL_MS };
  await ctx.backend.create(keys.webSignIn(hex), encode(record), { expires: record.expires });
  await ctx.audit.emit({ type: "dashboard.sign_in_link", ...by.audit, detail: `link ${hex.slice(0, 8)} valid 5m` });
  return record.expires;
}

/**
 * Opens a session with a link's secret, consuming the link; undefined when the link is unknown,
 * used or expired (one answer for all three: the caller learns nothing more).
 */
export async function signIn(ctx: AuthContext, secret: string, remoteAddr: string): Promise<{ cookie: string; session: Session } | undefined> {
  const hash = secretHash(secret);
  if (!hash) return undefined;
  const item = await ctx.backend.get(keys.webSignIn(hash));
  if (!item || !(await ctx.backend.deleteIf(item.key, item.revision))) return undefined;
  const link = decode<SignInRecord>(item);
  const now = ctx.now();
  if (link.expires <= now || link.created < (await revokedBefore(ctx))) return undefined;
  const cookie = newSecret();
  const cookieHash = secretHash(cookie)!;
  const session: Session = { id: cookieHash.slice(0, 12), admin: link.admin, created: now, expires: now + SESSION_TTL_MS, csrf: newSecret() };
  await ctx.backend.create(keys.webSession(cookieHash), encode(session), { expires: session.expires });
  await ctx.audit.emit({ type: "dashboard.sign_in", actor: actorOf(session), remote_addr: remoteAddr, detail: `link ${hash.slice(0, 8)}` });
  return { cookie, session };
}

/** The session a cookie's secret names, if it is live. */
export async function sessionOf(ctx: AuthContext, cookie: string | undefined): Promise<Session | undefined> {
  const hash = cookie === undefined ? undefined : secretHash(cookie);
  if (!hash) return undefined;
  const [item, before] = await Promise.all([ctx.backend.get(keys.webSession(hash)), revokedBefore(ctx)]);
  if (!item) return undefined;
  const s = decode<Session>(item);
  return s.expires > ctx.now() && s.created >= before ? s : undefined;
}

export async function signOut(ctx: AuthContext, cookie: string, session: Session, remoteAddr: string): Promise<void> {
  const hash = secretHash(cookie);
  if (hash) await ctx.backend.delete(keys.webSession(hash));
  await ctx.audit.emit({ type: "dashboard.sign_out", actor: actorOf(session), remote_addr: remoteAddr });
}

/** Whether a form's token is the session's, compared in constant time. */
export function csrfMatches(session: Session, token: string | undefined): boolean {
  if (token === undefined) return false;
  const a = Buffer.from(session.csrf);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The actor audit events of a session's actions carry. */
export function actorOf(s: Session): string {
  return `dashboard:${s.id} (via ${s.admin})`;
}

/** An admin call's caller for a session's action: the admin operations take it as they take mezctl's. */
export function sessionCaller(s: Session, remoteAddr: string): AdminCaller {
  return { remoteAddr, cert: undefined, audit: { actor: actorOf(s), remote_addr: remoteAddr } };
}
