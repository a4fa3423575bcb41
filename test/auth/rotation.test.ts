/**
 * CA rotation's phases (SPEC §15) on the operations alone: which key signs and which are trusted
 * in each phase, the steps allowed from each, automatic steps by the clock, one winner when two
 * services step at once, and what a node's KRL lists during a rotation.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { CaWatcher, MANUAL_SPREAD_MIN_MS, advanceDue, caStatus, manualSpreadMs, recordInstanceCaState, recordNodeCaState, renewSpreadMs, rotate } from "../../src/auth/rotation.js";
import { CA_KINDS, NODE_CA_KINDS, caState, caStatesOf, type CaKind, type Phase } from "../../src/auth/cas.js";
import type { AuthContext } from "../../src/auth/context.js";
import { encode, keys, load, type InstanceRecord, type NodeRecord } from "../../src/auth/records.js";
import { Revocations } from "../../src/auth/revocations.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-rotation-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let clock = Date.UTC(2026, 11, 1, 12);
const now = () => clock;

async function context(backend = new MemoryBackend({ now, sweepIntervalMs: 0 }), dataDir = mkdtempSync(join(dir, "data-"))): Promise<AuthContext> {
  return unitAuthContext({ backend, dataDir, clusterName: "test.mezite", now });
}

const step = (ctx: AuthContext, kind: CaKind, phase: Phase) => rotate(ctx, { kinds: [kind], phase, graceMs: 0, actor: "test", remoteAddr: "" });

test("each phase signs with the key the table says and trusts old and new until the end", async () => {
  const ctx = await context();
  const old = ctx.cas.user.current.sshFingerprint;
  await step(ctx, "user", "init");
  const neu = ctx.cas.user.next!.sshFingerprint;
  assert.notEqual(neu, old);
  const seen: Record<string, { signs: string; trusted: string[] }> = {};
  const look = (p: string) => (seen[p] = { signs: ctx.cas.user.sshFingerprint, trusted: ctx.cas.user.trusted.map((k) => k.sshFingerprint) });
  look("init");
  for (const p of ["update_clients", "update_servers", "standby"] as Phase[]) {
    await step(ctx, "user", p);
    look(p);
  }
  assert.deepEqual(seen, {
    init: { signs: old, trusted: [old, neu] },
    update_clients: { signs: neu, trusted: [neu, old] },
    update_servers: { signs: neu, trusted: [neu, old] },
    standby: { signs: neu, trusted: [neu] },
  });
  assert.equal(ctx.cas.user.phase, "standby");
  assert.equal(ctx.cas.user.lastRotated, clock);
  // The host CA never moved.
  assert.equal(ctx.cas.host.phase, "standby");
  // The X.509 key rotates with the SSH key; the new certificate has a subject of its own.
  assert.notEqual(ctx.cas.user.x509Cert.subject, (await context()).cas.user.x509Cert.subject);
});

test("the Host CA signs server credentials (host certificates, the service's TLS certificate) with the new key from update_servers alone", async () => {
  const ctx = await context();
  const old = ctx.cas.host.current.sshFingerprint;
  const serverKeys = [ctx.cas.host.server.sshFingerprint];
  await step(ctx, "host", "init");
  const neu = ctx.cas.host.next!.sshFingerprint;
  serverKeys.push(ctx.cas.host.server.sshFingerprint);
  for (const p of ["update_clients", "update_servers", "rollback", "standby"] as Phase[]) {
    await step(ctx, "host", p);
    serverKeys.push(ctx.cas.host.server.sshFingerprint);
  }
  assert.deepEqual(serverKeys, [old, old, old, neu, old, old], "standby, init, update_clients, update_servers, rollback, standby");
  for (const p of ["init", "update_clients", "update_servers", "standby"] as Phase[]) await step(ctx, "host", p);
  assert.equal(ctx.cas.host.server.sshFingerprint, ctx.cas.host.current.sshFingerprint);
  assert.notEqual(ctx.cas.host.server.sshFingerprint, old);
});

test("rollback from update_servers signs with the old key again and drops the new one at standby", async () => {
  const ctx = await context();
  const old = ctx.cas.host.sshFingerprint;
  for (const p of ["init", "update_clients", "update_servers"] as Phase[]) await step(ctx, "host", p);
  const neu = ctx.cas.host.sshFingerprint;
  await step(ctx, "host", "rollback");
  assert.equal(ctx.cas.host.sshFingerprint, old);
  assert.deepEqual(ctx.cas.host.trusted.map((k) => k.sshFingerprint), [old, neu]);
  await step(ctx, "host", "standby");
  assert.deepEqual(ctx.cas.host.trusted.map((k) => k.sshFingerprint), [old]);
  assert.equal(ctx.cas.host.lastRotated, undefined);
});

test("a step out of order is refused with what may come next, and changes nothing", async () => {
  const ctx = await context();
  const refused = async (p: Phase, re: RegExp) => {
    const before = ctx.cas.user.revision;
    await assert.rejects(step(ctx, "user", p), (e: unknown) => isMeziteError(e, "ERR_USAGE") && re.test(e.message));
    assert.equal((await ctx.caStore.load("user")).ca.revision, before);
  };
  await refused("update_clients", /phase standby: the next phase can only be init$/);
  await refused("rollback", /can only be init/);
  await step(ctx, "user", "init");
  await refused("update_servers", /phase init: the next phase can only be update_clients or rollback$/);
  await refused("init", /update_clients or rollback/);
  await step(ctx, "user", "rollback");
  await refused("update_clients", /phase rollback: the next phase can only be standby$/);
  // An automatic rotation cannot start over one in progress, nor with a grace period too short to see its phases.
  await assert.rejects(rotate(ctx, { kinds: ["user"], phase: undefined, graceMs: 3_600_000, actor: "t", remoteAddr: "" }), /already in progress \(phase rollback\)/);
  await assert.rejects(rotate(ctx, { kinds: ["host"], phase: undefined, graceMs: 10_000, actor: "t", remoteAddr: "" }), /--grace-period 10s is too short/);
  // --type=all checks both before it changes either.
  await assert.rejects(rotate(ctx, { kinds: ["user", "host"], phase: "standby", graceMs: 0, actor: "t", remoteAddr: "" }), /Host CA is in phase standby/);
  assert.equal((await ctx.caStore.load("user")).ca.phase, "rollback");
});

test("an automatic rotation takes a third of its grace period per phase, and a fresh service continues it", async () => {
  const backend = new MemoryBackend({ now, sweepIntervalMs: 0 });
  const dataDir = mkdtempSync(join(dir, "data-"));
  const a = await context(backend, dataDir);
  await rotate(a, { kinds: ["user", "host"], phase: undefined, graceMs: 3 * 3_600_000, actor: "t", remoteAddr: "" });
  assert.equal(a.cas.user.phase, "init");
  clock += 3_600_000 - 1;
  assert.equal(await advanceDue(a), false);
  clock += 1;
  assert.equal(await advanceDue(a), true);
  await a.refreshCas();
  assert.equal(a.cas.user.phase, "update_clients");
  // A service started now (a restart) picks the rotation up from the backend.
  const b = await context(backend, dataDir);
  assert.equal(b.cas.host.phase, "update_clients");
  const phases: string[] = [];
  for (let i = 0; i < 3; i++) {
    clock += 3_600_000;
    await advanceDue(b);
    await b.refreshCas();
    phases.push(b.cas.user.phase);
  }
  assert.deepEqual(phases, ["update_servers", "standby", "standby"]);
  const status = await caStatus(b);
  assert.deepEqual(status.map((s) => [s.type, s.phase, s.keys.length, s.nextPhaseAt]), [["user", "standby", 1, 0], ["host", "standby", 1, 0]]);
});

test("two services stepping at once: one compare-and-swap lands, the other is told to look again", async () => {
  const backend = new MemoryBackend({ now, sweepIntervalMs: 0 });
  const dataDir = mkdtempSync(join(dir, "data-"));
  const [a, b] = [await context(backend, dataDir), await context(backend, dataDir)];
  const results = await Promise.allSettled([step(a, "user", "init"), step(b, "user", "init")]);
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  assert.equal(failed.length, 1, "exactly one of two concurrent steps must fail");
  assert.match(String(failed[0]!.reason), /another auth service changed the User CA meanwhile|phase init: the next phase can only be/);
  await a.refreshCas();
  await b.refreshCas();
  assert.equal(a.cas.user.next!.sshFingerprint, b.cas.user.next!.sshFingerprint);
});

test("nodes get every trusted User CA key and a KRL section under each; their CA state moves with the Host CA alone", async () => {
  const ctx = await context();
  // One revoked serial, so the KRL has sections to show.
  await ctx.backend.put(keys.revokedCert("4242"), encode({ identityName: "ci" }), { expires: clock + 3_600_000 });
  const revocations = new Revocations(ctx);
  const before = await revocations.get();
  assert.equal(before.userCaSshKeys.length, 1);
  assert.equal(before.caState, caState(ctx.cas, NODE_CA_KINDS));
  await step(ctx, "user", "init");
  const during = await revocations.get(); // same instant: the cache must not hide the phase change
  assert.equal(during.userCaSshKeys.length, 2);
  assert.equal(during.caState, before.caState, "a User CA rotation asks nodes for no renewal");
  // Each certificate section names its CA key's blob (PROTOCOL.krl).
  const blob = (line: string) => Buffer.from(line.split(" ")[1]!, "base64");
  for (const k of ctx.cas.user.trusted) assert.ok(Buffer.from(during.krl).includes(blob(k.sshPublicLine)), "a KRL section under every trusted key");
  assert.ok(Buffer.from(before.krl).includes(blob(ctx.cas.user.current.sshPublicLine)));
  assert.ok(!Buffer.from(before.krl).includes(blob(ctx.cas.user.next!.sshPublicLine)));
  await step(ctx, "host", "init");
  assert.notEqual((await revocations.get()).caState, before.caState, "a Host CA phase change asks nodes to renew");
});

test("an automatic rotation rolled back finishes rolling back by itself, on the old key", async () => {
  const ctx = await context();
  const old = ctx.cas.user.sshFingerprint;
  await rotate(ctx, { kinds: ["user"], phase: undefined, graceMs: 3 * 60_000, actor: "t", remoteAddr: "" });
  clock += 60_000;
  await advanceDue(ctx);
  await ctx.refreshCas();
  assert.equal(ctx.cas.user.phase, "update_clients");
  await step(ctx, "user", "rollback");
  assert.equal(ctx.cas.user.rotation!.mode, "auto");
  clock += 60_000;
  await advanceDue(ctx);
  await ctx.refreshCas();
  assert.deepEqual([ctx.cas.user.phase, ctx.cas.user.trusted.map((k) => k.sshFingerprint)], ["standby", [old]]);
});

test("renewals after a phase change spread over a quarter of an automatic phase (at most 30 min); a manual step's over seconds by fleet size", async () => {
  const ctx = await context();
  assert.equal(renewSpreadMs(ctx.cas, CA_KINDS), 0);
  await rotate(ctx, { kinds: ["host"], phase: undefined, graceMs: 3 * 3_600_000, actor: "t", remoteAddr: "" });
  assert.equal(renewSpreadMs(ctx.cas, ["host"]), 15 * 60_000);
  await step(ctx, "user", "init"); // manual, and more hurried: it counts for daemons
  assert.deepEqual([renewSpreadMs(ctx.cas, CA_KINDS), renewSpreadMs(ctx.cas, NODE_CA_KINDS)], [MANUAL_SPREAD_MIN_MS, 15 * 60_000]);
  assert.deepEqual([manualSpreadMs(10), manualSpreadMs(10_000), manualSpreadMs(1_000_000)], [MANUAL_SPREAD_MIN_MS, 100_000, 30 * 60_000], "10 ms an agent, 5 s to 30 min");
  await step(ctx, "user", "rollback");
  await step(ctx, "user", "standby");
  // The host rotation goes on by itself; its last step's renewals spread as the others did.
  for (let i = 0; i < 3; i++) {
    clock += 3_600_000;
    await advanceDue(ctx);
    await ctx.refreshCas();
  }
  assert.equal(ctx.cas.host.phase, "standby");
  assert.equal(renewSpreadMs(ctx.cas, CA_KINDS), 15 * 60_000);
  const long = await context();
  await rotate(long, { kinds: ["user"], phase: undefined, graceMs: 48 * 3_600_000, actor: "t", remoteAddr: "" });
  assert.equal(renewSpreadMs(long.cas, CA_KINDS), 30 * 60_000);
  await step(long, "user", "update_clients"); // a manual step takes over: its seconds from now on
  assert.equal(renewSpreadMs(long.cas, CA_KINDS), MANUAL_SPREAD_MIN_MS);
});

test("a service whose application of a phase change failed retries it until it succeeds", async () => {
  const backend = new MemoryBackend({ now, sweepIntervalMs: 0 });
  const dataDir = mkdtempSync(join(dir, "data-"));
  const [a, b] = [await context(backend, dataDir), await context(backend, dataDir)];
  const applied: string[] = [];
  let failures = 1;
  const watcher = new CaWatcher(b, async (cas) => {
    if (failures-- > 0) throw new Error("disk full");
    applied.push(cas.user.phase);
  }, b.log);
  await step(a, "user", "init"); // another service steps; b notices on its next tick
  await watcher.refresh(true);
  assert.deepEqual([b.cas.user.phase, applied], ["init", []], "the first application failed");
  await watcher.refresh(true);
  assert.deepEqual(applied, ["init"], "the next tick applies it again, though nothing changed since");
  await watcher.refresh(true);
  assert.deepEqual(applied, ["init"], "and only once it succeeded");
});

/** A live instance as a join records it, holding the CA state `cas` gave it. */
async function liveInstance(ctx: AuthContext, name: string, states: InstanceRecord["caStates"]): Promise<InstanceRecord> {
  const inst: InstanceRecord = {
    id: `${name}-0000-instance`, identityId: `${name}-id`, identityName: name, generation: "1", created: clock, lastSeen: clock,
    address: "", certExpires: clock + 24 * 3_600_000, serial: "1", ...(states ? { caStates: states } : {}),
  };
  await ctx.backend.put(keys.instance(inst.identityId, inst.id), encode(inst));
  return inst;
}

