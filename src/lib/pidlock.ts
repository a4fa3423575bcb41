/**
 * A lock file naming the process that owns a directory, so two programs never share one state:
 * two identity daemons one storage dir, two auth services one data dir. A lock left by a process
 * that died is taken over.
 */
import { randomBytes } from "node:crypto";
import { linkSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { MeziteError } from "./errors.js";
import { readFileNoFollow } from "./files.js";

const LOCK_FILE = "lock";
/** Held while a stale lock is removed, so two processes never both take over the same one. */
const TAKEOVER_FILE = "lock.takeover";
/** How long to keep trying while others take over or release the lock at the same moment. */
const CONTENTION_MS = 2_000;

/**
 * Takes `dir`/lock, or throws ERR_CONFIG with `busy(pid)` while a live process holds it.
 * Returns the release function (idempotent).
 */
export function takeDirLock(dir: string, busy: (pid: number) => string): () => void {
  const path = join(dir, LOCK_FILE);
  const giveUp = Date.now() + CONTENTION_MS;
  while (Date.now() < giveUp) {
    if (createLock(path)) {
      let held = true;
      return () => {
        if (held) rmSync(path, { force: true });
        held = false;
      };
    }
    const text = readFileNoFollow(path);
    if (text === undefined) continue; // released meanwhile
    const holder = parseHolder(text);
    if (holder !== undefined && holder.pid !== process.pid && alive(holder)) throw new MeziteError("ERR_CONFIG", busy(holder.pid));
    if (!removeStale(join(dir, TAKEOVER_FILE), path, text)) pause(5);
  }
  throw new MeziteError("ERR_STORAGE", `cannot lock ${dir}: other processes kept taking it over`);
}

/**
 * Removes the lock at `path` if it still is `stale`, the dead holder's we judged. Without the
 * takeover file a process that read the dead holder's lock could delete the one a faster process
 * had just put in its place, and both would run. False if another live process is taking over.
 */
function removeStale(takeover: string, path: string, stale: string): boolean {
  if (!createLock(takeover)) {
    const text = readFileNoFollow(takeover);
    const holder = text === undefined ? undefined : parseHolder(text);
    // Left by a process that died in the few lines below: remove it unless it changed meanwhile.
    if (text !== undefined && (holder === undefined || !alive(holder)) && readFileNoFollow(takeover) === text) rmSync(takeover, { force: true });
    return false;
  }
  try {
    if (readFileNoFollow(path) === stale) rmSync(path, { force: true });
    return true;
  } finally {
    rmSync(takeover, { force: true });
  }
}

function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Creates the lock file already holding our record: a finished temp file linked into place (link
 * fails if the name exists), so a process starting at the same moment never reads it empty and
 * mistakes it for a dead one's.
 */
function createLock(path: string): boolean {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
  try {
    writeFileSync(tmp, `${ourRecord()}\n`, { mode: 0o600, flag: "wx" });
    linkSync(tmp, path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new MeziteError("ERR_STORAGE", `cannot lock ${dirname(path)}: ${(e as Error).message}`, { cause: e });
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * Who holds a lock: "pid boot_id start_time" on Linux, only the pid elsewhere and in locks from
 * older versions. The pid alone is not enough: after a reboot (the dir survives it) the number
 * may belong to any process, and a lock judged live forever keeps the daemon down for good.
 */
interface Holder {
  pid: number;
  boot?: string;
  start?: string;
}

function parseHolder(text: string): Holder | undefined {
  const [pidText, boot, start] = text.trim().split(" ");
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  return boot !== undefined && start !== undefined ? { pid, boot, start } : { pid };
}

function ourRecord(): string {
  const boot = bootId();
  const start = startTime(process.pid);
  return boot !== undefined && start !== undefined ? `${process.pid} ${boot} ${start}` : `${process.pid}`;
}

/** Alive only if the very process that wrote the lock still runs: same boot, same start time. */
function alive(holder: Holder): boolean {
  if (holder.boot !== undefined && holder.start !== undefined) {
    const boot = bootId();
    if (boot !== undefined) {
      if (boot !== holder.boot) return false;
      const start = startTime(holder.pid);
      if (start !== undefined) return start === holder.start;
      // No /proc entry: gone, unless /proc hides other users' processes (hidepid): ask kill.
    }
  }
  try {
    process.kill(holder.pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function bootId(): string | undefined {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim() || undefined;
  } catch {
    return undefined; // not Linux
  }
}

/** Field 22 of /proc/PID/stat (clock ticks after boot); counted after the ")" closing the command name, which may hold spaces. */
function startTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
}
