/**
 * Certificates die with the job, and sshd's log leads back to the run (SPEC §19), end to end with
 * the real pieces: `mezd auth start`, a node made by `mezd node join` and kept current by `mezd
 * node start`, a stock sshd that Includes its snippet, CI runs joining with ID tokens from a local
 * issuer standing in for GitHub (`mezd identity start --join-method=github --one-shot`), then
 * `mezd identity release` / `msh release` and `mezctl certs show`.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parse as parseYaml } from "yaml";
import { RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { connect } from "../../src/api/client.js";
import { OUTPUT_FILES } from "../../src/identity/outputs.js";
import { MEZD, ROOT, mezctl, mezctlOk, principalsMezd, run, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { startGithubJoinBed, startIssuer, type Issuer } from "../harness/oidc.js";
import { missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, sshRun, startSshd, type Sshd } from "../harness/sshd.js";
import { addIdentity, auditEvents, refused, statusOf } from "../auth/client.js";
import { JOINED, killDaemons, oneShot, startDaemon } from "./fixture.js";

const MSH = join(ROOT, "bin/msh");
const missing = sshdTestsCannotRun();
const RUN = { repository: "acme/webapp", repository_owner: "acme", ref: "refs/heads/main", workflow: "deploy", actor: "octocat", environment: "production" };

let tmp: string;
let issuer: Issuer;
let auth: AuthProcess;
let pin: string;
let node: { dir: string; sshd: Sshd; agent: ChildProcess; log: () => string } | undefined;
const figures: string[] = [];
const report = (line: string) => {
  figures.push(line);
  process.stdout.write(`# ${line}\n`);
};

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mezite-release-"));
  chmodSync(tmp, 0o755); // the principals command runs as nobody and reads the node's dir
  issuer = await startIssuer(tmp);
  ({ auth, pin } = await startGithubJoinBed(issuer, tmp, "      - repository: acme/webapp\n        ref: refs/heads/main\n"));
  if (missing) return;
  // A node as the README makes one: node join, sshd Including the snippet, node start running.
  const dir = join(tmp, "node");
  const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=production"));
  const joined = await run(MEZD, ["node", "join", `--auth-server=${auth.addr}`, `--token=${token}`, "--hostname=web-01", `--ssh-dir=${dir}`, `--mezd-path=${principalsMezd()}`]);
  assert.equal(joined.code, 0, joined.stderr);
  const sshdDir = join(tmp, "sshd");
  mkdirSync(sshdDir);
  ensureUser("deploy");
  const sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(dir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(dir, "sshd_config")}`] });
  const agent = spawn(MEZD, ["node", "start", `--ssh-dir=${dir}`, `--auth-server=${auth.addr}`], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  agent.stderr!.on("data", (d: Buffer) => (log += d.toString()));
  node = { dir, sshd, agent, log: () => log };
});

after(async () => {
  killDaemons();
  node?.agent.kill("SIGKILL");
  await node?.sshd.stop();
  await auth?.stop();
  await issuer?.close();
  rmSync(tmp, { recursive: true, force: true });
  if (figures.length) process.stdout.write(`# figures:\n${figures.map((f) => `#   ${f}`).join("\n")}\n`);
});

/** A pipeline run's one-shot join (or renewal, when `dest` holds state) with a fresh ID token. */
async function pipelineRun(dest: string, runId: string): Promise<void> {
  issuer.githubClaims = { ...RUN, run_id: runId, sha: `sha-${runId}`, sub: "repo:acme/webapp:ref:refs/heads/main" };
  const r = await oneShot(auth.addr, dest, ["--join-method=github", "--token=github-deploy-main", `--ca-pin=${pin}`, "--one-shot-retry=1s"], {
    NODE_EXTRA_CA_CERTS: issuer.caPath,
    ACTIONS_ID_TOKEN_REQUEST_URL: issuer.githubRequestUrl,
    ACTIONS_ID_TOKEN_REQUEST_TOKEN: issuer.githubRequestToken,
  });
  assert.equal(r.code, 0, r.stderr);
}

