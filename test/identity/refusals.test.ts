/**
 * Everything `mezd identity start` must refuse, with SPEC §6's exit code and one line saying
 * why: bad usage (2), tokens and identities that can never work (3), an unreachable auth
 * service (1, after a bounded retry), symlinked outputs, a destination dir others could change,
 * a shared storage dir, corrupt state, and a copied storage dir (generation mismatch: that
 * instance is locked, nothing else).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { MEZD, mezctlOk, run, type AuthProcess, type RunResult } from "../harness/auth.js";
import { addIdentity, audit, humanLines, logLines, oneShot, readState, startAuthWithRole, startDaemon, status, killDaemons } from "./fixture.js";

let tmp: string;
let auth: AuthProcess;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mezite-identity-refusals-"));
  auth = await startAuthWithRole(tmp);
});

after(async () => {
  killDaemons();
  await auth.stop();
  rmSync(tmp, { recursive: true, force: true });
});

let dirs = 0;
const newDir = () => join(tmp, `d${dirs++}`);

/** Exit `code` and exactly one line on stderr that is not a JSON log record, matching `re`. */
function refused(r: RunResult, code: number, re: RegExp): void {
  assert.equal(r.code, code, `exit ${r.code}, want ${code}:\n${r.stderr}`);
  const lines = humanLines(r.stderr);
  assert.equal(lines.length, 1, `want one line, got:\n${r.stderr}`);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "a stack trace");
}

/** A joined identity: its destination dir, with the storage dir inside. */
async function joined(name: string): Promise<string> {
  const dest = newDir();
  const r = await oneShot(auth.addr, dest, [`--token=${await addIdentity(auth, name)}`]);
  assert.equal(r.code, 0, r.stderr);
  return dest;
}

