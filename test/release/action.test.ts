/**
 * The GitHub Action (action.yml: a JavaScript action, so that it has a post step), run with node
 * as a runner runs it: inputs as INPUT_* variables, the file commands GITHUB_PATH, GITHUB_OUTPUT
 * and GITHUB_STATE, and the post step given back the main step's state as STATE_* variables.
 *
 * The main step installs a pinned version only when the tarball matches that release's SHA256SUMS
 * (a release laid out as `npm run release` publishes it, here under a file:// URL), and installs
 * nothing otherwise. End to end, with a release whose mezd is the real one, the main step joins
 * with the job's ID token (a local issuer standing in for GitHub's) and the post step releases the
 * instance: it is gone from status and the outputs are removed.
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
import { OUTPUT_FILES } from "../../src/identity/outputs.js";
import { MEZD, ROOT, run, type RunResult } from "../harness/auth.js";
import { startGithubJoinBed, startIssuer } from "../harness/oidc.js";
import { statusOf } from "../auth/client.js";

interface Action {
  inputs: Record<string, { default?: string }>;
  runs: { using: string; main: string; post: string; "post-if": string };
}
const action = parseYaml(readFileSync(join(ROOT, "action.yml"), "utf8")) as Action;
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const NAME = `mezite-${VERSION}-linux-amd64.tar.gz`;
const work = mkdtempSync(join(tmpdir(), "mezite-action-"));
after(() => rmSync(work, { recursive: true, force: true }));

/**
 * A release dir under `root` holding a tarball of mezd and msh (shell scripts with these bodies;
 * by default they print "<name> <says>" and record their arguments); returns the tarball's path.
 */
function publish(root: string, says: string, body?: (p: string) => string): string {
  const members = join(root, "members");
  mkdirSync(members, { recursive: true });
  for (const p of ["mezd", "msh"]) writeFileSync(join(members, p), `#!/bin/sh\n${body?.(p) ?? `echo "$@" >> "$0.args"\necho "${p} ${says}"`}\n`, { mode: 0o755 });
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

/** A runner's view of one job: its temp dir and file-command files. */
function job() {
  const runnerTemp = mkdtempSync(join(work, "runner-"));
  const files = { GITHUB_PATH: join(runnerTemp, "github-path"), GITHUB_OUTPUT: join(runnerTemp, "github-output"), GITHUB_STATE: join(runnerTemp, "github-state") };
  for (const f of Object.values(files)) writeFileSync(f, "");
  return { runnerTemp, files, bin: join(runnerTemp, "mezite-bin") };
}
type Job = ReturnType<typeof job>;

/** name=value lines of a file command, as the runner reads them. */
function commands(file: string): Record<string, string> {
  return Object.fromEntries(readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

/** The main step with these inputs (the rest at action.yml's defaults), as the runner starts it. */
async function main(j: Job, inputs: Record<string, string>, env: Record<string, string> = {}): Promise<RunResult & { path: string; leftovers: string[] }> {
  const all = { ...Object.fromEntries(Object.entries(action.inputs).map(([k, v]) => [k, v.default ?? ""])), ...inputs };
  const inputEnv = Object.fromEntries(Object.entries(all).map(([k, v]) => [`INPUT_${k.toUpperCase()}`, v]));
  const r = await run(process.execPath, [join(ROOT, action.runs.main)], { env: { ...inputEnv, ...j.files, RUNNER_TEMP: j.runnerTemp, ...env } });
  return { ...r, path: readFileSync(j.files.GITHUB_PATH, "utf8"), leftovers: spawnSync("ls", [j.runnerTemp], { encoding: "utf8" }).stdout.split("\n").filter((f) => f.startsWith("mezite-download")) };
}

/** The post step: the runner gives back each name=value the main step saved as STATE_name. */
function post(j: Job, env: Record<string, string> = {}): Promise<RunResult> {
  const state = Object.fromEntries(Object.entries(commands(j.files.GITHUB_STATE)).map(([k, v]) => [`STATE_${k}`, v]));
  return run(process.execPath, [join(ROOT, action.runs.post)], { env: { ...state, ...j.files, RUNNER_TEMP: j.runnerTemp, ...env } });
}

const JOIN_INPUTS = { "auth-server": "mezite.example.com:3025", token: "github-deploy-main", "ca-pin": `sha256:${"a".repeat(64)}` };

describe("the GitHub Action's main step", () => {
  test("a JavaScript action with a post step that runs whatever happened; the default version is pinned (this release's), never 'latest'", () => {
    assert.equal(action.runs.using, "node20");
    assert.ok(existsSync(join(ROOT, action.runs.main)) && existsSync(join(ROOT, action.runs.post)));
    assert.equal(action.runs["post-if"], "always()");
    assert.equal(action.inputs["version"]?.default, VERSION);
    assert.doesNotMatch(readFileSync(join(ROOT, "action.yml"), "utf8"), /latest/);
  });

  test("a tarball matching its release's SHA256SUMS is installed, put on PATH, and joins; outputs and state are exported", async () => {
    const root = join(work, "good");
    const tarball = publish(root, "genuine");
    writeFileSync(join(root, VERSION, "SHA256SUMS"), sums(tarball));
    const j = job();
    const r = await main(j, { ...JOIN_INPUTS, "release-base-url": pathToFileURL(root).href });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "mezd genuine\n");
    assert.ok(existsSync(join(j.bin, "msh")));
    assert.equal(r.path, `${j.bin}\n`);
    assert.deepEqual(r.leftovers, [], "the download dir is removed");
    const dest = join(j.runnerTemp, "mezite-certs");
    assert.equal(
      readFileSync(join(j.bin, "mezd.args"), "utf8"),
      `identity start --one-shot --join-method=github --auth-server=mezite.example.com:3025 --token=github-deploy-main --ca-pin=sha256:${"a".repeat(64)} --destination-dir=${dest} --cert-ttl=1h\n`,
    );
    assert.deepEqual(commands(j.files.GITHUB_OUTPUT), { "destination-dir": dest, "ssh-config": join(dest, "ssh_config") });
    assert.deepEqual(commands(j.files.GITHUB_STATE), { mezd: join(j.bin, "mezd"), dest });

    const p = await post(j);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(readFileSync(join(j.bin, "mezd.args"), "utf8").split("\n")[1], `identity release --destination-dir=${dest}`);
  });

  test("a tarball that does not match, or a SHA256SUMS without its entry, installs nothing: one line says why; the post step then has nothing to do", async () => {
    const root = join(work, "swapped");
    const genuine = publish(root, "genuine");
    const expected = sums(genuine);
    publish(root, "evil"); // the tarball is replaced on the server; SHA256SUMS still names the genuine one
    writeFileSync(join(root, VERSION, "SHA256SUMS"), expected);
    const j = job();
    const r = await main(j, { ...JOIN_INPUTS, "release-base-url": pathToFileURL(root).href });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr.trim(), new RegExp(`^mezite: ${NAME.replace(/\./g, "\\.")} does not match the SHA256SUMS of release ${VERSION.replace(/\./g, "\\.")} \\(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\\): not installed$`));
    assert.ok(!existsSync(join(j.bin, "mezd")), "nothing was installed");
    assert.equal(r.path, "", "nothing was put on PATH");
    assert.deepEqual(r.leftovers, [], "the download dir is removed");
    const p = await post(j);
    assert.equal(p.code, 0, p.stderr);
    assert.equal(p.stdout, "mezite: nothing to release (the main step stopped before joining)\n");

    writeFileSync(join(root, VERSION, "SHA256SUMS"), `${"0".repeat(64)}  mezite-other.tar.gz\n`);
    const none = await main(job(), { ...JOIN_INPUTS, "release-base-url": pathToFileURL(root).href });
    assert.notEqual(none.code, 0);
    assert.match(none.stderr.trim(), /^mezite: the SHA256SUMS of release \S+ has no single entry for \S+: not installed$/);

    const bad = await main(job(), { ...JOIN_INPUTS, "release-base-url": pathToFileURL(root).href, version: "latest" });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr.trim(), /^mezite: version must be a release such as 0\.1\.0, not "latest"/);
  });
});

