/**
 * Dashboard sign-in (src/web/sessions.ts) with a frozen clock: a link works once and for 5
 * minutes, a session for 12 hours, and the backend holds only hashes of either secret.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { MemoryBackend } from "../../src/backend/memory.js";
import { revokeAdminCertificates } from "../../src/auth/admin-cert.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { newSecret, secretDigest } from "../../src/lib/dashboard-secret.js";
import { SESSION_TTL_MS, SIGN_IN_TTL_MS, actorOf, createSignIn, csrfMatches, sessionOf, signIn, signOut } from "../../src/web/sessions.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-web-sessions-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let clock = Date.UTC(2026, 0, 1);
const now = () => clock;
const admin: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "admin (serial 7)", remote_addr: "127.0.0.1" } };
/** The hash of a secret written out (SHA-256 of its 32 bytes), to hold lib/dashboard-secret.ts (mezctl's side) to it. */
const hashOf = (secret: string) => createHash("sha256").update(Buffer.from(secret, "base64url")).digest();

async function setup() {
  const backend = new MemoryBackend({ now, sweepIntervalMs: 0 });
  const ctx = await unitAuthContext({ backend, dataDir: mkdtempSync(join(dir, "c")), clusterName: "web.test", now });
  return { backend, ctx };
}

/** Every stored value, to look for a secret in any of them. */
async function everything(backend: MemoryBackend): Promise<string> {
  return (await backend.range("/")).map((i) => `${i.key}=${i.value}`).join("\n");
}

test("a sign-in link works once, within 5 minutes; the backend holds only its hash", async () => {
  const { backend, ctx } = await setup();
  const secret = newSecret();
  assert.deepEqual(secretDigest(secret), hashOf(secret), "mezctl sends the hash the service looks the link up by");
  assert.equal(secretDigest(`${secret}=`), undefined, "a string not shaped like a secret has no hash");
  const expires = await createSignIn(ctx, admin, hashOf(secret));
  assert.equal(expires, clock + SIGN_IN_TTL_MS);
  assert.ok(!(await everything(backend)).includes(secret), "the link's secret is stored nowhere");

  const opened = await signIn(ctx, secret, "10.0.0.1");
  assert.ok(opened, "the link opens a session");
  assert.equal(await signIn(ctx, secret, "10.0.0.1"), undefined, "and never a second one");
  assert.ok(!(await everything(backend)).includes(opened.cookie), "the session's secret is stored nowhere");
  assert.equal((await sessionOf(ctx, opened.cookie))?.id, opened.session.id);

  const late = newSecret();
  await createSignIn(ctx, admin, hashOf(late));
  clock += SIGN_IN_TTL_MS;
  assert.equal(await signIn(ctx, late, "10.0.0.1"), undefined, "a link 5 minutes old is refused");
});

test("of many concurrent uses of one link, exactly one opens a session", async () => {
  const { ctx } = await setup();
  const secret = newSecret();
  await createSignIn(ctx, admin, hashOf(secret));
  const results = await Promise.all(Array.from({ length: 8 }, () => signIn(ctx, secret, "10.0.0.1")));
  assert.equal(results.filter((r) => r !== undefined).length, 1);
});

test("a session lasts 12 hours, ends at sign-out, and names itself in audit events", async () => {
  const { ctx } = await setup();
  const secret = newSecret();
  await createSignIn(ctx, admin, hashOf(secret));
  const { cookie, session } = (await signIn(ctx, secret, "10.0.0.1"))!;
  assert.match(actorOf(session), /^dashboard:[0-9a-f]{12} \(via admin \(serial 7\)\)$/);
  assert.ok(csrfMatches(session, session.csrf));
  assert.ok(!csrfMatches(session, undefined) && !csrfMatches(session, "") && !csrfMatches(session, newSecret()));
  assert.equal(await sessionOf(ctx, "not a secret"), undefined);

  clock += SESSION_TTL_MS - 1000;
  assert.ok(await sessionOf(ctx, cookie), "live until 12 h");
  clock += 1000;
  assert.equal(await sessionOf(ctx, cookie), undefined, "gone at 12 h");

  const again = newSecret();
  await createSignIn(ctx, admin, hashOf(again));
  const second = (await signIn(ctx, again, "10.0.0.1"))!;
  await signOut(ctx, second.cookie, second.session, "10.0.0.1");
  assert.equal(await sessionOf(ctx, second.cookie), undefined, "sign-out ends the session on the server");
});

test("mezctl admin revoke-certs ends the sessions and links made before it", async () => {
  const { ctx } = await setup();
  const [a, b] = [newSecret(), newSecret()];
  await createSignIn(ctx, admin, hashOf(a));
  await createSignIn(ctx, admin, hashOf(b));
  const { cookie } = (await signIn(ctx, a, "10.0.0.1"))!;
  clock += 1;
  await revokeAdminCertificates(ctx, admin);
  assert.equal(await sessionOf(ctx, cookie), undefined, "the session is over");
  assert.equal(await signIn(ctx, b, "10.0.0.1"), undefined, "the link is dead");
  clock += 1000;
  const c = newSecret();
  await createSignIn(ctx, admin, hashOf(c));
  const fresh = await signIn(ctx, c, "10.0.0.1");
  assert.ok(fresh && (await sessionOf(ctx, fresh.cookie)), "a link made afterwards works");
});

test("a sign-in link's hash must be 32 bytes", async () => {
  const { ctx } = await setup();
  await assert.rejects(createSignIn(ctx, admin, new Uint8Array(16)), /32 bytes/);
});
