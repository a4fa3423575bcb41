/**
 * What nodes are told to revoke (SPEC §7): the KRL names exactly the unexpired certificates of
 * locked or deleted identities, instances, roles and logins, read back by ssh-keygen -Q -l. Runs
 * the service's own admin and revocation code on an in-memory backend with a frozen clock.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import { create } from "@bufbuild/protobuf";
import { TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { roleToProto } from "../../src/api/roles.js";
import { addAgentIdentity, deleteAgentIdentity, removeInstance } from "../../src/auth/admin/identities.js";
import { addLock, removeLocks } from "../../src/auth/admin/locks.js";
import { createRole } from "../../src/auth/admin/roles.js";
import type { AdminCaller, AuthContext } from "../../src/auth/context.js";
import { encode, keys, type IdentityRecord, type InstanceRecord, type IssuedCertRecord } from "../../src/auth/records.js";
import { joinAgent } from "../../src/auth/join.js";
import { renewAgent } from "../../src/auth/renew.js";
import { KRL_GRACE_MS, Revocations } from "../../src/auth/revocations.js";
import type { Backend, WriteOp } from "../../src/backend/backend.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { parseCertificatePem } from "../../src/ca/x509.js";
import { buildJoinRequest, buildRenewRequest, generateIssueKeys } from "../../src/identity/protocol.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { SEED_ROLE } from "../harness/auth.js";
import { unitAuthContext } from "../harness/auth-context.js";
import { sshKeygen } from "../harness/require.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-revocations-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const HOUR = 3_600_000;
/** The admin these tests act as. */
const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };
let clock = Date.UTC(2026, 10, 28, 12);

async function context(wrap: (b: Backend) => Backend = (b) => b): Promise<AuthContext> {
  const now = () => clock;
  const backend = wrap(new MemoryBackend({ now, sweepIntervalMs: 0 }));
  return unitAuthContext({ backend, dataDir: mkdtempSync(join(dir, "data-")), clusterName: "test.mezite", now });
}

/** The service's revocation state, its cache aged by the test's clock (as if it were monotonic). */
const revocations = (ctx: AuthContext) => new Revocations(ctx, { monotonic: () => clock });

let serial = 100;

/** An identity with `instances` instances, each holding a live and an expired certificate (past the KRL's grace). */
async function fleetMember(ctx: AuthContext, name: string, roles: string[], principals: string[], instances = 1) {
  const identity: IdentityRecord = { id: `id-${name}`, name, roles, created: clock };
  await ctx.backend.put(keys.identity(name), encode(identity));
  const live: Record<string, string> = {};
  for (let i = 0; i < instances; i++) {
    const inst: InstanceRecord = { id: `${name}-inst-${i}`, identityId: identity.id, identityName: name, generation: "2", created: clock, lastSeen: clock, address: "", certExpires: clock + HOUR, serial: "" };
    await ctx.backend.put(keys.instance(identity.id, inst.id), encode(inst));
    for (const expires of [clock + HOUR, clock - KRL_GRACE_MS - 1]) {
      const cert: IssuedCertRecord = { serial: String(serial++), identityId: identity.id, identityName: name, instanceId: inst.id, roles, principals, expires };
      await ctx.backend.put(keys.cert(inst.id, cert.serial), encode(cert));
      if (expires > clock) live[inst.id] = cert.serial;
    }
  }
  return live;
}

/** The serials of the KRL the nodes would get now, as ssh-keygen reads them. */
async function revoked(t: TestContext, r: Revocations): Promise<string[] | undefined> {
  clock += 1_001; // past the one-second cache
  const path = join(dir, "revoked.krl");
  writeFileSync(path, (await r.get()).krl);
  const out = sshKeygen(t, ["-Q", "-l", "-f", path]);
  if (!out) return undefined;
  assert.equal(out.code, 0, out.out);
  return [...out.out.matchAll(/^serial: (\d+)$/gm)].map((m) => m[1]!).sort();
}

