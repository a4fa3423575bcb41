/**
 * Native addons inside a standalone executable (scripts/release.mjs builds Node single executable
 * applications). Node cannot load a `.node` file from memory, so the addon travels as a SEA asset
 * and is written once to a private cache directory, then `process.dlopen`ed from there:
 * - the directory must be a real directory (not a symlink), owned by this user and writable by
 *   nobody else; a new one is made 0700;
 * - the file's name carries the SHA-256 of its content, it is written atomically (temp file,
 *   fsync, rename) and opened without following symlinks;
 * - its hash is checked against the embedded bytes right before every load, so a file that
 *   changed under us is rewritten, never loaded;
 * - it is loaded through the descriptor whose content was checked (/proc/self/fd/N), never by its
 *   name again: a file swapped in between the check and the load is not what gets loaded.
 */
import { createHash } from "node:crypto";
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getRawAsset, isSea } from "node:sea";
import { MeziteError } from "./errors.js";
import { writeFileAtomic } from "./files.js";

/**
 * Where cached addons go, first that is set: $MEZITE_CACHE_DIR; systemd's $CACHE_DIRECTORY (a
 * unit's CacheDirectory=); $XDG_CACHE_HOME/mezite; $HOME/.cache/mezite; $TMPDIR/mezite-UID.
 */
export function addonCacheDir(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): string {
  if (env["MEZITE_CACHE_DIR"]) return env["MEZITE_CACHE_DIR"];
  const systemd = env["CACHE_DIRECTORY"]?.split(":")[0];
  if (systemd) return systemd;
  if (env["XDG_CACHE_HOME"]) return join(env["XDG_CACHE_HOME"], "mezite");
  if (env["HOME"] && env["HOME"] !== "/") return join(env["HOME"], ".cache", "mezite");
  return join(tmpdir(), `mezite-${uid}`);
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Creates `dir` 0700 if missing; refuses one that is a symlink, someone else's, or writable by others. */
export function privateDir(dir: string, uid: number = process.getuid?.() ?? 0): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new MeziteError("ERR_STORAGE", `cannot create the addon cache directory ${dir}: ${(e as Error).message} (set MEZITE_CACHE_DIR to a private directory)`, { cause: e });
  }
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw new MeziteError("ERR_SYMLINK", `the addon cache directory ${dir} is a symlink: refusing to follow it (set MEZITE_CACHE_DIR to a private directory)`);
  if (!st.isDirectory()) throw new MeziteError("ERR_STORAGE", `the addon cache directory ${dir} is not a directory`);
  if (st.uid !== uid) throw new MeziteError("ERR_STORAGE", `the addon cache directory ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid}): refusing to load code from it`);
  if ((st.mode & 0o022) !== 0) {
    throw new MeziteError("ERR_STORAGE", `the addon cache directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): refusing to load code from it`);
  }
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/**
 * `file` opened read-only, when it is our regular file holding exactly the bytes whose hash is
 * `digest`; undefined when it is missing or holds anything else. The caller closes the descriptor.
 */
function openVerified(file: string, digest: string, uid: number): number | undefined {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if (errno(e) === "ENOENT") return undefined;
    if (errno(e) === "ELOOP") throw new MeziteError("ERR_SYMLINK", `${file} is a symlink: refusing to follow it`);
    throw new MeziteError("ERR_STORAGE", `cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  let ok = false;
  try {
    const st = fstatSync(fd);
    ok = st.isFile() && st.uid === uid && (st.mode & 0o022) === 0 && sha256(readFileSync(fd)) === digest;
    return ok ? fd : undefined;
  } finally {
    if (!ok) closeSync(fd);
  }
}

/**
 * Writes `bytes` (a native addon) to the private cache as `<stem>-<sha256>.node` unless it is
 * there already, checks its hash, and loads it through the checked descriptor. Returns the
 * addon's exports.
 */
export function loadAddon(stem: string, bytes: Uint8Array, dir: string = addonCacheDir(), uid: number = process.getuid?.() ?? 0): unknown {
  privateDir(dir, uid);
  const digest = sha256(bytes);
  const file = join(dir, `${stem}-${digest}.node`);
  let fd = openVerified(file, digest, uid);
  if (fd === undefined) {
    writeFileAtomic(file, bytes, 0o500);
    fd = openVerified(file, digest, uid);
    if (fd === undefined) throw new MeziteError("ERR_STORAGE", `${file} does not hold the addon just written: refusing to load it`);
  }
  const mod = { exports: {} as unknown };
  try {
    // The open descriptor names the very file whose bytes were hashed, whatever the name now holds.
    process.dlopen(mod, `/proc/self/fd/${fd}`);
  } catch (e) {
    closeSync(fd);
    throw new MeziteError("ERR_INTERNAL", `cannot load the native addon ${file}: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
  // Kept open for the process's life: the dynamic loader knows the library by this /proc name
  // and would hand it back for a later load of the same name, so the number must not be reused.
  return mod.exports;
}

const loaded = new Map<string, unknown>();

/** The addon embedded in this executable as the SEA asset `name` (e.g. "better_sqlite3.node"). */
export function embeddedAddon(name: string): unknown {
  const hit = loaded.get(name);
  if (hit !== undefined) return hit;
  if (!isSea()) throw new MeziteError("ERR_INTERNAL", `the native addon ${name} is embedded only in the standalone executable`);
  const addon = loadAddon(name.replace(/\.node$/, ""), new Uint8Array(getRawAsset(name) as ArrayBuffer));
  loaded.set(name, addon);
  return addon;
}
