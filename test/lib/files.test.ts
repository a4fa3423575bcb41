import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { isMeziteError } from "../../src/lib/errors.js";
import { stageFilesAsync, writeFileAtomic, writeFilesAtomic, type FileWrite } from "../../src/lib/files.js";

const tmp = mkdtempSync(join(tmpdir(), "mezite-files-"));
after(() => rmSync(tmp, { recursive: true, force: true }));
const mode = (p: string) => statSync(p).mode & 0o777;

test("the mode is exactly the one asked for, whatever the umask, on a new file and on a replaced one", () => {
  const old = process.umask(0o077);
  try {
    writeFileAtomic(join(tmp, "public"), "a", 0o644);
    assert.equal(mode(join(tmp, "public")), 0o644, "the umask did not narrow it");
    process.umask(0o777);
    writeFileAtomic(join(tmp, "secret"), "b", 0o600);
    assert.equal(mode(join(tmp, "secret")), 0o600, "written even when the umask leaves no bit");
    writeFileSync(join(tmp, "wide"), "old", { mode: 0o666 });
    chmodSync(join(tmp, "wide"), 0o666);
    writeFileAtomic(join(tmp, "wide"), "new", 0o600);
    assert.equal(mode(join(tmp, "wide")), 0o600, "a replaced file takes the new mode, not the old one's");
    assert.equal(readFileSync(join(tmp, "wide"), "utf8"), "new");
  } finally {
    process.umask(old);
  }
});

test("writeFilesAtomic: all files replaced, in order; when one cannot be written none is replaced and no temp file stays", () => {
  const d = join(tmp, "set");
  mkdirSync(d);
  writeFilesAtomic([{ path: join(d, "ssh_cert"), data: "cert 1", mode: 0o644 }, { path: join(d, "ssh_key"), data: "key 1" }]);
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  assert.equal(mode(join(d, "ssh_key")), 0o600, "0600 unless said otherwise");

  // The second target is a directory: its rename would fail, so the first must not happen either.
  mkdirSync(join(d, "blocked"));
  assert.throws(
    () => writeFilesAtomic([{ path: join(d, "ssh_cert"), data: "cert 2" }, { path: join(d, "blocked"), data: "x" }]),
    (e) => isMeziteError(e, "ERR_STORAGE") && /blocked exists and is not a regular file/.test(e.message),
  );
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  // A symlink anywhere in the set: refused before anything is written.
  symlinkSync(join(tmp, "public"), join(d, "link"));
  assert.throws(() => writeFilesAtomic([{ path: join(d, "ssh_cert"), data: "cert 3" }, { path: join(d, "link"), data: "x" }]), (e) => isMeziteError(e, "ERR_SYMLINK"));
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  assert.equal(readFileSync(join(tmp, "public"), "utf8"), "a", "the link's target is untouched");
  assert.deepEqual(readdirSync(d).filter((f) => f.endsWith(".tmp")), []);
});

test("stageFilesAsync, then commit: the same guarantees (order, modes, nothing replaced and no temp file left when one fails); discard replaces nothing", async () => {
  const stageAndCommit = async (files: FileWrite[]) => (await stageFilesAsync(files)).commit();
  const d = join(tmp, "set-async");
  mkdirSync(d);
  const old = process.umask(0o077);
  try {
    await stageAndCommit([{ path: join(d, "ssh_cert"), data: "cert 1", mode: 0o644 }, { path: join(d, "ssh_key"), data: new TextEncoder().encode("key 1") }]);
  } finally {
    process.umask(old);
  }
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  assert.equal(readFileSync(join(d, "ssh_key"), "utf8"), "key 1");
  assert.equal(mode(join(d, "ssh_cert")), 0o644, "the umask did not narrow it");
  assert.equal(mode(join(d, "ssh_key")), 0o600, "0600 unless said otherwise");

  mkdirSync(join(d, "blocked"));
  await assert.rejects(stageAndCommit([{ path: join(d, "ssh_cert"), data: "cert 2" }, { path: join(d, "blocked"), data: "x" }]), (e) => isMeziteError(e, "ERR_STORAGE"));
  symlinkSync(join(tmp, "public"), join(d, "link"));
  await assert.rejects(stageAndCommit([{ path: join(d, "ssh_cert"), data: "cert 3" }, { path: join(d, "link"), data: "x" }]), (e) => isMeziteError(e, "ERR_SYMLINK"));
  // One write fails (its directory is missing) while the other is written: neither is renamed, no temp stays.
  await assert.rejects(
    stageAndCommit([{ path: join(d, "ssh_cert"), data: "cert 4" }, { path: join(d, "missing", "x"), data: "x" }]),
    (e) => isMeziteError(e, "ERR_STORAGE") && /cannot write .*missing\/x: /.test(e.message),
  );
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  assert.equal(readFileSync(join(tmp, "public"), "utf8"), "a", "the link's target is untouched");
  assert.deepEqual(readdirSync(d).filter((f) => f.endsWith(".tmp")), []);

  const staged = await stageFilesAsync([{ path: join(d, "ssh_cert"), data: "cert 5" }]);
  assert.equal(readdirSync(d).filter((f) => f.endsWith(".tmp")).length, 1, "staged beside its target");
  staged.discard();
  assert.equal(readFileSync(join(d, "ssh_cert"), "utf8"), "cert 1");
  assert.deepEqual(readdirSync(d).filter((f) => f.endsWith(".tmp")), []);
});
