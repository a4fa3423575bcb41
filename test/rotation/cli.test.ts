/**
 * `mezctl ca status` and `mezctl ca rotate` against a real auth service (SPEC §15): what an
 * operator reads, and bad input refused with one line and exit 2, leaving the CAs as they were.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SEED_ROLE_PATH, mezctl, mezctlOk, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { oneShot } from "../identity/fixture.js";
import type { CaStatusDoc } from "./fixture.js";

describe("mezctl ca", () => {
  let auth: AuthProcess;
  before(async () => {
    auth = await startAuth();
  });
  after(async () => {
    await auth?.stop();
  });

  const status = async () => JSON.parse(await mezctlOk(auth, "ca", "status", "--format=json")) as CaStatusDoc[];

  test("status: each CA in standby with one signing key; text names the phase, the key and its holders", async () => {
    const s = await status();
    assert.deepEqual(s.map((c) => [c.type, c.phase, c.keys.length, c.keys[0]!.signing, c.keys[0]!.trusted]), [["user", "standby", 1, true, true], ["host", "standby", 1, true, true]]);
    const text = await mezctlOk(auth, "ca", "status");
    assert.match(text, /^User CA: phase standby \(never rotated\)$/m);
    assert.match(text, new RegExp(`^  current  ${s[0]!.keys[0]!.ssh_fingerprint.replace(/[+/]/g, "\\$&")}  signing, trusted  0/0 live instances$`, "m"));
    assert.match(text, /^Host CA: phase standby/m);
  });

  test("bad input is one line with exit 2, and changes nothing", async () => {
    const before = await status();
    const cases: [string[], RegExp][] = [
      [["ca", "rotate"], /--type is required: user, host or all/],
      [["ca", "rotate", "--type=users"], /unknown CA type "users": use user, host or all/],
      [["ca", "rotate", "--type=user", "--manual"], /--manual needs --phase/],
      [["ca", "rotate", "--type=user", "--phase=init"], /--phase=init needs --manual/],
      [["ca", "rotate", "--type=user", "--manual", "--phase=sideways"], /unknown phase "sideways"/],
      [["ca", "rotate", "--type=user", "--manual", "--phase=update_servers"], /the User CA is in phase standby: the next phase can only be init/],
      [["ca", "rotate", "--type=user", "--phase=rollback"], /next phase can only be init/],
      [["ca", "rotate", "--type=host", "--grace-period=10s"], /--grace-period 10s is too short: at least 30s/],
      [["ca", "rotate", "--type=host", "--grace-period=soon"], /--grace-period: "soon" is not a duration/],
      [["ca", "rotate", "--type=host", "--manual", "--phase=init", "--grace-period=1h"], /--grace-period is for automatic rotations/],
    ];
    for (const [args, re] of cases) {
      const r = await mezctl(auth, ...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(" "));
      assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
    }
    assert.deepEqual(await status(), before);
  });

  test("an automatic rotation with phases shorter than daemons' 45 s check is refused unless forced, then warns, schedules its next step, and a second one is refused", async () => {
    const short = await mezctl(auth, "ca", "rotate", "--type=user", "--grace-period=90s");
    assert.equal(short.code, 2, short.stderr);
    assert.equal(short.stderr, "mezctl: --grace-period 1m30s gives phases of 30s, shorter than the 45s daemons wait between CA checks by default: use at least 2m15s, or --force if every daemon runs a shorter --ca-check-interval\n");
    assert.equal((await status())[0]!.phase, "standby", "refused before the first step");
    const r = await mezctl(auth, "ca", "rotate", "--type=user", "--grace-period=90s", "--force");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^Warning: each phase lasts 30s; daemons ask for phase changes every 45s by default/);
    assert.match(r.stdout, /^User CA: phase init \(automatic, started .*, next phase in \d+s\)$/m);
    const [user] = await status();
    assert.equal(user!.mode, "auto");
    assert.deepEqual(user!.keys.map((k) => [k.role, k.signing, k.trusted]), [["current", true, true], ["next", false, true]]);
    const again = await mezctl(auth, "ca", "rotate", "--type=all", "--grace-period=48h");
    assert.equal(again.code, 2);
    assert.match(again.stderr, /a rotation of the User CA is already in progress \(phase init\)/);
    // Rolled back by hand, it finishes by itself (automatic) a third of the grace period later; here it is ended at once.
    await mezctlOk(auth, "ca", "rotate", "--type=user", "--phase=rollback");
    await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", "--phase=standby");
    const [done] = await status();
    assert.deepEqual([done!.phase, done!.keys.length, done!.keys[0]!.ssh_fingerprint], ["standby", 1, user!.keys[0]!.ssh_fingerprint]);
    const events = JSON.parse(await mezctlOk(auth, "audit", "ls", "--type=ca.rotation", "--format=json")) as { detail: string; actor: string }[];
    assert.deepEqual(events.map((e) => e.detail.split(";")[0]), ["User CA: standby -> init (auto)", "User CA: init -> rollback (auto)", "User CA: rollback -> standby (manual)"]);
    assert.ok(events.every((e) => e.actor.startsWith("admin")), JSON.stringify(events));
  });

  test("a pinned join during a Host CA rotation: the service's certificate moves to the new key at update_servers, not before; both pins always work; a step past live instances behind is refused unless forced", async () => {
    await mezctlOk(auth, "create", "-f", SEED_ROLE_PATH);
    const work = mkdtempSync(join(tmpdir(), "mezite-pins-"));
    let n = 0;
    const join1 = async (pin: string) => {
      const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=pinned-${++n}`, "--roles=ci-deployer"));
      return oneShot(auth.addr, join(work, `out-${n}`), [`--token=${token}`, `--ca-pin=${pin}`]);
    };
    try {
      await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=init");
      const host = (JSON.parse(await mezctlOk(auth, "ca", "status", "--format=json")) as CaStatusDoc[]).find((c) => c.type === "host")!;
      const [oldPin, newPin] = [host.keys.find((k) => k.role === "current")!.x509_pin, host.keys.find((k) => k.role === "next")!.x509_pin];
      const both = `${oldPin},${newPin}`;
      // mezctl status and a join_token's hint name both pins for as long as the rotation lasts (issue 24).
      const cluster = JSON.parse(await mezctlOk(auth, "status", "--format=json")) as { ca_pin: string; ca_pins: string[] };
      assert.deepEqual([cluster.ca_pin, cluster.ca_pins], [oldPin, [oldPin, newPin]]);
      assert.match(await mezctlOk(auth, "status"), new RegExp(`^CA pins: +${oldPin},${newPin} \\(a Host CA rotation`, "m"));
      const jtPath = join(work, "jt.yaml");
      writeFileSync(jtPath, "kind: join_token\nmetadata: {name: pinned-ci}\nspec:\n  agent_identity: pinned-jt\n  join_method: github\n  github:\n    allow: [{repository: acme/webapp}]\n");
      await mezctlOk(auth, "agent-identities", "add", "--name=pinned-jt", "--roles=ci-deployer");
      assert.match(await mezctlOk(auth, "create", "-f", jtPath), new RegExp(`--ca-pin=${oldPin},${newPin} `));
      const outcome = async (pin: string) => (await join1(pin)).code;
      assert.deepEqual([await outcome(oldPin), await outcome(newPin), await outcome(both)], [0, 3, 0], "init: the old key signs the service's certificate");
      await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=update_clients");
      // Daemons that have not yet renewed trust only the old key: the service's certificate stays on it.
      assert.deepEqual([await outcome(oldPin), await outcome(newPin), await outcome(both)], [0, 3, 0], "update_clients: still the old key");
      // The two one-shot instances joined in init never renew: they are behind, and hold the next step up.
      const held = await mezctl(auth, "ca", "rotate", "--type=host", "--manual", "--phase=update_servers");
      assert.equal(held.code, 1, held.stderr);
      assert.match(held.stderr, /^mezctl: the Host CA cannot move to update_servers yet: 2 live instances or nodes \((pinned-1\/[0-9a-f]{8}, pinned-3|pinned-3\/[0-9a-f]{8}, pinned-1)\/[0-9a-f]{8}\) are not yet in step with update_clients \(see mezctl ca status\); wait for them, or pass --force\n$/);
      const text = await mezctlOk(auth, "ca", "status");
      assert.match(text, /^Host CA: phase update_clients[^]*^  behind: 2 live instances or nodes not yet in step with update_clients \(pinned-/m);
      const doc = (await status()).find((c) => c.type === "host")!;
      assert.deepEqual([doc.phase, doc.behind.count, doc.behind.first.length], ["update_clients", 2, 2]);
      await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=update_servers", "--force");
      const refused = await join1(oldPin);
      assert.equal(refused.code, 3);
      assert.match(refused.stderr, /not signed by the pinned CA/);
      assert.deepEqual([await outcome(newPin), await outcome(both)], [0, 0], "update_servers: the new key signs it");
      const bad = await join1(`${newPin},sha256:beef`);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--ca-pin must be sha256: followed by 64 lowercase hex characters, or up to 4 of them separated by commas/);
      await mezctlOk(auth, "ca", "rotate", "--type=host", "--phase=rollback");
      await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=standby", "--force");
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe("a retired CA key restored from an old database backup", () => {
  test("is refused: the service will not start, and says which key, when it was retired and what to do", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "mezite-restore-"));
    const backup = mkdtempSync(join(tmpdir(), "mezite-backup-"));
    const db = ["mezite.db", "mezite.db-wal", "mezite.db-shm"];
    const copy = (from: string, to: string) => db.forEach((f) => (existsSync(join(from, f)) ? copyFileSync(join(from, f), join(to, f)) : rmSync(join(to, f), { force: true })));
    const auth = await startAuth({ dataDir });
    try {
      const [old] = JSON.parse(await mezctlOk(auth, "ca", "status", "--format=json")) as CaStatusDoc[];
      await auth.stop();
      copy(dataDir, backup); // the operator's backup, taken before the rotation
      await auth.restart();
      for (const phase of ["init", "update_clients", "update_servers", "standby"]) await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", `--phase=${phase}`);
      await auth.stop();
      const retired = readFileSync(join(dataDir, "retired-ca-keys"), "utf8");
      assert.match(retired, new RegExp(`^user ${old!.keys[0]!.ssh_fingerprint.replace(/[+/]/g, "\\$&")} \\d{4}-\\d\\d-\\d\\dT`, "m"));
      copy(backup, dataDir); // restored: the database holds the retired key again
      await assert.rejects(auth.restart(), (e: Error) => {
        const line = e.message.split("\n").find((l) => l.includes("retired"));
        assert.ok(line, e.message);
        assert.match(line, /the backend's User CA key SHA256:\S+ was retired at \d{4}-\S+ \(.*retired-ca-keys\): the database was restored from a backup older than that rotation, and that key is never used again; restore a newer backup/);
        return true;
      });
    } finally {
      await auth.stop();
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(backup, { recursive: true, force: true });
    }
  });
});