test("the KRL follows locks and deletions, and nothing else", async (t) => {
  const ctx = await context();
  const r = revocations(ctx);
  const web = await fleetMember(ctx, "web", ["deployer"], ["deploy"], 2);
  const db = await fleetMember(ctx, "db", ["dba"], ["postgres"]);
  const ci = await fleetMember(ctx, "ci", ["deployer", "dba"], ["deploy", "postgres"]);
  if ((await revoked(t, r)) === undefined) return;
  assert.deepEqual(await revoked(t, r), [], "nothing is locked or deleted");

  await addLock(ctx, BY, "agent_identity", "db", "", 0);
  assert.deepEqual(await revoked(t, r), [db["db-inst-0"]]);
  assert.deepEqual((await r.get()).lockedIdentityIds, ["id-db"]);
  await removeLocks(ctx, BY, "agent_identity:db");
  await addLock(ctx, BY, "instance", "web-inst-1", "", 0);
  assert.deepEqual(await revoked(t, r), [web["web-inst-1"]]);
  await removeLocks(ctx, BY, "instance:web-inst-1");
  assert.deepEqual(await revoked(t, r), []);

  // Role and login locks catch every identity holding the role or login, and end with the lock.
  await addLock(ctx, BY, "role", "dba", "", 0);
  assert.deepEqual(await revoked(t, r), [ci["ci-inst-0"], db["db-inst-0"]].sort());
  clock += 10_000; // past the grace period: the one rescan finds the same
  assert.deepEqual(await revoked(t, r), [ci["ci-inst-0"], db["db-inst-0"]].sort());
  await removeLocks(ctx, BY, "role:dba");
  await addLock(ctx, BY, "login", "deploy", "", 30_000);
  assert.deepEqual(await revoked(t, r), [ci["ci-inst-0"], web["web-inst-0"], web["web-inst-1"]].sort());
  clock += 30_000; // the lock expires
  assert.deepEqual(await revoked(t, r), []);

  // Deletions stay revoked until the certificates expire, with nothing left to lock.
  await removeInstance(ctx, BY, "web", "web-inst-0");
  await deleteAgentIdentity(ctx, BY, "db");
  assert.deepEqual(await revoked(t, r), [db["db-inst-0"], web["web-inst-0"]].sort());
  assert.deepEqual((await r.get()).lockedIdentityIds, []);
  clock += HOUR + KRL_GRACE_MS;
  assert.deepEqual(await revoked(t, r), [], "expired certificates leave the KRL");
});

/**
 * A join whose backend runs an rm of its identity to completion at a chosen moment: just before
 * the join's commit, or just after it (so that rm may have listed the identity's instances before
 * this one existed, and the join's own check after its commit is what must catch it).
 */
async function racingJoin(t: TestContext, when: "before" | "after") {
  let rmNow: (() => Promise<void>) | undefined;
  const ctx = await context(
    (b) =>
      new Proxy(b, {
        get: (target, prop) => {
          if (prop !== "write") return (Reflect.get(target, prop) as Function).bind(target);
          return async (ops: WriteOp[]) => {
            const joining = ops.some((o) => o.key.startsWith("/instances/"));
            if (joining && when === "before") await rmNow?.();
            const written = await target.write(ops);
            if (joining && when === "after") await rmNow?.();
            return written;
          };
        },
      }),
  );
  await createRole(ctx, BY, roleToProto(parseRoleYaml(SEED_ROLE)), false);
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  await addAgentIdentity(ctx, BY, "racer", ["ci-deployer"], create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey }));
  rmNow = async () => {
    rmNow = undefined;
    await deleteAgentIdentity(ctx, BY, "racer");
  };
  const { request } = buildJoinRequest(Buffer.from(token, "hex"), generateIssueKeys(), HOUR);
  await assert.rejects(joinAgent(ctx, request, { remoteAddr: "127.0.0.1", cert: undefined }), (e) => isMeziteError(e, "ERR_TOKEN_UNKNOWN"));
  assert.deepEqual(await ctx.backend.range("/instances/"), [], "no instance is left behind");
  const issued = (await ctx.backend.range(keys.certs)).map((i) => (JSON.parse(i.value) as IssuedCertRecord).serial);
  return { issued, krl: await revoked(t, revocations(ctx)) };
}

test("an rm just before a join commits: the join is refused and writes nothing", async (t) => {
  const { issued, krl } = await racingJoin(t, "before");
  assert.deepEqual(issued, []);
  if (krl) assert.deepEqual(krl, []);
});