test("an automatic step waits up to one more phase for a live instance behind, then goes on and audits who was left behind", async () => {
  const ctx = await context();
  const inst = await liveInstance(ctx, "ci", caStatesOf(ctx.cas));
  await rotate(ctx, { kinds: ["user"], phase: undefined, graceMs: 3 * 60_000, actor: "t", remoteAddr: "" });
  clock += 60_000;
  assert.equal(await advanceDue(ctx), true, "to update_clients: only nodes must be in step");
  await ctx.refreshCas();
  assert.equal(ctx.cas.user.phase, "update_clients");
  const [user] = await caStatus(ctx);
  assert.deepEqual([user!.behind.count, user!.behind.names], [1, ["ci/ci-0000-"]], "ca status names the instance that has not renewed");
  clock += 60_000;
  assert.equal(await advanceDue(ctx), false, "update_servers waits: the instance is behind");
  clock += 59_000;
  assert.equal(await advanceDue(ctx), false, "still within one more phase");
  // It renews: in step, and the rotation goes on at once (the next look, a few seconds on).
  await ctx.backend.put(keys.instance(inst.identityId, inst.id), encode({ ...inst, caStates: caStatesOf(ctx.cas) }));
  clock += 5_000;
  assert.equal(await advanceDue(ctx), true);
  await ctx.refreshCas();
  assert.equal(ctx.cas.user.phase, "update_servers");
  // Behind again (it never renews into update_servers): standby comes one more phase late, audited.
  clock += 60_000;
  assert.equal(await advanceDue(ctx), false);
  clock += 60_000;
  assert.equal(await advanceDue(ctx), true);
  await ctx.refreshCas();
  assert.equal(ctx.cas.user.phase, "standby");
  const events = [];
  for await (const page of ctx.audit.list(0, "ca.rotation", 0)) events.push(...page);
  // Events of one frozen instant list in no particular order: find the step's.
  assert.match(events.find((e) => e.detail?.startsWith("User CA: update_servers -> standby"))?.detail ?? "", /User CA: update_servers -> standby \(auto\).*; left behind after waiting one more phase: 1 live instance or node \(ci\/ci-0000-\)$/);
});

