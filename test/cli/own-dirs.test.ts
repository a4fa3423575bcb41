/**
 * The directories that hold keys and state (auth --data-dir, node --ssh-dir, identity
 * --storage-dir) are refused when someone else owns them or group or others can write to them:
 * whoever can write there can swap the files mezd trusts. Real binaries, refused before any
 * network call and before anything is written.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureBuilt, MEZD, run } from "../harness/auth.js";

const root = mkdtempSync(join(tmpdir(), "mezite-own-dirs-"));
test.after(() => rmSync(root, { recursive: true, force: true }));

/** A directory another user could change: group- and world-writable, or (as root) owned by nobody. */
const unsafeDirs: [string, (d: string) => void, RegExp][] = [
  ["writable by group or others", (d) => chmodSync(d, 0o777), /is writable by group or others \(mode 777\): run chmod go-w on it/],
  ["writable by group", (d) => chmodSync(d, 0o770), /is writable by group or others \(mode 770\)/],
];
if (process.getuid?.() === 0) unsafeDirs.push(["owned by another user", (d) => chownSync(d, 65534, 65534), /is owned by uid 65534, not by this user \(uid 0\)/]);

const commands: [string, (d: string) => string[], string][] = [
  ["mezd auth start --data-dir", (d) => ["auth", "start", `--data-dir=${d}`, "--listen=127.0.0.1:0", "--cluster-name=test.mezite"], "--data-dir"],
  ["mezd node join --ssh-dir", (d) => ["node", "join", "--auth-server=127.0.0.1:1", "--hostname=web", `--ssh-dir=${d}`], "--ssh-dir"],
  ["mezd node start --ssh-dir", (d) => ["node", "start", `--ssh-dir=${d}`], "--ssh-dir"],
  ["mezd identity start --storage-dir", (d) => ["identity", "start", "--auth-server=127.0.0.1:1", `--destination-dir=${join(d, "..", "dest-" + randomBytes(4).toString("hex"))}`, `--storage-dir=${d}`, "--one-shot", "--one-shot-retry=1s"], "the storage dir"],
];

for (const [cmd, args, flag] of commands) {
  for (const [how, spoil, message] of unsafeDirs) {
    test(`${cmd}: a directory ${how} is refused, and nothing is written in it`, async () => {
      ensureBuilt();
      const d = join(mkdtempSync(join(root, "case-")), "dir");
      mkdirSync(d, { mode: 0o700 });
      spoil(d);
      const r = await run(MEZD, args(d), { env: { MEZITE_TOKEN: randomBytes(32).toString("hex") }, timeoutMs: 60_000 });
      assert.notEqual(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stderr, new RegExp(`^mezd: ${flag} ${d.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} ${message.source}`, "m"));
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.deepEqual(readdirSync(d), []);
    });
  }
}
