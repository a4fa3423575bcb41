/**
 * A one-shot writes its eight output files side by side (src/lib/files.ts stageFilesAsync): their
 * fsyncs run at once on libuv's threads, so the filesystem's journal commits them together, where
 * one after another on the main thread each waited for a commit of its own (with the state
 * files, the one-shot's largest wait after its request). They start before the state is saved,
 * whose fsync then joins theirs; the outputs are renamed only once the state is in place. Seen
 * with strace on the real daemon joining a real auth service.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { IdentityDaemon } from "../../src/identity/daemon.js";
import { resolveIdentityOptions } from "../../src/identity/options.js";
import { OUTPUT_FILES } from "../../src/identity/outputs.js";
import type { Storage } from "../../src/identity/storage.js";
import { MeziteError, isMeziteError } from "../../src/lib/errors.js";
import type { Logger } from "../../src/lib/log.js";
import { MEZD, ensureBuilt, run, type AuthProcess } from "../harness/auth.js";
import { findBinary, missingComponent } from "../harness/require.js";
import { addIdentity, startAuthWithRole } from "./fixture.js";

const STRACE = findBinary(["/usr/bin/strace", "/bin/strace"]);
let dir: string;
let auth: AuthProcess | undefined;

before(async () => {
  if (STRACE) ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), "mezite-fsync-"));
  auth = await startAuthWithRole(dir);
});

after(async () => {
  await auth?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the one-shot's output files are synced on libuv's threads side by side, not one by one on the main thread", async (t) => {
  if (!STRACE) return missingComponent(t, "strace", "apt-get install strace");
  const token = await addIdentity(auth!, "fsync");
  const dest = join(dir, "dest");
  const trace = join(dir, "strace.txt");
  const r = await run(STRACE, ["-f", "-qq", "-e", "trace=execve,fsync", "-o", trace, MEZD, "identity", "start", `--auth-server=${auth!.addr}`, `--destination-dir=${dest}`, "--one-shot"], { env: { MEZITE_TOKEN: token }, timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  for (const f of OUTPUT_FILES) assert.ok(readFileSync(join(dest, f)).length > 0, `${f} written`);
  // strace -f prefixes each line with the thread id; the first line, the exec, is the main thread.
  const lines = readFileSync(trace, "utf8").split("\n").filter((l) => /^\d+ +fsync\(/.test(l));
  const main = /^(\d+)/.exec(readFileSync(trace, "utf8"))![1]!;
  const byThread = lines.map((l) => /^(\d+)/.exec(l)![1]!);
  const onThreads = byThread.filter((tid) => tid !== main);
  assert.equal(onThreads.length, OUTPUT_FILES.length, `fsyncs off the main thread (main ${main}):\n${lines.join("\n")}`);
  // The state files (state.json, the pending renewal) and the directories stay on the main thread.
  // The outputs' fsyncs are queued before the state's is made, and are under way before it ends,
  // so one journal commit serves them all. Which syscall enters first is the scheduler's choice
  // (on a loaded machine the main thread often wins), so the test does not ask that.
  assert.ok(byThread.length > onThreads.length);
  const all = readFileSync(trace, "utf8").split("\n");
  const mine = (l: string) => l.startsWith(`${main} `);
  const firstMainEnd = all.findIndex((l) => mine(l) && (/^\d+ +fsync\(.*\) += /.test(l) || /<\.\.\. fsync resumed>/.test(l)));
  const firstOutputStart = all.findIndex((l) => !mine(l) && /^\d+ +fsync\(/.test(l));
  assert.ok(firstOutputStart !== -1 && firstOutputStart < firstMainEnd, `an output's fsync is under way before the state's ends:\n${all.join("\n")}`);
});

test("a state that cannot be saved: its error, no output written and no temp file left with a key in it", async () => {
  const dest = join(dir, "dest-unsaved");
  const opts = resolveIdentityOptions({ authServer: auth!.addr, token: await addIdentity(auth!, "unsaved"), destinationDir: dest, oneShot: true, oneShotRetry: "0s" }, {});
  const log: Logger = { info() {}, warn() {}, error() {}, record() {} };
  const daemon = new IdentityDaemon(opts, { log });
  // The disk refusing the state file, as ENOSPC would: the outputs are being written meanwhile.
  (daemon as unknown as { storage: Storage }).storage.saveState = () => {
    throw new MeziteError("ERR_STORAGE", "cannot write state.json: the disk is full");
  };
  await assert.rejects(daemon.run(new AbortController().signal), (e) => isMeziteError(e, "ERR_STORAGE") && /state\.json: the disk is full/.test(e.message));
  assert.deepEqual(readdirSync(dest), [".mezite"], "no output and no temp file");
  assert.ok(!existsSync(join(dest, ".mezite", "state.json")));
});