test("a manual step past a live instance behind is refused with one line unless forced; a daemon's report of its CA state clears it", async () => {
  const ctx = await context();
  const inst = await liveInstance(ctx, "old", undefined); // issued before the service recorded CA states
  await step(ctx, "user", "init");
  await step(ctx, "user", "update_clients");
  await assert.rejects(step(ctx, "user", "update_servers"), (e: unknown) =>
    isMeziteError(e, "ERR_IN_USE") && e.message === "the User CA cannot move to update_servers yet: 1 live instance or node (old/old-0000) is not yet in step with update_clients (see mezctl ca status); wait for it, or pass --force");
  // A report of a state that is not the current one changes nothing; the current one clears it.
  await recordInstanceCaState(ctx, inst.identityId, inst.id, "stale");
  await assert.rejects(step(ctx, "user", "update_servers"), /cannot move to update_servers yet/);
  await recordInstanceCaState(ctx, inst.identityId, inst.id, caState(ctx.cas));
  assert.deepEqual((await load<InstanceRecord>(ctx.backend, keys.instance(inst.identityId, inst.id)))!.value.caStates, caStatesOf(ctx.cas));
  await step(ctx, "user", "update_servers");
  // Behind again; forced, the step is taken and the audit says so.
  await rotate(ctx, { kinds: ["user"], phase: "standby", graceMs: 0, actor: "t", remoteAddr: "", force: true });
  const events = [];
  for await (const page of ctx.audit.list(0, "ca.rotation", 0)) events.push(...page);
  assert.match(events.find((e) => e.detail?.startsWith("User CA: update_servers -> standby"))?.detail ?? "", /; forced while 1 live instance or node \(old\/old-0000\) was behind$/);
});

