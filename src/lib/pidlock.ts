/**
 * A lock file holding the pid of the process that owns a directory, so two programs never share
 * one state: two identity daemons one storage dir, two auth services one data dir. A lock left by
 * a process that died is taken over.
 */
import { randomBytes } from "node:crypto";
import { linkSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { MeziteError } from "./errors.js";
import { readFileNoFollow } from "./files.js";

const LOCK_FILE = "lock";

/**
 * Takes `dir`/lock, or throws ERR_CONFIG with `busy(pid)` while a live process holds it.
 * Returns the release function (idempotent).
 */
export function takeDirLock(dir: string, busy: (pid: number) => string): () => void {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    if (createLock(path)) {
      let held = true;
      return () => {
        if (held) rmSync(path, { force: true });
        held = false;
      };
    }
    const text = readFileNoFollow(path);
    if (text === undefined) continue; // released meanwhile
    const pid = Number(text.trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) throw new MeziteError("ERR_CONFIG", busy(pid));
    rmSync(path, { force: true }); // left by a process that died: take it over
  }
  throw new MeziteError("ERR_STORAGE", `cannot lock ${dir}`);
}

/**
 * Creates the lock file already holding our pid: a finished temp file linked into place (link
 * fails if the name exists), so a process starting at the same moment never reads it empty and
 * mistakes it for a dead one's.
 */
function createLock(path: string): boolean {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
  try {
    writeFileSync(tmp, `${process.pid}\n`, { mode: 0o600, flag: "wx" });
    linkSync(tmp, path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new MeziteError("ERR_STORAGE", `cannot lock ${dirname(path)}: ${(e as Error).message}`, { cause: e });
  } finally {
    rmSync(tmp, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
