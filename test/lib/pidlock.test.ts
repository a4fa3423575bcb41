import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, test } from "node:test";
import { isMeziteError } from "../../src/lib/errors.js";
import { takeDirLock } from "../../src/lib/pidlock.js";

const tmp = mkdtempSync(join(tmpdir(), "mezite-pidlock-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(tmp, { recursive: true, force: true });
});
let dirs = 0;
const newDir = () => {
  const d = join(tmp, `d${dirs++}`);
  mkdirSync(d);
  return d;
};

/** A lock-racer process: `ask` sends a line and resolves with its answer. */
async function racer(dir: string): Promise<{ proc: ChildProcess; ask: (line: string) => Promise<string> }> {
  const proc = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "lock-racer.ts"), dir], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(proc);
  const answers: string[] = [];
  const waiting: ((line: string) => void)[] = [];
  createInterface({ input: proc.stdout! }).on("line", (line) => (waiting.length > 0 ? waiting.shift()!(line) : answers.push(line)));
  const next = () => (answers.length > 0 ? Promise.resolve(answers.shift()!) : new Promise<string>((res) => waiting.push(res)));
  assert.equal(await next(), "ready");
  return {
    proc,
    ask: (line) => {
      proc.stdin!.write(`${line}\n`);
      return next();
    },
  };
}

function sleeper(): ChildProcess {
  const p = spawn("sleep", ["600"], { stdio: "ignore" });
  children.push(p);
  return p;
}

const deadPid = () => spawnSync("true").pid!;
const startTime = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]!;
};
const bootId = () => readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();

function tryLock(dir: string): "taken" | string {
  try {
    takeDirLock(dir, (pid) => `busy ${pid}`)();
    return "taken";
  } catch (e) {
    if (isMeziteError(e, "ERR_CONFIG")) return e.message;
    throw e;
  }
}

test("a crash-left lock whose pid now belongs to another process (reused after a reboot) is taken over; the live holder is not", async () => {
  const dir = newDir();
  const holder = await racer(dir);
  assert.equal(await holder.ask("take 0"), "held");
  assert.equal(tryLock(dir), `busy ${holder.proc.pid}`, "the live holder keeps it");
  holder.proc.kill("SIGKILL");
  await new Promise((res) => holder.proc.once("exit", res));
  const left = readFileSync(join(dir, "lock"), "utf8");

  // The dead holder's pid number is now some other live process's.
  const other = sleeper();
  writeFileSync(join(dir, "lock"), left.replace(/^\d+/, String(other.pid)));
  assert.equal(tryLock(dir), "taken", `lock ${JSON.stringify(left)} with a reused pid`);
  assert.ok(!existsSync(join(dir, "lock")));

  // Same pid and start time but written before a reboot: dead too.
  writeFileSync(join(dir, "lock"), `${other.pid} 00000000-0000-0000-0000-000000000000 ${startTime(other.pid!)}\n`);
  assert.equal(tryLock(dir), "taken");
  // The very process (same boot, same start): live.
  writeFileSync(join(dir, "lock"), `${other.pid} ${bootId()} ${startTime(other.pid!)}\n`);
  assert.equal(tryLock(dir), `busy ${other.pid}`);
  // A lock in the old format (pid only) keeps the old check: a live pid holds it, a dead one does not.
  writeFileSync(join(dir, "lock"), `${other.pid}\n`);
  assert.equal(tryLock(dir), `busy ${other.pid}`);
  writeFileSync(join(dir, "lock"), `${deadPid()}\n`);
  assert.equal(tryLock(dir), "taken");
});

test("four processes racing over a stale lock: exactly one holds it, every round", async () => {
  const dir = newDir();
  const racers = await Promise.all(Array.from({ length: 4 }, () => racer(dir)));
  const rounds = 150;
  const twoHolders: string[] = [];
  for (let round = 0; round < rounds; round++) {
    // Left by a dead process, in the new format and in the old one.
    const dead = deadPid();
    writeFileSync(join(dir, "lock"), round % 2 === 0 ? `${dead} ${bootId()} 1\n` : `${dead}\n`);
    const at = Date.now() + 30;
    const answers = await Promise.all(racers.map((r) => r.ask(`take ${at}`)));
    const holders = racers.filter((_, i) => answers[i] === "held");
    if (holders.length !== 1) twoHolders.push(`round ${round}: ${answers.join(", ")}`);
    else {
      const pid = holders[0]!.proc.pid;
      assert.deepEqual(answers.filter((a) => a !== "held"), racers.slice(1).map(() => `busy ${pid}`), "the losers name the winner");
      assert.equal(Number(readFileSync(join(dir, "lock"), "utf8").split(" ")[0]), pid);
    }
    for (const h of holders) assert.equal(await h.ask("release"), "released");
    assert.ok(!existsSync(join(dir, "lock.takeover")), "no takeover file left behind");
  }
  assert.deepEqual(twoHolders, [], `${twoHolders.length} of ${rounds} rounds without exactly one holder`);
});

test("a takeover file left by a process that died mid-takeover does not block the lock", () => {
  const dir = newDir();
  writeFileSync(join(dir, "lock"), `${deadPid()}\n`);
  writeFileSync(join(dir, "lock.takeover"), `${deadPid()} ${bootId()} 1\n`);
  assert.equal(tryLock(dir), "taken");
  assert.ok(!existsSync(join(dir, "lock.takeover")));
});