/** ssh with a key and certificate pair, as deploy, to the node. */
async function login(keyPath: string, certPath: string): Promise<boolean> {
  const r = await sshRun({ port: node!.sshd.port, user: "deploy", keyPath, certPath, command: "whoami" });
  if (r.code === 0) assert.equal(r.stdout, "deploy\n");
  else assert.match(r.stderr, /Permission denied/, r.stderr);
  return r.code === 0;
}

/** A copy of the pair in `dest`, kept aside as an attacker (or a forgotten step) would. */
function keepAside(dest: string, name: string): { key: string; cert: string; serial: string } {
  const dir = join(tmp, name);
  mkdirSync(dir);
  copyFileSync(join(dest, "ssh_key"), join(dir, "ssh_key"));
  copyFileSync(join(dest, "ssh_cert"), join(dir, "ssh_cert"));
  return { key: join(dir, "ssh_key"), cert: join(dir, "ssh_cert"), serial: readFileSync(join(dest, "cert_serial"), "utf8").trim() };
}

const instanceIds = async () => (await statusOf(auth, "github-deploy")).instances.map((i) => i.id);
const leftovers = (dest: string) => [...OUTPUT_FILES.filter((f) => existsSync(join(dest, f))), ...(existsSync(join(dest, ".mezite")) ? [".mezite"] : [])];

