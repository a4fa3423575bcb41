/**
 * Writing files that hold secrets or that readers sample while we replace them: a temp file in
 * the same directory, fsync, rename over the target, fsync the directory. A symlink (or anything
 * but a regular file) where the target should be is refused, never followed.
 */
import { constants, closeSync, fstatSync, fsync, fsyncSync, lstatSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync, readFileSync, chmodSync, fchmodSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";
import { MeziteError, type ErrorCode } from "./errors.js";

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Refuses a symlink or non-regular file at `path`; a missing file is fine. */
export function assertNotSymlink(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if (errno(e) === "ENOENT") return;
    throw new MeziteError("ERR_STORAGE", `cannot inspect ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `${path} is a symlink: refusing to follow it; remove it and try again`);
  if (!st.isFile()) throw new MeziteError("ERR_STORAGE", `${path} exists and is not a regular file; remove it and try again`);
}

/** Atomically replaces `path` with `data`, created with `mode` (0600 unless said otherwise). */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): void {
  writeFilesAtomic([{ path, data, mode }]);
}

export interface FileWrite {
  path: string;
  data: string | Uint8Array;
  /** Default 0600. */
  mode?: number;
}

/**
 * Replaces several files, each atomically, renamed in the order given only once every one of
 * them is written and synced: the renames follow each other within microseconds, so a reader
 * sees the old set or the new set except in that instant. Nothing is renamed if any write fails.
 */
export function writeFilesAtomic(files: FileWrite[]): void {
  for (const f of files) assertNotSymlink(f.path);
  const temps: TempFile[] = [];
  try {
    for (const f of files) temps.push(stage(f.path, f.data, f.mode ?? 0o600));
  } catch (e) {
    discard(temps);
    throw e;
  }
  commit(files, temps);
}

/** Files written beside their targets and synced, not yet in place. */
export interface StagedFiles {
  /** Renames each over its target, in the order given, then syncs their directories. */
  commit(): void;
  /** Removes the temp files: nothing is replaced. */
  discard(): void;
}

/**
 * writeFilesAtomic in two halves, with the files synced side by side on libuv's threads: the
 * filesystem's journal then commits their fsyncs together instead of one after another (8 files:
 * about half the time on ext4). Every file is written to its temp name before the promise is
 * returned (small files: at once, on this thread); their fsyncs then run side by side, so the
 * caller may meanwhile sync and commit another file (whose fsync then joins theirs in the
 * journal's commit) before it puts these in place. Resolves once every one is synced; when any
 * write or sync fails, it rejects with that file's error and leaves no temp file. The same
 * guarantees as writeFilesAtomic once committed: the renames back to back, in order.
 */
export async function stageFilesAsync(files: FileWrite[]): Promise<StagedFiles> {
  for (const f of files) assertNotSymlink(f.path);
  const temps: TempFile[] = [];
  try {
    for (const f of files) temps.push(writeTemp(f.path, f.data, f.mode ?? 0o600));
  } catch (e) {
    discard(temps);
    throw e;
  }
  const synced = await Promise.allSettled(temps.map((t) => new Promise<void>((res, rej) => fsync(t.fd, (e) => (e ? rej(e) : res())))));
  const failed = synced.findIndex((r) => r.status === "rejected");
  if (failed >= 0) {
    discard(temps);
    throw storageError(temps[failed]!.path, (synced[failed] as PromiseRejectedResult).reason);
  }
  let current = "";
  try {
    for (const t of temps) {
      current = t.path;
      closeSync(t.fd);
      t.fd = -1;
    }
  } catch (e) {
    discard(temps);
    throw storageError(current, e);
  }
  return { commit: () => commit(files, temps), discard: () => discard(temps) };
}

/**
 * A temp file beside its target `path`: open (`fd`) while it is written and synced, closed
 * (`fd` -1) once staged, renamed over `path` at commit (`tmp` "").
 */
interface TempFile {
  tmp: string;
  fd: number;
  path: string;
}

/** Closes what is still open and removes the temp files not yet renamed. */
function discard(temps: TempFile[]): void {
  for (const t of temps) {
    if (t.fd !== -1) {
      try {
        closeSync(t.fd);
      } catch {
        /* closed */
      }
      t.fd = -1;
    }
    if (t.tmp === "") continue;
    try {
      unlinkSync(t.tmp);
    } catch {
      /* already gone */
    }
  }
}

/** Renames every staged file over its target, in order, then syncs their directories. */
function commit(files: FileWrite[], temps: TempFile[]): void {
  let current = files[0]?.path ?? "";
  try {
    for (const t of temps) {
      current = t.path;
      renameSync(t.tmp, t.path);
      t.tmp = "";
    }
  } catch (e) {
    discard(temps);
    throw storageError(current, e);
  }
  for (const dir of new Set(files.map((f) => dirname(f.path)))) fsyncDir(dir);
}

function storageError(path: string, e: unknown): MeziteError {
  const code = errno(e);
  const why = code === "ENOSPC" ? "the disk is full" : code === "EACCES" || code === "EPERM" ? "permission denied" : (e as Error).message;
  return new MeziteError("ERR_STORAGE", `cannot write ${path}: ${why}`, { cause: e });
}

function tempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
}

// O_EXCL|O_NOFOLLOW: never write through a link an attacker planted at the temp name.
const TEMP_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** Writes `data` to a fresh temp file beside `path`, with `mode` set before any byte lands; not yet synced, still open. */
function writeTemp(path: string, data: string | Uint8Array, mode: number): TempFile {
  const tmp = tempName(path);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, TEMP_FLAGS, mode);
    // The umask only narrows the mode open() gave; set it exactly on the descriptor, before the
    // secret is written, and never by path (a path can be swapped under us, the descriptor not).
    fchmodSync(fd, mode);
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    return { tmp, fd, path };
  } catch (e) {
    discard([{ tmp, fd: fd ?? -1, path }]);
    throw storageError(path, e);
  }
}

/** Writes and syncs `data` to a fresh temp file beside `path` (writeTemp), and closes it. */
function stage(path: string, data: string | Uint8Array, mode: number): TempFile {
  const t = writeTemp(path, data, mode);
  try {
    fsyncSync(t.fd);
    closeSync(t.fd);
    t.fd = -1;
    return t;
  } catch (e) {
    discard([t]);
    throw storageError(path, e);
  }
}

function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, constants.O_RDONLY);
    fsyncSync(fd);
  } catch {
    // some filesystems refuse fsync on directories; the rename itself is still atomic
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Refuses a directory others could change under us: anyone who owns it or can write to it can
 * swap or plant the files in it (keys, state, the database, an ssh_config). `dir` must be a real
 * directory owned by this user (`uid`; or root with `rootToo`) and not writable by group or
 * others, sticky or not (strict like OpenSSH's StrictModes); `what` names it in the error
 * ("--data-dir /var/lib/mezite"), thrown with `code`.
 */
export function assertOwnDir(dir: string, what = dir, opts: { uid?: number; rootToo?: boolean; code?: ErrorCode } = {}): void {
  const { uid = process.getuid?.(), rootToo = false, code = "ERR_STORAGE" } = opts;
  let st;
  try {
    st = lstatSync(dir);
  } catch (e) {
    throw new MeziteError("ERR_STORAGE", `cannot use ${what}: ${(e as Error).message}`, { cause: e });
  }
  if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `${what} is a symlink: refusing to follow it`);
  if (!st.isDirectory()) throw new MeziteError("ERR_STORAGE", `${what} exists and is not a directory`);
  if (uid !== undefined && st.uid !== uid && !(rootToo && st.uid === 0)) {
    throw new MeziteError(code, `${what} is owned by uid ${st.uid}, not by this user (uid ${uid})${rootToo && uid !== 0 ? " or root" : ""}: chown it to this user, or use another directory`);
  }
  if ((st.mode & 0o022) !== 0) throw new MeziteError(code, `${what} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)}): run chmod go-w on it, or use another directory`);
}

/**
 * Creates `dir` (and parents) and makes sure it has exactly `mode`; refuses a symlinked dir.
 * With `own` (a directory holding our keys or state), an existing one must also pass assertOwnDir.
 */
export function ensureDir(dir: string, mode: number, own?: { what: string }): void {
  try {
    const st = lstatSync(dir);
    if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `${dir} is a symlink: refusing to follow it`);
    if (!st.isDirectory()) throw new MeziteError("ERR_STORAGE", `${dir} exists and is not a directory`);
    if (own) assertOwnDir(dir, own.what);
  } catch (e) {
    if (e instanceof MeziteError) throw e;
    if (errno(e) !== "ENOENT") throw new MeziteError("ERR_STORAGE", `cannot use directory ${dir}: ${(e as Error).message}`, { cause: e });
    try {
      mkdirSync(dir, { recursive: true, mode });
    } catch (e2) {
      throw new MeziteError("ERR_STORAGE", `cannot create directory ${dir}: ${(e2 as Error).message}`, { cause: e2 });
    }
  }
  chmodSync(dir, mode);
}

/**
 * Reads a regular file without following a symlink; undefined when it does not exist. Opened
 * non-blocking and checked on the descriptor: a FIFO or device planted at `path` is refused at
 * once instead of hanging the reader (opening a FIFO blocks until someone writes to it).
 */
export function readFileNoFollow(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    if (errno(e) === "ENOENT") return undefined;
    if (errno(e) === "ELOOP") throw new MeziteError("ERR_SYMLINK", `${path} is a symlink: refusing to follow it`);
    throw new MeziteError("ERR_STORAGE", `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    if (!fstatSync(fd).isFile()) throw new MeziteError("ERR_STORAGE", `${path} is not a regular file: refusing to read it`);
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
}