describe("the GitHub Action end to end", () => {
  test("main joins with the job's ID token; post, as the runner runs it at the job's end, releases the instance and removes the outputs", async () => {
    const issuer = await startIssuer(work);
    const { auth, pin } = await startGithubJoinBed(issuer, work, "      - repository: acme/webapp\n");
    try {
      issuer.githubClaims = { repository: "acme/webapp", repository_owner: "acme", ref: "refs/heads/main", run_id: "77", actor: "octocat", sha: "abc" };
      // A release whose mezd is this checkout's (the standalone build is release.test.ts's subject).
      const root = join(work, "real");
      const tarball = publish(root, "", () => `exec ${MEZD} "$@"`);
      writeFileSync(join(root, VERSION, "SHA256SUMS"), sums(tarball));
      const j = job();
      const runtime = { NODE_EXTRA_CA_CERTS: issuer.caPath, ACTIONS_ID_TOKEN_REQUEST_URL: issuer.githubRequestUrl, ACTIONS_ID_TOKEN_REQUEST_TOKEN: issuer.githubRequestToken };
      const dest = join(j.runnerTemp, "certs");
      const m = await main(j, { "auth-server": auth.addr, token: "github-deploy-main", "ca-pin": pin, "destination-dir": dest, "cert-ttl": "30m", "release-base-url": pathToFileURL(root).href }, runtime);
      assert.equal(m.code, 0, m.stderr);
      assert.equal(readFileSync(j.files.GITHUB_OUTPUT, "utf8"), `destination-dir=${dest}\nssh-config=${dest}/ssh_config\n`);
      assert.match(readFileSync(join(dest, "ssh_config"), "utf8"), /CertificateFile/);
      const instances = (await statusOf(auth, "github-deploy")).instances;
      assert.equal(instances.length, 1);
      assert.equal(instances[0]!.claims["run_id"], "77");

      const p = await post(j);
      assert.equal(p.code, 0, p.stderr);
      assert.match(p.stdout, new RegExp(`^released agent identity github-deploy instance ${instances[0]!.id}: 1 certificate revoked`));
      assert.equal((await statusOf(auth, "github-deploy")).instances.length, 0, "the instance is gone");
      assert.deepEqual(OUTPUT_FILES.filter((f) => existsSync(join(dest, f))), [], "the outputs are removed");
      // A post step run again (a re-run of the job's cleanup) is not an error.
      const again = await post(j);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /already released/);
    } finally {
      await auth.stop();
      await issuer.close();
    }
  });
});
