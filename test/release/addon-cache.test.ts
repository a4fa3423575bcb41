/**
 * src/lib/sea.ts, the loader the standalone mezd uses for better-sqlite3's addon, on the real
 * addon file: it loads only bytes whose hash it checked, from a private directory, and refuses
 * directories and files another user could have planted or changed.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, test } from "node:test";
import { addonCacheDir, loadAddon } from "../../src/lib/sea.js";

const require = createRequire(import.meta.url);
const ADDON = readFileSync(join(dirname(require.resolve("better-sqlite3/package.json")), "build/Release/better_sqlite3.node"));
const work = mkdtempSync(join(tmpdir(), "mezite-addon-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** The addon works: better-sqlite3 opens a database through it. */
function usable(addon: unknown): void {
  const Database = require("better-sqlite3") as new (f: string, o: { nativeBinding: unknown }) => { prepare(s: string): { get(): unknown }; close(): void };
  const db = new Database(":memory:", { nativeBinding: addon });
  assert.deepEqual(db.prepare("select 6 * 7 as x").get(), { x: 42 });
  db.close();
}

describe("the embedded addon's cache", () => {
  test("a new cache dir is made 0700; the file is named by its hash, read-only, and loads", () => {
    const dir = join(work, "fresh", "mezite");
    usable(loadAddon("better_sqlite3", ADDON, dir));
    assert.equal(lstatSync(dir).mode & 0o777, 0o700);
    const files = readdirSync(dir);
    assert.equal(files.length, 1, files.join(","));
    assert.match(files[0]!, /^better_sqlite3-[0-9a-f]{64}\.node$/);
    assert.equal(lstatSync(join(dir, files[0]!)).mode & 0o777, 0o500);
  });

  test("a cached file whose content changed is rewritten before it is loaded", () => {
    // Planted, not loaded first: a loaded library must never be truncated in place (the loader
    // itself only ever renames a new file over the name).
    const dir = join(work, "tampered");
    mkdirSync(dir, { mode: 0o700 });
    const file = join(dir, `better_sqlite3-${createHash("sha256").update(ADDON).digest("hex")}.node`);
    writeFileSync(file, "not the addon", { mode: 0o500 });
    usable(loadAddon("better_sqlite3", ADDON, dir));
    assert.deepEqual(readFileSync(file), ADDON);
  });

  test("the checked file is what gets loaded: a file swapped in after the check is not", () => {
    const dir = join(work, "swapped");
    const file = join(dir, `better_sqlite3-${createHash("sha256").update(ADDON).digest("hex")}.node`);
    // Cached by an earlier run, never loaded by this process (the dynamic loader would hand back
    // a library it loaded before by that name without opening the file again).
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(file, ADDON, { mode: 0o500 });
    // Between the hash check and the load, the name is made to hold something else (a rename, as
    // an attacker with the directory would do it).
    const planted = join(dir, "planted.node");
    const realDlopen = process.dlopen;
    const loadedFrom: string[] = [];
    process.dlopen = ((mod: { exports: unknown }, path: string, flags?: number) => {
      loadedFrom.push(path);
      writeFileSync(planted, "not the addon: loading this fails", { mode: 0o500 });
      renameSync(planted, file);
      return flags === undefined ? realDlopen(mod, path) : realDlopen(mod, path, flags);
    }) as typeof process.dlopen;
    try {
      usable(loadAddon("better_sqlite3", ADDON, dir));
    } finally {
      process.dlopen = realDlopen;
    }
    assert.equal(loadedFrom.length, 1);
    assert.match(loadedFrom[0]!, /^\/proc\/self\/fd\/\d+$/, "loaded through the checked descriptor");
    assert.notDeepEqual(readFileSync(file), ADDON, "the name did hold the planted file at load time");
  });

  test("a symlink in place of the cache dir or of the file is refused, not followed", () => {
    const real = join(work, "real");
    mkdirSync(real, { mode: 0o700 });
    const link = join(work, "link");
    symlinkSync(real, link);
    assert.throws(() => loadAddon("better_sqlite3", ADDON, link), (e: Error & { code?: string }) => e.code === "ERR_SYMLINK" && /symlink/.test(e.message));

    const dir = join(work, "filelink");
    loadAddon("better_sqlite3", ADDON, dir);
    const file = join(dir, readdirSync(dir)[0]!);
    rmSync(file);
    writeFileSync(join(work, "elsewhere.node"), ADDON);
    symlinkSync(join(work, "elsewhere.node"), file);
    assert.throws(() => loadAddon("better_sqlite3", ADDON, dir), (e: Error & { code?: string }) => e.code === "ERR_SYMLINK");
  });

  test("a cache dir writable by group or others, or owned by someone else, is refused", () => {
    const open = join(work, "open");
    mkdirSync(open, { mode: 0o700 });
    chmodSync(open, 0o777);
    assert.throws(() => loadAddon("better_sqlite3", ADDON, open), /writable by group or others/);
    assert.deepEqual(readdirSync(open), [], "nothing written to a dir it refused");

    const theirs = join(work, "theirs");
    mkdirSync(theirs, { mode: 0o700 });
    const uid = process.getuid!();
    // Another user's dir: as root, chown it away; otherwise ask for it as if we were uid+1.
    if (uid === 0) chownSync(theirs, 65534, 65534);
    assert.throws(() => loadAddon("better_sqlite3", ADDON, theirs, uid === 0 ? 0 : uid + 1), /owned by uid/);
  });

  test("the cache dir comes from MEZITE_CACHE_DIR, systemd's CACHE_DIRECTORY, XDG, HOME, then TMPDIR", () => {
    assert.equal(addonCacheDir({ MEZITE_CACHE_DIR: "/a", CACHE_DIRECTORY: "/b", HOME: "/h" }, 7), "/a");
    assert.equal(addonCacheDir({ CACHE_DIRECTORY: "/var/cache/mezite-auth:/other", HOME: "/h" }, 7), "/var/cache/mezite-auth");
    assert.equal(addonCacheDir({ XDG_CACHE_HOME: "/x", HOME: "/h" }, 7), "/x/mezite");
    assert.equal(addonCacheDir({ HOME: "/h" }, 7), "/h/.cache/mezite");
    assert.equal(addonCacheDir({}, 7), join(tmpdir(), "mezite-7"));
  });
});
