/**
 * action.yml's install step, run with bash as a runner runs it, against a release laid out as
 * `npm run release` publishes it (VERSION/mezite-VERSION-linux-amd64.tar.gz and VERSION/SHA256SUMS,
 * here under a file:// URL): it installs a pinned version only when the tarball matches that
 * release's SHA256SUMS, and installs nothing otherwise.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, describe, test } from "node:test";
import { parse as parseYaml } from "yaml";
import { ROOT, run } from "../harness/auth.js";

interface Action {
  inputs: Record<string, { default?: string }>;
  runs: { steps: { id?: string; env: Record<string, string>; run: string }[] };
}
const action = parseYaml(readFileSync(join(ROOT, "action.yml"), "utf8")) as Action;
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const NAME = `mezite-${VERSION}-linux-amd64.tar.gz`;
const work = mkdtempSync(join(tmpdir(), "mezite-action-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** A release dir under `root` holding a tarball of mezd and msh that print `says`; returns the tarball's path. */
function publish(root: string, says: string): string {
  const members = join(root, "members");
  mkdirSync(members, { recursive: true });
  for (const p of ["mezd", "msh"]) writeFileSync(join(members, p), `#!/bin/sh\necho "${p} ${says}"\n`, { mode: 0o755 });
  const dir = join(root, VERSION);
  mkdirSync(dir, { recursive: true });
  const tarball = join(dir, NAME);
  const tar = spawnSync("tar", ["-C", members, "-czf", tarball, "mezd", "msh"], { encoding: "utf8" });
  assert.equal(tar.status, 0, tar.stderr);
  return tarball;
}

function sums(tarball: string): string {
  return `${createHash("sha256").update(readFileSync(tarball)).digest("hex")}  ${NAME}\n`;
}

/** Runs the install step with these inputs (the rest at their defaults) in a fresh RUNNER_TEMP. */
async function install(inputs: Record<string, string>) {
  const step = action.runs.steps.find((s) => s.id === "install");
  assert.ok(step, "action.yml has an install step (id: install)");
  const value = (name: string) => inputs[name] ?? action.inputs[name]?.default ?? "";
  const env = Object.fromEntries(Object.entries(step.env).map(([k, v]) => [k, v.replace(/^\$\{\{ inputs\.([a-z-]+) \}\}$/, (_m, name: string) => value(name))]));
  const runnerTemp = mkdtempSync(join(work, "runner-"));
  const githubPath = join(runnerTemp, "github-path");
  writeFileSync(githubPath, "");
  const r = await run("/bin/bash", ["-c", step.run], { env: { ...env, RUNNER_TEMP: runnerTemp, GITHUB_PATH: githubPath } });
  const bin = join(runnerTemp, "mezite-bin");
  return { ...r, bin, path: readFileSync(githubPath, "utf8"), leftovers: spawnSync("ls", [runnerTemp], { encoding: "utf8" }).stdout.split("\n").filter((f) => f.startsWith("mezite-download")) };
}

describe("the GitHub Action's install step", () => {
  test("the default version is pinned (this release's), never 'latest'", () => {
    assert.equal(action.inputs["version"]?.default, VERSION);
    assert.doesNotMatch(readFileSync(join(ROOT, "action.yml"), "utf8"), /latest/);
  });

  test("a tarball matching its release's SHA256SUMS is installed and put on PATH", async () => {
    const root = join(work, "good");
    const tarball = publish(root, "genuine");
    writeFileSync(join(root, VERSION, "SHA256SUMS"), sums(tarball));
    const r = await install({ "release-base-url": pathToFileURL(root).href });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(spawnSync(join(r.bin, "mezd"), { encoding: "utf8" }).stdout, "mezd genuine\n");
    assert.ok(existsSync(join(r.bin, "msh")));
    assert.equal(r.path, `${r.bin}\n`);
    assert.deepEqual(r.leftovers, [], "the download dir is removed");
  });

  test("a tarball that does not match, or a SHA256SUMS without its entry, installs nothing: one line says why", async () => {
    const root = join(work, "swapped");
    const genuine = publish(root, "genuine");
    const expected = sums(genuine);
    publish(root, "evil"); // the tarball is replaced on the server; SHA256SUMS still names the genuine one
    writeFileSync(join(root, VERSION, "SHA256SUMS"), expected);
    const r = await install({ "release-base-url": pathToFileURL(root).href });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr.trim(), new RegExp(`^mezite: ${NAME.replace(/\./g, "\\.")} does not match the SHA256SUMS of release ${VERSION.replace(/\./g, "\\.")} \\(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\\): not installed$`));
    assert.ok(!existsSync(join(r.bin, "mezd")), "nothing was installed");
    assert.equal(r.path, "", "nothing was put on PATH");
    assert.deepEqual(r.leftovers, [], "the download dir is removed");

    writeFileSync(join(root, VERSION, "SHA256SUMS"), `${"0".repeat(64)}  mezite-other.tar.gz\n`);
    const none = await install({ "release-base-url": pathToFileURL(root).href });
    assert.notEqual(none.code, 0);
    assert.match(none.stderr.trim(), /^mezite: the SHA256SUMS of release \S+ has no single entry for \S+: not installed$/);
    assert.ok(!existsSync(join(none.bin, "mezd")));

    const bad = await install({ "release-base-url": pathToFileURL(root).href, version: "latest" });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr.trim(), /^mezite: version must be a release such as 0\.1\.0, not "latest"/);
  });
});