// Every case has its own identity and directories: the groups run side by side.
describe("mezd identity start refuses", { concurrency: true }, () => {
  describe("bad usage exits 2 with one line", { concurrency: 1 }, () => {
    const identity = (...args: string[]) => run(MEZD, ["identity", "start", ...args]);

    test("--help exits 0 and names the flags", async () => {
      const r = await identity("--help");
      assert.equal(r.code, 0, r.stderr);
      for (const flag of ["--auth-server", "--token", "--token-file", "--destination-dir", "--storage-dir", "--cert-ttl", "--renewal-interval", "--one-shot", "--one-shot-retry", "--ssh-agent-socket", "--no-ssh-key-file", "--diag-addr", "--config"]) assert.ok(r.stdout.includes(flag), flag);
    });

    test("missing --destination-dir", async () => {
      refused(await identity("--auth-server=127.0.0.1:1", "--one-shot"), 2, /^mezd: --destination-dir is required/);
    });

    test("missing --auth-server", async () => {
      refused(await identity(`--destination-dir=${newDir()}`), 2, /^mezd: --auth-server is required/);
    });

    test("--renewal-interval not shorter than --cert-ttl", async () => {
      const dest = newDir();
      refused(await identity("--auth-server=127.0.0.1:1", `--destination-dir=${dest}`, "--cert-ttl=30m", "--renewal-interval=30m"), 2, /--renewal-interval \(30m\) must be shorter than --cert-ttl \(30m\)/);
      refused(await identity("--auth-server=127.0.0.1:1", `--destination-dir=${dest}`, "--renewal-interval=2h"), 2, /--renewal-interval \(2h\) must be shorter than --cert-ttl \(1h\)/);
      assert.ok(!existsSync(dest), "a refused start must not create the destination dir");
    });

    test("a malformed duration", async () => {
      refused(await identity("--auth-server=127.0.0.1:1", `--destination-dir=${newDir()}`, "--cert-ttl=1 hour"), 2, /--cert-ttl: "1 hour" is not a duration/);
    });

    test("an unknown flag", async () => {
      refused(await identity("--auth-server=127.0.0.1:1", `--destination-dir=${newDir()}`, "--renew-interval=1m"), 2, /unknown option '--renew-interval/);
    });

    test("an unknown --config key names the key; a known one works like the flag", async () => {
      const config = join(tmp, "identity.yaml");
      writeFileSync(config, "auth-server: 127.0.0.1:1\nrenewal_intervall: 10m\n");
      refused(await identity(`--config=${config}`, `--destination-dir=${newDir()}`), 2, /unknown key "renewal_intervall"/);
      writeFileSync(config, "auth-server: 127.0.0.1:1\ncert-ttl: 10m\nrenewal-interval: 10m\n");
      refused(await identity(`--config=${config}`, `--destination-dir=${newDir()}`), 2, /--renewal-interval \(10m\) must be shorter than --cert-ttl \(10m\)/);
    });

    test("no token and no state to renew from", async () => {
      refused(await identity(`--auth-server=${auth.addr}`, `--destination-dir=${newDir()}`, "--one-shot"), 2, /no state in .* and no token: pass --token-file, --token or set MEZITE_TOKEN/);
    });

    test("a malformed token is refused (3) without being repeated", async () => {
      const bad = "g".repeat(64);
      const r = await identity(`--auth-server=${auth.addr}`, `--destination-dir=${newDir()}`, "--one-shot", `--token=${bad}`);
      refused(r, 3, /join token is malformed/);
      assert.ok(!r.stderr.includes(bad));
    });
  });

  describe("identities and tokens that can never work exit 3 with one line", { concurrency: 1 }, () => {
    test("a used token", async () => {
      const token = await addIdentity(auth, "used-token");
      assert.equal((await oneShot(auth.addr, newDir(), [`--token=${token}`])).code, 0);
      refused(await oneShot(auth.addr, newDir(), [`--token=${token}`]), 3, /^mezd: the join token was already used/);
    });

    test("an unknown token", async () => {
      refused(await oneShot(auth.addr, newDir(), [`--token=${randomBytes(32).toString("hex")}`]), 3, /^mezd: the join token is unknown/);
    });

    test("a deleted identity: its renewal state and its unused tokens", async () => {
      const dest = await joined("deleted");
      const spare = (await mezctlOk(auth, "agent-identities", "add-token", "deleted")).match(/^Token: ([0-9a-f]{64})$/m)![1]!;
      await mezctlOk(auth, "agent-identities", "rm", "deleted");
      refused(await oneShot(auth.addr, dest), 3, /^mezd: agent identity "deleted" .*was deleted/);
      refused(await oneShot(auth.addr, newDir(), [`--token=${spare}`]), 3, /^mezd: the join token('s agent identity)? .*(deleted|unknown)/);
      // Re-adding the name makes a new identity: the old state still does not work.
      const fresh = await addIdentity(auth, "deleted");
      refused(await oneShot(auth.addr, dest), 3, /was deleted/);
      // The seed's rotation: with the re-added identity's token the same destination joins afresh.
      const rejoined = await oneShot(auth.addr, dest, [`--token=${fresh}`]);
      assert.equal(rejoined.code, 0, rejoined.stderr);
      assert.match(rejoined.stderr, /stored state cannot renew; joining again with the token/);
      const state = JSON.parse(readFileSync(join(dest, ".mezite", "state.json"), "utf8")) as { generation: string };
      assert.equal(state.generation, "1");
      assert.equal((await oneShot(auth.addr, dest)).code, 0, "and renews from then on without the token");
    });

    test("a locked identity: renewal and join, in one-shot and in a running daemon", async () => {
      const dest = await joined("locked");
      const daemon = startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"]);
      await daemon.waitFor(/"msg":"agent identity renewed"/);
      const spare = (await mezctlOk(auth, "agent-identities", "add-token", "locked")).match(/^Token: ([0-9a-f]{64})$/m)![1]!;
      await mezctlOk(auth, "agent-identities", "lock", "locked", "--reason=test");
      daemon.proc.kill("SIGHUP");
      assert.equal(await daemon.exited, 3, daemon.output());
      assert.equal(humanLines(daemon.output()).length, 1, daemon.output());
      assert.match(humanLines(daemon.output())[0]!, /^mezd: .*locked/);
      refused(await oneShot(auth.addr, dest), 3, /^mezd: .*locked/);
      refused(await oneShot(auth.addr, newDir(), [`--token=${spare}`]), 3, /^mezd: .*locked/);
      // Unlocked, the same state renews again: a lock is not a generation mismatch.
      await mezctlOk(auth, "agent-identities", "unlock", "locked");
      assert.equal((await oneShot(auth.addr, dest)).code, 0);
    });
  });

  describe("the auth service out of reach", { concurrency: 1 }, () => {
    test("one-shot exits 1 after a bounded retry, logging each attempt", async () => {
      // A port that was free a moment ago: connections are refused.
      const port = await new Promise<number>((res) => {
        const s = createServer().listen(0, "127.0.0.1", () => {
          const p = (s.address() as { port: number }).port;
          s.close(() => res(p));
        });
      });
      const t0 = performance.now();
      const r = await oneShot(`127.0.0.1:${port}`, newDir(), [`--token=${randomBytes(32).toString("hex")}`, "--one-shot-retry=2500ms"]);
      const took = performance.now() - t0;
      refused(r, 1, new RegExp(`^mezd: cannot reach the auth service at 127\\.0\\.0\\.1:${port}`));
      const retries = logLines(r.stderr).filter((l) => l["msg"] === "issue failed; retrying");
      assert.ok(retries.length >= 1, r.stderr);
      assert.ok(took >= 2_500 && took < 10_000, `took ${Math.round(took)} ms with a 2.5 s budget`);
    });
  });

  describe("the daemon's files", { concurrency: 1 }, () => {
    test("a symlink in place of an output is refused and not followed, before the token is spent", async () => {
      const token = await addIdentity(auth, "symlinked");
      const dest = newDir();
      mkdirSync(dest);
      const victim = join(tmp, "victim");
      writeFileSync(victim, "precious\n");
      symlinkSync(victim, join(dest, "ssh_cert"));
      refused(await oneShot(auth.addr, dest, [`--token=${token}`]), 2, /ssh_cert is a symlink: refusing to follow it/);
      assert.equal(readFileSync(victim, "utf8"), "precious\n");
      unlinkSync(join(dest, "ssh_cert"));
      assert.equal((await oneShot(auth.addr, dest, [`--token=${token}`])).code, 0, "the refused run must not have used the token");

      // Planted later, before a renewal: refused the same way, the key never written through it.
      unlinkSync(join(dest, "x509_key.pem"));
      symlinkSync(victim, join(dest, "x509_key.pem"));
      refused(await oneShot(auth.addr, dest), 2, /x509_key.pem is a symlink/);
      assert.equal(readFileSync(victim, "utf8"), "precious\n");
    });

    test("a destination dir others could change is refused (2) before the token is spent; a fresh one and an own 0755 one are used", async () => {
      // Whoever can replace ssh_config there has the user of `ssh -F DIR/ssh_config` run its ProxyCommand.
      const token = await addIdentity(auth, "guarded-dest");
      const unsafe: [string, (d: string) => void, RegExp][] = [
        ["0777", (d) => chmodSync(d, 0o777), /is writable by group or others \(mode 777\): run chmod go-w on it, or use another directory/],
        ["sticky 1777", (d) => chmodSync(d, 0o1777), /is writable by group or others \(mode 1777\)/],
        ["0775", (d) => chmodSync(d, 0o775), /is writable by group or others \(mode 775\)/],
      ];
      if (process.getuid?.() === 0) unsafe.push(["owned by nobody", (d) => chownSync(d, 65534, 65534), /is owned by uid 65534, not by this user \(uid 0\): chown it to this user, or use another directory/]);
      for (const [how, spoil, message] of unsafe) {
        const dest = newDir();
        mkdirSync(dest);
        chmodSync(dest, 0o755);
        spoil(dest);
        refused(await oneShot(auth.addr, dest, [`--token=${token}`]), 2, new RegExp(`^mezd: --destination-dir ${dest} ${message.source}`));
        assert.deepEqual(readdirSync(dest), [], `${how}: nothing written`);
      }
      const fresh = newDir();
      assert.equal((await oneShot(auth.addr, fresh, [`--token=${token}`])).code, 0, "the refused runs must not have used the token");
      assert.equal(statSync(fresh).mode & 0o7777, 0o755, "a missing dir is created 0755");
      const own = newDir();
      mkdirSync(own);
      chmodSync(own, 0o755);
      const r = await oneShot(auth.addr, own, [`--token=${await addIdentity(auth, "own-dest")}`]);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(existsSync(join(own, "ssh_config")));
    });

    test("a second daemon on the same storage dir is refused; a dead one's lock is taken over", async () => {
      const dest = await joined("shared-storage");
      const holder = startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"]);
      await holder.waitFor(/"msg":"agent identity renewed"/);
      refused(await oneShot(auth.addr, dest), 2, new RegExp(`another mezd identity \\(pid ${holder.pid}\\) is using the storage dir`));
      // Other destination, same storage: still refused.
      refused(await oneShot(auth.addr, newDir(), [`--storage-dir=${join(dest, ".mezite")}`]), 2, /another mezd identity/);
      assert.equal(holder.proc.exitCode, null, "the first daemon keeps running");
      assert.equal(await holder.stop("SIGKILL"), 137);
      assert.ok(existsSync(join(dest, ".mezite/lock")), "SIGKILL leaves the lock file behind");
      const r = await oneShot(auth.addr, dest);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!existsSync(join(dest, ".mezite/lock")));

      // Two started at the same moment: exactly one runs.
      const pair = [startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"]), startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"])];
      const first = await Promise.race(pair.map((d, i) => d.exited.then((code) => ({ code, i }))));
      assert.equal(first.code, 2, pair[first.i]!.output());
      const winner = pair[1 - first.i]!;
      await winner.waitFor(/"msg":"agent identity renewed"/);
      assert.equal(await winner.stop(), 0);
    });

    test("a corrupted state.json: a clear error saying a new token is needed", async () => {
      const dest = await joined("corrupt");
      for (const garbage of ["{\"version\": 1, \"generation\": ", "{}\n", ""]) {
        writeFileSync(join(dest, ".mezite/state.json"), garbage);
        refused(await oneShot(auth.addr, dest), 3, /storage dir .* is corrupt .*join again with a new token/);
      }
    });

    test("a key that does not parse, in state.json or in the pending renewal: the same clear error (3), naming the file, not the key", async () => {
      const dest = await joined("corrupt-keys");
      const statePath = join(dest, ".mezite/state.json");
      const good = readFileSync(statePath, "utf8");
      const state = JSON.parse(good) as { generation: string; renewal_key_pem: string };
      // Truncated inside the base64 body, the armour intact.
      const truncated = `${state.renewal_key_pem.slice(0, 60)}\n-----END PRIVATE KEY-----\n`;
      writeFileSync(statePath, JSON.stringify({ ...state, renewal_key_pem: truncated }));
      let r = await oneShot(auth.addr, dest);
      refused(r, 3, /storage dir .* is corrupt \(state\.json holds a key or certificate that does not parse\).*join again with a new token/);
      assert.ok(!r.stderr.includes(truncated.slice(28, 60)), "no key material in the output");

      // A pending request cannot be dropped for a fresh one: the server may have answered it
      // (generation moved on) and answers only that very request again.
      writeFileSync(statePath, good);
      const pending = { request_id: randomBytes(16).toString("hex"), from_generation: state.generation, ttl_ms: 60_000, keys: { ssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", x509: truncated, renewal: truncated } };
      writeFileSync(join(dest, ".mezite/pending_renewal.json"), JSON.stringify(pending));
      r = await oneShot(auth.addr, dest);
      refused(r, 3, /storage dir .* is corrupt \(pending_renewal\.json holds a key or certificate that does not parse\).*join again with a new token/);
      assert.ok(!r.stderr.includes(truncated.slice(28, 60)), "no key material in the output");
    });
  });

  describe("a copied storage dir", { concurrency: 1 }, () => {
    test("the second renewal is refused (3), that instance is locked and audited, other identities go on", async () => {
      const dest = await joined("cloned");
      const bystander = await joined("bystander");
      const copy = newDir();
      cpSync(join(dest, ".mezite"), join(copy, "storage"), { recursive: true });
      const instance = readState(join(dest, ".mezite")).instance_id;

      assert.equal((await oneShot(auth.addr, dest)).code, 0);
      refused(await oneShot(auth.addr, join(copy, "out"), [`--storage-dir=${join(copy, "storage")}`]), 3, /^mezd: generation mismatch for agent identity "cloned"/);

      const s = await status(auth, "cloned");
      assert.deepEqual(s.instances.map((i) => [i.id, i.locked]), [[instance, true]]);
      const events = (await audit(auth, "agent_identity.generation_mismatch")).filter((e) => e.identity === "cloned");
      assert.equal(events.length, 1);
      assert.equal(events[0]!.instance, instance);
      assert.equal(events[0]!.success, false);

      // The original holder is stopped too (it cannot be told apart), and says why.
      refused(await oneShot(auth.addr, dest), 3, /locked/);
      // Another identity is not affected.
      assert.equal((await oneShot(auth.addr, bystander)).code, 0);
      const other = await status(auth, "bystander");
      assert.equal(other.locked, false);
      assert.deepEqual(other.instances.map((i) => i.locked), [false]);
    });
  });
});
