/**
 * What survives and what never exists: `kill -9` in the middle of a renewal burst loses no
 * committed generation (SPEC §2, §6), and no join token is anywhere in the data dir, the service's
 * output or the audit trail (SPEC §4).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import { join as joinPath } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { deriveTokenSecrets } from "../../src/ca/jointoken.js";
import { SEED_ROLE, mezctlOk, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { addIdentity, addToken, adminApi, createRole, join, pending, renew, statusOf, type Held, type Pending } from "./client.js";

const IDENTITIES = 4;
let auth: AuthProcess;
/** Every token made in this file, used or not: none may show up anywhere. */
const tokens: string[] = [];

before(async () => {
  auth = await startAuth();
  await createRole(auth, SEED_ROLE);
  for (let i = 0; i < IDENTITIES; i++) tokens.push(await addIdentity(auth, `burst-${i}`, ["ci-deployer"]));
});
after(() => auth?.stop());

test("kill -9 during a renewal burst: after restart every instance renews from the generation it last received", async (t) => {
  const held = await Promise.all(tokens.map((t) => join(auth.addr, t)));
  const renewed = held.map(() => 0);
  const deadline = Date.now() + 15_000;

  /** Renews in a loop until a call fails; returns what the daemon would have on disk then. */
  const worker = async (i: number): Promise<{ last: Held; lost: Pending; dropped?: Held }> => {
    let last = held[i]!;
    while (Date.now() < deadline) {
      const p = pending(); // the daemon persists this before sending
      try {
        const next = await renew(auth.addr, last, p);
        renewed[i]!++;
        // Daemon 0 loses a reply the service had committed (the kill's timing cannot be aimed).
        if (i === 0 && renewed[i] === 3) return { last, lost: p, dropped: next };
        last = next;
      } catch {
        return { last, lost: p };
      }
    }
    throw new Error("the auth service never went away");
  };
  const running = held.map((_, i) => worker(i));
  while (renewed.some((n) => n < 3)) {
    assert.ok(Date.now() < deadline, `renewals too slow: ${renewed.join(",")}`);
    await sleep(5);
  }
  await auth.kill9();
  const states = await Promise.all(running);
  await auth.restart();

  let lostReplies = 0;
  for (const [i, { last, lost, dropped }] of states.entries()) {
    const g = last.certs.generation;
    const stored = (await statusOf(auth, `burst-${i}`)).instances[0]!.generation;
    assert.ok(stored === g || stored === g + 1n, `burst-${i}: stored generation ${stored}, daemon holds ${g}`);
    if (stored === g + 1n) lostReplies++;
    // The request that got no reply is sent again, as is: committed or not, it comes out at g + 1.
    const retried = await renew(auth.addr, last, lost);
    assert.equal(retried.certs.generation, g + 1n, `burst-${i} retry`);
    if (dropped) assert.equal(retried.certs.sshCertificate, dropped.certs.sshCertificate, "the lost reply, answered again");
    const next = await renew(auth.addr, retried);
    assert.equal(next.certs.generation, g + 2n);
    assert.equal(next.certs.instanceId, held[i]!.certs.instanceId);
  }
  assert.deepEqual((await adminApi(auth).listLocks({})).locks, [], "no honest daemon was taken for a clone");
  t.diagnostic(`renewals before the kill: ${renewed.join(", ")}; committed renewals whose reply was lost: ${lostReplies}`);
});

test("no token in a SQL dump or the raw files of the data dir, the service's output, or audit ls", async () => {
  // Tokens of every kind and state, the last two made by the real CLI: unused, and a node token.
  tokens.push(await addToken(auth, "burst-0"));
  tokens.push(tokenFrom(await mezctlOk(auth, "agent-identities", "add-token", "burst-1")));
  tokens.push(tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=staging")));
  await join(auth.addr, tokens[tokens.length - 2]!);

  const db = new Database(joinPath(auth.dataDir, "mezite.db"), { readonly: true, fileMustExist: true });
  let dump = "";
  try {
    for (const { name } of db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]) {
      for (const row of db.prepare(`SELECT * FROM "${name}"`).all()) dump += `${name} ${JSON.stringify(row)}\n`;
    }
  } finally {
    db.close();
  }
  const files = readdirSync(auth.dataDir).map((f) => ({ name: f, bytes: readFileSync(joinPath(auth.dataDir, f)) }));
  const audit = await mezctlOk(auth, "audit", "ls", "--since=1h", "--format=json");
  assert.ok((JSON.parse(audit) as unknown[]).length > 20, "the audit trail has the story");

  const raw = Buffer.concat(files.map((f) => f.bytes));
  const texts = { "SQL dump": dump, "service output": auth.output(), "audit ls": audit };
  for (const token of tokens) {
    const bytes = Buffer.from(token, "hex");
    // The dump does hold each token's public id: it is looking at the right rows.
    const { tokenId } = deriveTokenSecrets(bytes);
    assert.ok(dump.includes(tokenId) && raw.includes(tokenId), "the token's id is stored");
    const needles = [token, token.toUpperCase(), bytes.toString("base64"), bytes.toString("base64url"), token.slice(0, 32), token.slice(32)];
    for (const n of needles) {
      for (const [where, text] of Object.entries(texts)) assert.ok(!text.includes(n), `a token is in the ${where}`);
      for (const f of files) assert.ok(!f.bytes.includes(n), `a token is in ${f.name}`);
    }
    for (const f of files) assert.ok(!f.bytes.includes(bytes), `a token's raw bytes are in ${f.name}`);
  }
  assert.ok(files.some((f) => f.name === "mezite.db") && files.some((f) => f.name === "mezite.db-wal"), `scanned ${files.map((f) => f.name).join(", ")}`);
});