test("a daemon's report of its CA state keeps its ID-token instance's expiry", async () => {
  const ctx = await context();
  // As join.ts stores an ID-token instance (one per CI run): it leaves the store with its certificates.
  const inst: InstanceRecord = { ...(await liveInstance(ctx, "run", undefined)), joinMethod: "github" };
  const key = keys.instance(inst.identityId, inst.id);
  await ctx.backend.put(key, encode(inst), { expires: inst.certExpires });
  await recordInstanceCaState(ctx, inst.identityId, inst.id, caState(ctx.cas));
  const stored = (await ctx.backend.get(key))!;
  assert.deepEqual(JSON.parse(stored.value).caStates, caStatesOf(ctx.cas), "the report was recorded");
  assert.equal(stored.expires, inst.certExpires);
});

test("a node is behind a User CA step until it reports the keys it wrote; nodes offline for minutes hold nothing up", async () => {
  const ctx = await context();
  const node: NodeRecord = {
    id: "n1", name: "web-01", labels: {}, principals: [], hostKey: "", address: "", lastHeartbeat: clock, hostCertExpires: clock + 3_600_000, joined: clock,
    caStates: caStatesOf(ctx.cas),
  };
  await ctx.backend.put(keys.node(node.name), encode(node));
  await step(ctx, "user", "init");
  await assert.rejects(step(ctx, "user", "update_clients"), /the User CA cannot move to update_clients yet: 1 live instance or node \(node web-01\) is not yet in step with init/);
  const loaded = async () => (await load<NodeRecord>(ctx.backend, keys.node(node.name)))!;
  await recordNodeCaState(ctx, await loaded(), "", "stale");
  await assert.rejects(step(ctx, "user", "update_clients"), /cannot move to update_clients yet/);
  await recordNodeCaState(ctx, await loaded(), "", caState(ctx.cas, ["user"]));
  await step(ctx, "user", "update_clients");
  // Behind again, but its last heartbeat is over five minutes old: offline, it holds no step up.
  clock += 5 * 60_000 + 1;
  await step(ctx, "user", "update_servers");
});

test("an automatic rotation whose phases are shorter than daemons' default 45 s check is refused before its first step unless forced", async () => {
  const ctx = await context();
  const auto = (graceMs: number, force: boolean) => rotate(ctx, { kinds: ["user"], phase: undefined, graceMs, actor: "t", remoteAddr: "", force });
  await assert.rejects(auto(134_000, false), (e: unknown) => isMeziteError(e, "ERR_USAGE") && /shorter than the 45s daemons wait between CA checks by default: use at least 2m15s, or --force/.test(e.message));
  assert.equal(ctx.cas.user.phase, "standby");
  await auto(134_000, true);
  assert.equal(ctx.cas.user.phase, "init");
});