describe("mezd identity release", () => {
  test("revokes every certificate of the instance: a copy kept aside is refused by sshd within 10 s; the instance and outputs are gone; again says already released", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dest = join(tmp, "run-3001");
    await pipelineRun(dest, "3001");
    const joined = keepAside(dest, "kept-join");
    await pipelineRun(dest, "3001"); // renews: the instance now holds two certificates
    const renewed = keepAside(dest, "kept-renewal");
    assert.notEqual(joined.serial, renewed.serial);
    assert.equal(await login(joined.key, joined.cert), true, "the first certificate logs in before the release");
    assert.equal(await login(renewed.key, renewed.cert), true);
    const instance = JSON.parse(readFileSync(join(dest, ".mezite", "state.json"), "utf8")).instance_id as string;
    assert.ok((await instanceIds()).includes(instance));

    const r = await run(MEZD, ["identity", "release", `--destination-dir=${dest}`]);
    assert.equal(r.code, 0, r.stderr);
    const since = Date.now();
    assert.equal(r.stdout, `released agent identity github-deploy instance ${instance}: 2 certificates revoked (nodes refuse them within seconds); outputs removed from ${dest}\n`);
    assert.deepEqual(leftovers(dest), [], "outputs and daemon state are removed");
    assert.ok(!(await instanceIds()).includes(instance), "the instance is gone from status");

    let refusedMs = -1;
    while (refusedMs < 0) {
      if (!(await login(joined.key, joined.cert))) refusedMs = Date.now() - since;
      else assert.ok(Date.now() - since < 10_000, `the kept certificate still logs in ${Date.now() - since} ms after the release`);
    }
    report(`release -> kept certificate refused by sshd after ${refusedMs} ms`);
    assert.equal(await login(renewed.key, renewed.cert), false, "the renewed certificate is refused too");

    const events = (await auditEvents(auth, { type: "agent_identity.release" })).filter((e) => e.instance === instance);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.identity, "github-deploy");
    assert.match(events[0]!.detail, /^2 certificates revoked; by its renewal certificate$/);

    const again = await run(MEZD, ["identity", "release", `--destination-dir=${dest}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, `nothing to release in ${dest}: already released (no certificates or daemon state left)\n`);
  });

  test("msh release ends the instance with the output certificate alone; that certificate cannot call the daemon's Release", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dest = join(tmp, "run-3002");
    await pipelineRun(dest, "3002");
    const kept = keepAside(dest, "kept-msh");
    assert.equal(await login(kept.key, kept.cert), true, "the certificate logs in before the release");
    const state = JSON.parse(readFileSync(join(dest, ".mezite", "state.json"), "utf8")) as { instance_id: string; tls_ca_pem: string };
    // The output certificate is of the wrong kind for RenewService: only AgentService admits it.
    const outputTls = { certPem: readFileSync(join(dest, "x509_cert.pem"), "utf8"), keyPem: readFileSync(join(dest, "x509_key.pem"), "utf8"), caPem: state.tls_ca_pem };
    await refused(connect(RenewService, auth.addr, outputTls).release({}), "ERR_NOT_AUTHORIZED");
    assert.ok((await instanceIds()).includes(state.instance_id));

    const r = await run(MSH, ["release", `--identity-dir=${dest}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^released agent identity github-deploy instance ${state.instance_id}: 1 certificate revoked`));
    const since = Date.now();
    assert.deepEqual(leftovers(dest), []);
    assert.ok(!(await instanceIds()).includes(state.instance_id));
    while (await login(kept.key, kept.cert)) assert.ok(Date.now() - since < 10_000, "the kept certificate still logs in after msh release");
    report(`msh release -> kept certificate refused after ${Date.now() - since} ms`);
    const events = (await auditEvents(auth, { type: "agent_identity.release" })).filter((e) => e.instance === state.instance_id);
    assert.match(events[0]?.detail ?? "", /by its output certificate$/);

    const again = await run(MSH, ["release", `--identity-dir=${dest}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^nothing to release in .*: already released/);
  });

  test("a release the service had already done (outputs still here): already released, exit 0, outputs removed", async () => {
    const dest = join(tmp, "run-3003");
    await pipelineRun(dest, "3003");
    const saved = readFileSync(join(dest, ".mezite", "state.json"));
    const outputs = Object.fromEntries(OUTPUT_FILES.map((f) => [f, readFileSync(join(dest, f))]));
    const first = await run(MEZD, ["identity", "release", `--destination-dir=${dest}`]);
    assert.equal(first.code, 0, first.stderr);
    // The files come back (a job that copied them, a release that died before removing them).
    mkdirSync(join(dest, ".mezite"), { mode: 0o700 });
    writeFileSync(join(dest, ".mezite", "state.json"), saved, { mode: 0o600 });
    for (const [f, data] of Object.entries(outputs)) writeFileSync(join(dest, f), data);
    const again = await run(MEZD, ["identity", "release", `--destination-dir=${dest}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^agent identity github-deploy instance \S+ was already released \(or removed by an admin\); outputs removed from /);
    assert.deepEqual(leftovers(dest), []);
    const instance = JSON.parse(saved.toString()).instance_id as string;
    const events = (await auditEvents(auth, { type: "agent_identity.release" })).filter((e) => e.instance === instance);
    assert.equal(events.length, 1, "a release that changes nothing writes no audit event");
  });

  test("the GitLab example's after_script, run as the runner runs it, releases the job's instance", async () => {
    const example = parseYaml(readFileSync(join(ROOT, "examples/gitlab-ci.yml"), "utf8")) as { deploy: { variables: Record<string, string>; after_script: string[] } };
    const dest = join(tmp, "gitlab-job");
    await pipelineRun(dest, "3004");
    const instance = JSON.parse(readFileSync(join(dest, ".mezite", "state.json"), "utf8")).instance_id as string;
    const bin = join(tmp, "gitlab-bin");
    mkdirSync(bin);
    symlinkSync(MEZD, join(bin, "mezd"));
    // GitLab runs after_script in a new shell with the job's variables, whether script passed or failed.
    const r = await run("/bin/bash", ["-ec", example.deploy.after_script.join("\n")], { env: { ...example.deploy.variables, MEZITE_DEST: dest, PATH: `${bin}:${process.env["PATH"]}` } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^released agent identity github-deploy instance ${instance}: `));
    assert.ok(!(await instanceIds()).includes(instance));
    assert.deepEqual(leftovers(dest), []);
  });

  test("a daemon still running on a released dir is refused at its next renewal and exits 3", async () => {
    const token = await addIdentity(auth, "monitor", ["ci-deployer"]);
    const dest = join(tmp, "daemon");
    const daemon = startDaemon(auth.addr, dest, [`--token=${token}`, "--cert-ttl=10m", "--renewal-interval=5m"]);
    await daemon.waitFor(JOINED);
    const r = await run(MEZD, ["identity", "release", `--destination-dir=${dest}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^released agent identity monitor instance /);
    daemon.proc.kill("SIGHUP"); // renew now
    assert.equal(await daemon.exited, 3, daemon.output());
    assert.match(daemon.output(), /ERR_IDENTITY_DELETED|was deleted/);
    assert.ok(!existsSync(join(dest, "ssh_cert")), "the daemon wrote no outputs again");
    assert.equal((await statusOf(auth, "monitor")).instances.length, 0);
  });
});

describe("mezctl certs show", () => {
  test("answers from the serial sshd logged: identity, instance, roles, principals, validity and the run's claims; a renewal's serial too; ended instances stay answerable", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dest = join(tmp, "run-4001");
    await pipelineRun(dest, "4001");
    const joined = keepAside(dest, "kept-show-join");
    assert.equal(await login(joined.key, joined.cert), true);
    // The serial as sshd logged it, not as we know it.
    const logged = [...readFileSync(node!.sshd.logPath, "utf8").matchAll(/ID agent-identity\/github-deploy \(serial (\d+)\)/g)].map((m) => m[1]!);
    assert.ok(logged.includes(joined.serial), "sshd logged the certificate's serial");
    const serial = logged[logged.length - 1]!;

    const text = await mezctlOk(auth, "certs", "show", serial);
    assert.match(text, new RegExp(`^Certificate:  serial ${serial}$`, "m"));
    assert.match(text, /^Identity:     github-deploy$/m);
    assert.match(text, /^Instance:     \S+ \(live\)$/m);
    assert.match(text, /^Roles:        \[ci-deployer\]$/m);
    assert.match(text, /^Principals:   \[deploy\]$/m);
    assert.match(text, /^Join method:  github \(join token github-deploy-main\)$/m);
    for (const line of [/^  repository\s+acme\/webapp$/m, /^  run_id\s+4001$/m, /^  actor\s+octocat$/m, /^  sha\s+sha-4001$/m]) assert.match(text, line);

    await pipelineRun(dest, "4001"); // a renewal
    const renewedSerial = readFileSync(join(dest, "cert_serial"), "utf8").trim();
    const doc = JSON.parse(await mezctlOk(auth, "certs", "show", renewedSerial, "--format=json"));
    const instance = JSON.parse(readFileSync(join(dest, ".mezite", "state.json"), "utf8")).instance_id as string;
    assert.equal(doc.serial, renewedSerial);
    assert.equal(doc.identity, "github-deploy");
    assert.equal(doc.instance, instance);
    assert.equal(doc.issued_by, "agent_identity.renew");
    assert.equal(doc.generation, 2);
    assert.deepEqual(doc.roles, ["ci-deployer"]);
    assert.deepEqual(doc.principals, ["deploy"]);
    assert.equal(doc.claims.repository, "acme/webapp");
    assert.equal(doc.claims.run_id, "4001");
    assert.equal(doc.claims.actor, "octocat");
    assert.equal(doc.claims.sha, "sha-4001");
    assert.ok(Date.parse(doc.valid_before) - Date.parse(doc.valid_after) > 50 * 60_000, "about an hour's validity");
    assert.equal(doc.instance_live, true);

    // The run ended: its instance is gone, and the audit still answers.
    assert.equal((await run(MEZD, ["identity", "release", `--destination-dir=${dest}`])).code, 0);
    const ended = JSON.parse(await mezctlOk(auth, "certs", "show", serial, "--format=json"));
    assert.equal(ended.instance_live, false);
    assert.equal(ended.claims.run_id, "4001");
    assert.equal(ended.issued_by, "agent_identity.join");
  });

  test("an unknown or malformed serial: exit 1 or 2 with one line", async () => {
    const unknown = await mezctl(auth, "certs", "show", "12345");
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stdout, "");
    assert.match(unknown.stderr, /^mezctl: no certificate with serial 12345 in the audit trail \(kept 90 days\): [^\n]+\n$/);
    const bad = await mezctl(auth, "certs", "show", "abc");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^mezctl: "abc" is not a certificate serial: [^\n]+\n$/);
  });
});
