/**
 * The seed's admin steps through the real `bin/mezctl` against the real auth service: roles,
 * agent identities, locks, tokens, audit, and the refusals an admin meets on the way.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";
import { deriveTokenSecrets } from "../../src/ca/jointoken.js";
import { ROOT, SEED_ROLE, mezctl, mezctlOk, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { adminApi, auditEvents, join, refused, renew, statusOf, type Held } from "./client.js";

let auth: AuthProcess;
let dir: string;
let token = "";
let held: Held;

const STATUS_KEYS = ["name", "roles", "locked", "generation", "last_seen", "instances", "principals"];
const INSTANCE_KEYS = ["id", "generation", "locked", "last_seen", "cert_expires"];
const AUDIT_KEYS = ["time", "type", "identity", "instance", "generation", "remote_addr", "serial", "success", "error"];

async function json<T = any>(...args: string[]): Promise<T> {
  return JSON.parse(await mezctlOk(auth, ...args, "--format=json")) as T;
}

async function names(): Promise<{ identities: string[]; roles: string[] }> {
  const api = adminApi(auth);
  const identities: string[] = [];
  for await (const page of api.listAgentIdentities({})) identities.push(...page.identities.map((x) => x.name));
  return { identities, roles: (await api.listRoles({})).roles.map((x) => x.name) };
}

function file(name: string, text: string): string {
  const p = joinPath(dir, name);
  writeFileSync(p, text);
  return p;
}

/** A refusal is a non-zero exit and exactly one line on stderr, nothing on stdout. */
async function refusedLine(...args: string[]): Promise<string> {
  const r = await mezctl(auth, ...args);
  assert.notEqual(r.code, 0, `mezctl ${args.join(" ")} should fail:\n${r.stdout}`);
  assert.equal(r.stdout, "", `mezctl ${args.join(" ")} printed on stdout`);
  assert.match(r.stderr, /^mezctl: [^\n]+\n$/, `one line on stderr for mezctl ${args.join(" ")}`);
  return r.stderr;
}