test("an rm just after a join commits: the join is refused and the certificate it made is revoked", async (t) => {
  const { issued, krl } = await racingJoin(t, "after");
  assert.equal(issued.length, 1, "the join made one certificate before it found out");
  if (krl) assert.deepEqual(krl, issued);
});

/**
 * A renewal that runs, start to commit, at a chosen moment of an rm, rm-instance or lock (the
 * hook), against a backend that calls the hook when that moment comes. Returns the KRL's serials
 * and the certificate the renewal made.
 */
async function racingRenewal(t: TestContext, race: "rm-instance" | "rm" | "role-lock") {
  let hook: ((ops: WriteOp[] | string) => Promise<void>) | undefined;
  const ctx = await context(
    (b) =>
      new Proxy(b, {
        get: (target, prop) => {
          if (prop === "write") return async (ops: WriteOp[]) => (await hook?.(ops), target.write(ops));
          if (prop === "delete") return async (key: string) => (await hook?.(key), target.delete(key));
          return (Reflect.get(target, prop) as Function).bind(target);
        },
      }),
  );
  await createRole(ctx, BY, roleToProto(parseRoleYaml(SEED_ROLE)), false);
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  await addAgentIdentity(ctx, BY, "racer", ["ci-deployer"], create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey }));
  const { request } = buildJoinRequest(Buffer.from(token, "hex"), generateIssueKeys(), HOUR);
  const joined = (await joinAgent(ctx, request, { remoteAddr: "127.0.0.1", cert: undefined })).certificates!;
  const caller = { remoteAddr: "127.0.0.1", cert: parseCertificatePem(joined.renewalCertificatePem) };
  const renewal = () => renewAgent(ctx, buildRenewRequest(randomBytes(16), generateIssueKeys(), HOUR), caller);
  const r = revocations(ctx);
  clock += HOUR / 2; // the renewal's certificate outlives the join's by half an hour

  let renewed: Promise<unknown> | undefined;
  const once = (f: () => Promise<unknown>) => (renewed ??= f());
  if (race === "role-lock") {
    // The renewal has read the locks; before it commits, the lock is made and every node has
    // polled (twice, the second time past any grace period a scan might allow).
    hook = async (ops) => {
      if (typeof ops === "string" || !ops.some((o) => o.key.startsWith("/replies/"))) return;
      hook = undefined;
      await addLock(ctx, BY, "role", "ci-deployer", "", 0);
      await revoked(t, r);
      clock += 6_000;
      await revoked(t, r);
    };
    renewed = renewal();
  } else {
    // Between the rm's first look at the instance's certificates and its first deletion (of the
    // identity for rm, of the instance for rm-instance).
    hook = async (key) => {
      if (typeof key !== "string" || !key.startsWith(race === "rm" ? "/identities/" : "/instances/")) return;
      hook = undefined;
      await once(renewal);
    };
    if (race === "rm") await deleteAgentIdentity(ctx, BY, "racer");
    else await removeInstance(ctx, BY, "racer", joined.instanceId);
  }
  const result = await renewed!.then(() => "ok", (e: unknown) => (isMeziteError(e) ? e.code : String(e)));
  const serials = (await ctx.backend.range(keys.certs)).map((i) => (JSON.parse(i.value) as IssuedCertRecord).serial);
  const made = serials.find((x) => x !== joined.serial.toString());
  clock += HOUR / 2 + KRL_GRACE_MS + 1_000; // the join's certificate has expired (and its grace with it); the renewal's has not
  return { result, made, krl: await revoked(t, r) };
}

for (const race of ["rm-instance", "rm"] as const) {
  test(`a renewal that commits during an ${race}: its certificate is in the KRL until it expires`, async (t) => {
    const { result, made, krl } = await racingRenewal(t, race);
    assert.equal(result, "ok", "the renewal committed before the instance was gone");
    assert.ok(made, "the renewal made a certificate");
    if (krl) assert.deepEqual(krl, [made]);
  });
}

test("a renewal that commits after a role lock was made and scanned: refused, and its certificate revoked", async (t) => {
  const { result, made, krl } = await racingRenewal(t, "role-lock");
  assert.equal(result, "ERR_LOCKED");
  assert.ok(made);
  if (krl) assert.deepEqual(krl, [made]);
});