before(async () => {
  dir = mkdtempSync(joinPath(tmpdir(), "mezite-admin-test-"));
  auth = await startAuth();
});
after(async () => {
  await auth?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("the seed's steps: create -f, agent-identities add (exact shape), ls, status", async () => {
  assert.equal(await mezctlOk(auth, "create", "-f", file("role.yaml", SEED_ROLE)), 'role "ci-deployer" created\n');

  const out = await mezctlOk(auth, "agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer", "--token-ttl=1h");
  token = tokenFrom(out);
  assert.match(token, /^[0-9a-f]{64}$/);
  assert.equal(
    out,
    [
      'Agent identity "github-deploy" created.',
      "Roles: [ci-deployer]",
      `Token: ${token}`,
      "",
      "Start the agent identity daemon with:",
      `mezd identity start --auth-server=127.0.0.1:${auth.port} --token-file=/etc/mezite/identity/github-deploy.token --destination-dir=/var/lib/mezite-identity/github-deploy`,
      `(under systemd: those three keys in /etc/mezite/identity/github-deploy.yaml, then systemctl enable --now mezd-identity@github-deploy)`,
      "",
      "This token can only be used once.",
      "",
    ].join("\n"),
  );

  const ls = await mezctlOk(auth, "agent-identities", "ls");
  assert.match(ls, /^NAME\s+ROLES\s+STATUS\s+GENERATION\s+LAST SEEN\s+CERT EXPIRES$/m);
  assert.match(ls, /^github-deploy\s+ci-deployer\s+awaiting join\s+0\s+never\s+never$/m);

  held = await join(auth.addr, token);
  const [text, s, list] = await Promise.all([
    mezctlOk(auth, "agent-identities", "status", "github-deploy"),
    json("agent-identities", "status", "github-deploy"),
    json<any[]>("agent-identities", "ls"),
  ]);
  assert.match(text, /^Roles:\s+\[ci-deployer\]$/m);
  assert.match(text, /^Generation:\s+1$/m);
  assert.match(text, /^Last seen:\s+\d+s ago from 127\.0\.0\.1$/m);
  assert.match(text, /^SSH principals:\s+deploy$/m);
  assert.match(text, new RegExp(`^  ${held.certs.instanceId}  generation 1  active`, "m"));

  for (const k of STATUS_KEYS) assert.ok(k in s, `status --format=json has ${k}`);
  assert.equal(s.name, "github-deploy");
  assert.deepEqual(s.roles, ["ci-deployer"]);
  assert.equal(s.locked, false);
  assert.equal(s.generation, 1);
  assert.deepEqual(s.principals, ["deploy"]);
  assert.ok(Math.abs(Date.parse(s.last_seen) - Date.now()) < 60_000, `last_seen ${s.last_seen} is now`);
  assert.equal(s.instances.length, 1);
  for (const k of INSTANCE_KEYS) assert.ok(k in s.instances[0], `instance has ${k}`);
  assert.equal(s.instances[0].id, held.certs.instanceId);
  assert.equal(Date.parse(s.instances[0].cert_expires), Number(held.certs.expires));

  assert.equal(list.length, 1);
  for (const k of STATUS_KEYS) assert.ok(k in list[0]!, `ls --format=json has ${k}`);
  assert.equal(list[0].generation, 1);
});

test("bad names, unknown roles, duplicates and unknown role fields are refused with one line", async () => {
  const bad = file(
    "bad-role.yaml",
    SEED_ROLE.replace("name: ci-deployer", "name: other").replace("  allow:\n", "  allow:\n    hosts: [web]\n"),
  );
  const [unknownRole, duplicate, badName, field, inUse] = await Promise.all([
    refusedLine("agent-identities", "add", "--name=x1", "--roles=no-such-role"),
    refusedLine("agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer"),
    refusedLine("agent-identities", "add", "--name=Bad_Name", "--roles=ci-deployer"),
    refusedLine("create", "-f", bad),
    refusedLine("rm", "role/ci-deployer"),
  ]);
  assert.match(unknownRole, /no-such-role/);
  assert.match(duplicate, /github-deploy.*already exists/);
  assert.match(badName, /invalid agent identity name "Bad_Name"/);
  assert.match(field, /unknown field "spec\.allow\.hosts"/);
  assert.match(inUse, /ci-deployer.*used by agent identity github-deploy/);
  // Nothing of the refused requests was created.
  assert.deepEqual(await names(), { identities: ["github-deploy"], roles: ["ci-deployer"] });
});

test("locks add / ls / rm: a lock stops renewal at once, removing it lets renewal go on", async () => {
  const lock = await json("locks", "add", "--agent-identity=github-deploy", "--reason=incident 42");
  assert.equal(lock.target_kind, "agent_identity");
  assert.equal(lock.target, "github-deploy");
  const locks = await json<any[]>("locks", "ls");
  assert.deepEqual(locks.map((l) => [l.id, l.reason]), [[lock.id, "incident 42"]]);
  assert.equal((await statusOf(auth, "github-deploy")).locked, true);
  const locked = await refused(renew(auth.addr, held), "ERR_LOCKED");
  // The caller hears that it is locked and what to do; the admin's reason is for admins only.
  assert.match(locked.message, /agent identity "github-deploy" is locked \(agent identity github-deploy\); an admin must remove the lock/);
  assert.ok(!locked.message.includes("incident 42"), `the lock reason reached the caller: ${locked.message}`);
  const audited = (await json<any[]>("audit", "ls", "--type=agent_identity.renew")).filter((e) => e.error === "ERR_LOCKED");
  assert.equal(audited.length, 1);
  assert.equal(audited[0].detail, `lock=${lock.id} agent_identity=github-deploy reason="incident 42"`, "the audit event names the lock and its reason");

  assert.match(await mezctlOk(auth, "locks", "rm", lock.id), new RegExp(`Lock ${lock.id} removed`));
  assert.deepEqual((await adminApi(auth).listLocks({})).locks, []);
  held = await renew(auth.addr, held);
  assert.equal(held.certs.generation, 2n);
  assert.equal((await statusOf(auth, "github-deploy")).locked, false);
});

test("tokens ls lists tokens but never their secret; status follows the identity's newest token", async () => {
  assert.equal((await json("agent-identities", "status", "github-deploy")).token_state, "used");
  const addTokenOut = await mezctlOk(auth, "agent-identities", "add-token", "github-deploy");
  const second = tokenFrom(addTokenOut);
  assert.equal((await json("agent-identities", "status", "github-deploy")).token_state, "unused");
  const list = await json<any[]>("tokens", "ls");
  const ids = [token, second].map((t) => deriveTokenSecrets(Buffer.from(t, "hex")).tokenId);
  assert.deepEqual(list.map((t) => t.id).sort(), [...ids].sort());
  assert.deepEqual(Object.fromEntries(list.map((t) => [t.id, t.used])), { [ids[0]!]: true, [ids[1]!]: false });
  for (const t of list) assert.equal(t.agent_identity, "github-deploy");
  for (const secret of [token, second]) {
    const out = JSON.stringify(list);
    assert.ok(!out.includes(secret) && !out.includes(secret.slice(0, 32)) && !out.includes(secret.slice(32)), "tokens ls shows a token secret");
  }
  // A node token (no identity) and a removed token leave the identity's status as it was.
  const nodeTokenOut = await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=test");
  // Hints pass the token through the environment: an argument shows in ps to every user.
  for (const hint of [addTokenOut, nodeTokenOut]) {
    assert.match(hint, /^mezd (identity start|node join) .*--token-file=\/etc\/mezite\//m);
    assert.doesNotMatch(hint, /--token[= ]/, hint);
  }
  // The identity hint's destination is the shipped unit's one writable dir (issue 24: hints match units).
  const unit = readFileSync(joinPath(ROOT, "deploy/systemd/mezd-identity@.service"), "utf8");
  const writable = /^ReadWritePaths=(\S+)%i$/m.exec(unit)?.[1];
  assert.ok(writable, "the unit names its writable dir");
  assert.match(addTokenOut, new RegExp(`--destination-dir=${writable}github-deploy\\b`));
  await mezctlOk(auth, "tokens", "rm", ids[1]!);
  assert.equal((await json("agent-identities", "status", "github-deploy")).token_state, "used");
  assert.deepEqual((await json<any[]>("tokens", "ls")).filter((t) => t.type === "agent_identity").map((t) => t.id), [ids[0]]);
});

test("ListAgentIdentities streams every identity once, in name order, in pages of the size asked for", async () => {
  const fleet = ["fleet-3", "fleet-1", "fleet-4", "fleet-0", "fleet-2"];
  for (const n of fleet) await mezctlOk(auth, "agent-identities", "add", `--name=${n}`, "--roles=ci-deployer");
  const api = adminApi(auth);
  const pages: string[][] = [];
  for await (const page of api.listAgentIdentities({ pageSize: 2 })) pages.push(page.identities.map((i) => i.name));
  assert.deepEqual(pages, [["fleet-0", "fleet-1"], ["fleet-2", "fleet-3"], ["fleet-4", "github-deploy"]]);
  const consume = async () => {
    for await (const _ of api.listAgentIdentities({ pageSize: 1001 }));
  };
  await refused(consume(), "ERR_USAGE");
  const ls = await json<any[]>("agent-identities", "ls");
  assert.deepEqual(ls.map((i) => i.name), [...fleet.sort(), "github-deploy"]);
  assert.deepEqual(ls.map((i) => i.token_state), ["unused", "unused", "unused", "unused", "unused", "used"]);
  for (const n of fleet) await mezctlOk(auth, "agent-identities", "rm", n);
});

test("audit ls --format=json: every event has the SPEC §11 keys, and the story is there", async () => {
  const events = await json<any[]>("audit", "ls");
  assert.ok(Array.isArray(events) && events.length > 0);
  for (const e of events) for (const k of AUDIT_KEYS) assert.ok(k in e, `audit event ${e.type} has ${k}`);
  const types = new Set(events.map((e) => e.type));
  for (const t of ["role.create", "agent_identity.create", "token.create", "agent_identity.join", "agent_identity.renew", "lock.create", "lock.delete"]) {
    assert.ok(types.has(t), `audit has ${t}`);
  }
  const joined = events.find((e) => e.type === "agent_identity.join" && e.success);
  assert.equal(joined.identity, "github-deploy");
  assert.equal(joined.instance, held.certs.instanceId);
  assert.equal(joined.generation, 1);
  assert.equal(joined.remote_addr, "127.0.0.1");
  assert.match(joined.serial, /^\d+$/);
  assert.equal(joined.error, "");
  const refusedRenew = events.find((e) => e.type === "agent_identity.renew" && !e.success);
  assert.equal(refusedRenew.error, "ERR_LOCKED");
  const renewed = events.find((e) => e.type === "agent_identity.renew" && e.success);
  assert.equal(renewed.serial, held.certs.serial.toString());
  assert.equal(renewed.generation, 2);
  const onlyJoins = await json<any[]>("audit", "ls", "--type=agent_identity.join");
  assert.ok(onlyJoins.length > 0 && onlyJoins.every((e) => e.type === "agent_identity.join"));
});

test("rm: the identity is gone, then its role can be removed", async () => {
  assert.equal(await mezctlOk(auth, "agent-identities", "rm", "github-deploy"), 'Agent identity "github-deploy" removed.\n');
  const [ls, status] = await Promise.all([json("agent-identities", "ls"), refusedLine("agent-identities", "status", "github-deploy")]);
  assert.deepEqual(ls, []);
  assert.match(status, /github-deploy.*not found/);
  const api = adminApi(auth);
  assert.deepEqual((await api.listTokens({})).tokens.map((t) => t.type), ["node"], "its tokens went with it");
  assert.equal(await mezctlOk(auth, "rm", "role/ci-deployer"), 'role "ci-deployer" removed\n');
  assert.deepEqual(await names(), { identities: [], roles: [] });
  const types = (await auditEvents(auth)).map((e) => e.type);
  assert.ok(types.includes("agent_identity.delete") && types.includes("role.delete"));
});
