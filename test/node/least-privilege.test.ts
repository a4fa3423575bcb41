/**
 * Least privilege for CI (SPEC §19), end to end with the real pieces: `bin/mezd auth start`,
 * `bin/mezctl`, `mezd identity start --one-shot` (GitHub joins against a local issuer, and
 * bootstrap-token joins), `mezd node join` nodes whose stock sshd Includes the generated snippet
 * (principals command and KRL), and the stock ssh client.
 *
 * - Role templates: one role `deploy-{{claims.environment}}` serves two repositories through two
 *   join tokens; each run logs in only where its claims allow, a run whose claim is missing or
 *   malformed gets no login at all, and a renewal keeps the instance's own principals.
 * - Role options: force_command, source_address and permit_port_forwarding reach sshd as the
 *   certificate's critical options and extensions, and sshd enforces them.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect } from "../../src/api/client.js";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { parseSshCertificate } from "../../src/ca/sshcert.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { silentLogger } from "../../src/lib/log.js";
import { NODE_DEFAULTS, NodeAgent } from "../../src/node/agent.js";
import { outcome } from "../auth/client.js";
import { MEZD, ROOT, mezctl, mezctlOk, principalsMezd, run, startAuth, tokenFrom, type AuthProcess, type RunResult } from "../harness/auth.js";
import { freePort } from "../harness/net.js";
import { startIssuer, type Issuer } from "../harness/oidc.js";
import { SSH_KEYGEN_PATH, SSH_PATH, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, sshRun, startSshd, type Sshd } from "../harness/sshd.js";

const missing = sshdTestsCannotRun();
const CLUSTER = "test.mezite";
const PRINCIPALS_MEZD = missing ? "" : principalsMezd();

const DEPLOY_ENV_ROLE = `kind: role
metadata:
  name: deploy-env
spec:
  allow:
    logins: ["deploy-{{claims.environment}}"]
    node_labels:
      env: "{{claims.environment}}"
  deny:
    logins: [root]
`;

/** A role for the options tests: deploy on every node, with these options. */
const optionsRole = (name: string, options: string) => `kind: role
metadata:
  name: ${name}
spec:
  options: ${options}
  allow:
    logins: [deploy]
    node_labels:
      '*': '*'
`;

interface Node {
  name: string;
  dir: string;
  sshd: Sshd;
}

let work: string;
let auth: AuthProcess;
let issuer: Issuer;
let pin: string;
const nodes: Record<string, Node> = {};

async function addNode(name: string, labels: string): Promise<Node> {
  const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", `--labels=${labels}`));
  const dir = join(work, `node-${name}`);
  const r = await run(MEZD, ["node", "join", `--auth-server=${auth.addr}`, `--token=${token}`, `--hostname=${name}`, `--ssh-dir=${dir}`, `--mezd-path=${PRINCIPALS_MEZD}`]);
  assert.equal(r.code, 0, r.stderr);
  const sshdDir = join(work, `sshd-${name}`);
  mkdirSync(sshdDir);
  const sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(dir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(dir, "sshd_config")}`] });
  return { name, dir, sshd };
}

/** A CI run: `mezd identity start --join-method=github --one-shot` with the runner's two variables. */
function pipelineRun(dest: string, joinToken: string): Promise<RunResult> {
  return run(MEZD, ["identity", "start", `--auth-server=${auth.addr}`, `--destination-dir=${dest}`, "--one-shot", "--one-shot-retry=1s", "--join-method=github", `--token=${joinToken}`, `--ca-pin=${pin}`], {
    env: { NODE_EXTRA_CA_CERTS: issuer.caPath, ACTIONS_ID_TOKEN_REQUEST_URL: issuer.githubRequestUrl, ACTIONS_ID_TOKEN_REQUEST_TOKEN: issuer.githubRequestToken },
    timeoutMs: 60_000,
  });
}

/** A bootstrap-token join of a new identity with one role; returns its destination dir. */
async function joinWithRole(identity: string, role: string): Promise<string> {
  const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=${identity}`, `--roles=${role}`));
  const dest = join(work, `dest-${identity}`);
  const r = await run(MEZD, ["identity", "start", `--auth-server=${auth.addr}`, `--destination-dir=${dest}`, "--one-shot", `--token=${token}`], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  return dest;
}

/** ssh with a destination dir's outputs to a node, checking its host certificate by the node's name. */
function ssh(dest: string, node: Node, user: string, command = "whoami", extra: string[] = []) {
  return sshRun({
    port: node.sshd.port,
    user,
    keyPath: join(dest, "ssh_key"),
    certPath: join(dest, "ssh_cert"),
    knownHostsPath: join(dest, "ssh_known_hosts"),
    command,
    extraOptions: ["-o", `HostKeyAlias=${node.name}`, ...extra],
  });
}

async function loginAs(dest: string, node: Node, user: string): Promise<boolean> {
  const r = await ssh(dest, node, user);
  if (r.code === 0) assert.equal(r.stdout, `${user}\n`);
  else assert.match(r.stderr, /Permission denied/, r.stderr); // refused by sshd, not a broken setup
  return r.code === 0;
}

const sshdLog = (n: Node) => readFileSync(n.sshd.logPath, "utf8");
const certOf = (dest: string) => parseSshCertificate(readFileSync(join(dest, "ssh_cert"), "utf8"));

describe("least privilege for CI: role templates and certificate options, enforced by stock sshd", () => {
  before(async () => {
    if (missing) return; // each test says so loudly (and fails under CI)
    work = mkdtempSync(join(tmpdir(), "mezite-least-"));
    chmodSync(work, 0o755); // the principals command runs as nobody and must reach the ssh dirs
    for (const u of ["deploy", "deploy-staging", "deploy-production"]) ensureUser(u);
    issuer = await startIssuer(work);
    auth = await startAuth({ env: { NODE_EXTRA_CA_CERTS: issuer.caPath } });
    pin = JSON.parse(await mezctlOk(auth, "status", "--format=json")).ca_pin;
    const roles: [string, string][] = [
      ["deploy-env", DEPLOY_ENV_ROLE],
      ["forced", optionsRole("forced", `{force_command: "echo forced-by-role"}`)],
      ["elsewhere", optionsRole("elsewhere", "{source_address: [10.0.0.0/8]}")],
      ["loopback", optionsRole("loopback", `{source_address: ["127.0.0.0/8", "10.0.0.0/8"]}`)],
      ["tunnel", optionsRole("tunnel", "{permit_port_forwarding: true}")],
      ["plain", optionsRole("plain", "{}")],
    ];
    for (const [name, yaml] of roles) {
      writeFileSync(join(work, `${name}.yaml`), yaml);
      await mezctlOk(auth, "create", "-f", join(work, `${name}.yaml`));
    }
    await mezctlOk(auth, "agent-identities", "add", "--name=ci", "--roles=deploy-env");
    const host = new URL(issuer.origin).host;
    for (const [name, repo] of [["webapp", "acme/webapp"], ["api", "acme/api"]]) {
      const file = join(work, `jt-${name}.yaml`);
      writeFileSync(file, `kind: join_token\nmetadata:\n  name: ${name}\nspec:\n  agent_identity: ci\n  join_method: github\n  github:\n    enterprise_server_host: "${host}"\n    allow:\n      - repository: ${repo}\n`);
      await mezctlOk(auth, "create", "-f", file);
    }
    Object.assign(nodes, { staging: await addNode("staging-01", "env=staging"), production: await addNode("prod-01", "env=production") });
  });

  after(async () => {
    await Promise.all(Object.values(nodes).map((n) => n.sshd.stop()));
    await auth?.stop();
    await issuer?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("one templated role, two repositories through two join tokens: each run logs in only where its claims allow", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const staging = nodes["staging"]!;
    const production = nodes["production"]!;
    const runs: Record<string, string> = {};
    for (const [env, token, repo, runId] of [["staging", "webapp", "acme/webapp", "501"], ["production", "api", "acme/api", "502"]] as const) {
      issuer.githubClaims = { repository: repo, repository_owner: "acme", environment: env, run_id: runId, actor: "octocat", sha: "abc123", ref: "refs/heads/main", workflow: "deploy" };
      const dest = join(work, `run-${env}`);
      const r = await pipelineRun(dest, token);
      assert.equal(r.code, 0, r.stderr);
      runs[env] = dest;
      const cert = certOf(dest);
      assert.deepEqual(cert.principals, [`deploy-${env}`]);
      // The node decides from the certificate alone: its rules are the resolved ones, no template left.
      const rules = cert.extensions["mezite-role-rules@mezite"]!;
      assert.doesNotMatch(rules, /\{\{/);
      assert.deepEqual(JSON.parse(rules)[0].allow, { logins: [`deploy-${env}`], labels: { env: [env] } });
    }

    assert.equal(await loginAs(runs["staging"]!, staging, "deploy-staging"), true);
    assert.equal(await loginAs(runs["production"]!, production, "deploy-production"), true);
    // A staging run is refused on the production node, by the principals command (its login is
    // named in the certificate, the node's label is not the run's), and the other way round.
    assert.equal(await loginAs(runs["staging"]!, production, "deploy-staging"), false);
    assert.match(sshdLog(production), /Certificate does not contain an authorized principal/);
    const b64 = readFileSync(join(runs["staging"]!, "ssh_cert"), "utf8").split(" ")[1]!;
    const asked = await run(MEZD, ["node", "principals", `--ssh-dir=${production.dir}`, "deploy-staging", b64]);
    assert.equal(asked.stdout, "");
    assert.match(asked.stderr, /roles do not allow the login "deploy-staging" on this node/);
    assert.equal((await run(MEZD, ["node", "principals", `--ssh-dir=${staging.dir}`, "deploy-staging", b64])).stdout, "deploy-staging\n");
    assert.equal(await loginAs(runs["production"]!, staging, "deploy-production"), false);
    assert.equal(await loginAs(runs["staging"]!, staging, "deploy-production"), false, "not a login of this run");

    // msh ls answers as the certificates do: each run sees only its own environment's node.
    for (const [env, node] of [["staging", "staging-01"], ["production", "prod-01"]] as const) {
      const ls = await run(join(ROOT, "bin/msh"), ["ls", `--identity-dir=${runs[env]!}`, "--format=json"], { env: { MEZITE_AUTH_SERVER: "", MEZITE_IDENTITY_DIR: "" } });
      assert.equal(ls.code, 0, ls.stderr);
      assert.deepEqual((JSON.parse(ls.stdout) as { name: string; logins: string[] }[]).map((n) => [n.name, n.logins]), [[node, [`deploy-${env}`]]]);
    }

    // status shows each instance's own principals, in text and JSON.
    const status = JSON.parse(await mezctlOk(auth, "agent-identities", "status", "ci", "--format=json"));
    const byRun = Object.fromEntries(status.instances.map((i: { claims: Record<string, string>; principals: string[] }) => [i.claims["run_id"], i.principals]));
    assert.deepEqual(byRun, { "501": ["deploy-staging"], "502": ["deploy-production"] });
    const text = await mezctlOk(auth, "agent-identities", "status", "ci");
    assert.match(text, /run_id=501.*\n {4}SSH principals: deploy-staging$/m);
    assert.match(text, /run_id=502.*\n {4}SSH principals: deploy-production$/m);

    // A renewal (the same one-shot again, from its storage dir) resolves from the instance's claims again.
    const before = certOf(runs["staging"]!).serial;
    const renewed = await pipelineRun(runs["staging"]!, "webapp");
    assert.equal(renewed.code, 0, renewed.stderr);
    assert.notEqual(certOf(runs["staging"]!).serial, before, "a new certificate");
    assert.deepEqual(certOf(runs["staging"]!).principals, ["deploy-staging"]);
    assert.equal(await loginAs(runs["staging"]!, staging, "deploy-staging"), true);
  });

  test("a run whose claim is missing or malformed gets no login at all: the join is refused and leaves no instance", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const instancesBefore = JSON.parse(await mezctlOk(auth, "agent-identities", "status", "ci", "--format=json")).instances.length;
    // The run as CI runs it: the daemon says why, in one line, and writes nothing.
    issuer.githubClaims = { repository: "acme/webapp", repository_owner: "acme", run_id: "601", actor: "deploy-production" };
    const dest = join(work, "run-no-environment");
    const r = await pipelineRun(dest, "webapp");
    assert.notEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /^mezd: roles \[deploy-env\] allow this instance no SSH login: its join's claims leave no valid login in the \{\{claims\.\*\}\} templates/m);
    assert.equal(existsSync(join(dest, "ssh_cert")), false, "no certificate written");
    // Malformed values, straight through the join API: refused the same way.
    const cases: [string, string][] = [
      ["a glob", "*"],
      ["not a login", "prod;rm -rf /"],
      ["a template", "{{claims.actor}}"],
      ["too long", "p".repeat(40)],
    ];
    for (const [what, environment] of cases) {
      const idToken = await issuer.sign({ iss: issuer.githubIssuer, aud: CLUSTER, repository: "acme/webapp", run_id: "602", actor: "deploy-production", environment });
      const refusal = await outcome(connect(JoinService, auth.addr, {}).joinWithIdToken({ joinToken: "webapp", idToken, ...publicKeysOf(generateIssueKeys()), requestedTtlMs: 600_000n }));
      assert.notEqual(refusal, "ok", what);
      assert.equal(refusal !== "ok" && refusal.code, "ERR_NO_LOGINS", what);
    }
    assert.equal(JSON.parse(await mezctlOk(auth, "agent-identities", "status", "ci", "--format=json")).instances.length, instancesBefore);
    // A bootstrap-token join has no claims: the same role gives it nothing.
    const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add-token", "ci"));
    const viaToken = await run(MEZD, ["identity", "start", `--auth-server=${auth.addr}`, `--destination-dir=${join(work, "run-token")}`, "--one-shot", "--one-shot-retry=1s", `--token=${token}`]);
    assert.notEqual(viaToken.code, 0, viaToken.stderr);
    assert.match(viaToken.stderr, /allow this instance no SSH login/);
  });

  test("{{claims.sub}} resolves for a GitHub run too: the certificate's rules name the run's own sub", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    writeFileSync(join(work, "by-sub.yaml"), "kind: role\nmetadata: {name: by-sub}\nspec:\n  allow:\n    logins: [deploy]\n    node_labels: {pipeline: \"{{claims.sub}}\"}\n");
    await mezctlOk(auth, "create", "-f", join(work, "by-sub.yaml"));
    await mezctlOk(auth, "agent-identities", "add", "--name=ci-sub", "--roles=by-sub");
    writeFileSync(join(work, "jt-sub.yaml"), `kind: join_token\nmetadata:\n  name: by-sub\nspec:\n  agent_identity: ci-sub\n  join_method: github\n  github:\n    enterprise_server_host: "${new URL(issuer.origin).host}"\n    allow:\n      - repository: acme/webapp\n`);
    await mezctlOk(auth, "create", "-f", join(work, "jt-sub.yaml"));
    issuer.githubClaims = { repository: "acme/webapp", repository_owner: "acme", run_id: "701", sub: "repo:acme/webapp:environment:staging" };
    const dest = join(work, "run-sub");
    const r = await pipelineRun(dest, "by-sub");
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(certOf(dest).extensions["mezite-role-rules@mezite"]!)[0].allow.labels, { pipeline: ["repo:acme/webapp:environment:staging"] });
  });

  test("mezctl create -f refuses templates that name no known claim syntax, or a claim no join records", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const cases: [string, RegExp][] = [
      ["{{claim.environment}}", /is not a valid template: write \{\{claims\.NAME\}\}/],
      ["{{claims.}}", /is not a valid template/],
      ["deploy-{{claims.environment}", /is not a valid template/],
      ["{{claims.enviroment}}", /\{\{claims\.enviroment\}\} names a claim no join records \(known: .*environment/],
    ];
    for (const [login, re] of cases) {
      const file = join(work, "bad-template.yaml");
      writeFileSync(file, DEPLOY_ENV_ROLE.replace("deploy-env", "bad-template").replace("deploy-{{claims.environment}}", login));
      const r = await mezctl(auth, "create", "-f", file);
      assert.equal(r.code, 2, `${login}: ${r.stderr}`);
      assert.match(r.stderr, re, login);
      assert.equal(r.stderr.trim().split("\n").length, 1, "one line");
    }
    const r = await mezctl(auth, "get", "role/bad-template");
    assert.notEqual(r.code, 0, "nothing was created");
  });

  test("force_command: the certificate runs only that command; ssh-keygen -L shows the options", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dest = await joinWithRole("reporter", "forced");
    const r = await ssh(dest, nodes["staging"]!, "deploy", "id");
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "forced-by-role\n", "sshd ran the forced command, not id");
    const shown = spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", join(dest, "ssh_cert")], { encoding: "utf8" }).stdout;
    assert.match(shown, /Critical Options: \n\s+force-command echo forced-by-role\n\s+Extensions: \n/);
    assert.match(shown, /Extensions: \n(\s+mezite-\S+ .*\n){3}\s+permit-pty\n$/, "only permit-pty of the standard extensions, sorted after the mezite ones");

    // The KRL still catches it: a lock, the node's revocation sync, and sshd refuses it.
    await mezctlOk(auth, "agent-identities", "lock", "reporter", "--reason=test");
    const agent = new NodeAgent({ sshDir: nodes["staging"]!.dir, authServer: undefined, advertiseAddr: "", ...NODE_DEFAULTS }, { log: silentLogger });
    await agent.syncRevocations();
    assert.match(spawnSync(SSH_KEYGEN_PATH!, ["-Q", "-f", join(nodes["staging"]!.dir, "revoked.krl"), join(dest, "ssh_cert")], { encoding: "utf8" }).stdout, /REVOKED/);
    const locked = await ssh(dest, nodes["staging"]!, "deploy", "id");
    assert.notEqual(locked.code, 0);
    assert.match(locked.stderr, /Permission denied/);
  });

  test("source_address: a certificate for 10.0.0.0/8 is refused from 127.0.0.1; one that includes it works", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const staging = nodes["staging"]!;
    const far = await joinWithRole("far-away", "elsewhere");
    assert.equal(await loginAs(far, staging, "deploy"), false);
    assert.match(sshdLog(staging), /not from a permitted source address/);
    const near = await joinWithRole("nearby", "loopback");
    assert.equal(await loginAs(near, staging, "deploy"), true);
    assert.match(spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", join(near, "ssh_cert")], { encoding: "utf8" }).stdout, /source-address 127\.0\.0\.0\/8,10\.0\.0\.0\/8/);

    // Two roles with no address in common: no certificate, said at add.
    const add = await mezctl(auth, "agent-identities", "add", "--name=nowhere", "--roles=elsewhere,loopback,forced");
    assert.equal(add.code, 0, "elsewhere and loopback overlap in 10.0.0.0/8");
    const both = await mezctl(auth, "agent-identities", "add", "--name=clash", "--roles=elsewhere,forced");
    assert.equal(both.code, 0, both.stderr);
    writeFileSync(join(work, "forced2.yaml"), optionsRole("forced-other", `{force_command: "id"}`));
    await mezctlOk(auth, "create", "-f", join(work, "forced2.yaml"));
    const clash = await mezctl(auth, "agent-identities", "add", "--name=two-commands", "--roles=forced,forced-other");
    assert.notEqual(clash.code, 0);
    assert.match(clash.stderr, /roles \[forced, forced-other\] force different commands/);
  });

  test("port forwarding (ssh -L) is refused by default and allowed when the role permits it", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const staging = nodes["staging"]!;
    const plain = await joinWithRole("plain-ci", "plain");
    const tunnel = await joinWithRole("tunnel-ci", "tunnel");
    assert.equal(await forwardedBanner(plain, staging), "", "sshd refused the forwarded connection");
    assert.match(sshdLog(staging), /refused local port forward/);
    assert.match(await forwardedBanner(tunnel, staging), /^SSH-2\.0-OpenSSH/, "the tunnel reached the node's own sshd");
    assert.match(spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", join(tunnel, "ssh_cert")], { encoding: "utf8" }).stdout, /\n\s+permit-port-forwarding\n\s+permit-pty\n/);
    // Remote forwarding is the same permission: ExitOnForwardFailure makes ssh exit on its refusal.
    const r = await ssh(plain, staging, "deploy", "true", ["-N", "-R", `${await freePort()}:127.0.0.1:22`, "-o", "ExitOnForwardFailure=yes"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /remote port forwarding failed/);
  });
});

/**
 * `ssh -N -L PORT:127.0.0.1:SSHD` with the destination's outputs, then one connection through the
 * forward: returns what came back (the node's sshd banner when forwarding works, "" when refused).
 */
async function forwardedBanner(dest: string, node: Node): Promise<string> {
  const local = await freePort();
  const child = spawn(SSH_PATH!, [
    "-F", "/dev/null", "-N", "-p", String(node.sshd.port), "-l", "deploy",
    "-i", join(dest, "ssh_key"), "-o", `CertificateFile=${join(dest, "ssh_cert")}`,
    "-o", `UserKnownHostsFile=${join(dest, "ssh_known_hosts")}`, "-o", `HostKeyAlias=${node.name}`, "-o", "StrictHostKeyChecking=yes",
    "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
    "-o", "KexAlgorithms=curve25519-sha256",
    "-L", `${local}:127.0.0.1:${node.sshd.port}`, "127.0.0.1",
  ], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  try {
    // Wait for the forward to listen (ssh binds it after authenticating).
    const deadline = Date.now() + 15_000;
    let sock: Socket | undefined;
    while (!sock) {
      assert.ok(Date.now() < deadline, `ssh -L never listened: ${stderr}`);
      assert.equal(child.exitCode, null, `ssh -L exited: ${stderr}`);
      sock = await new Promise<Socket | undefined>((ok) => {
        const s = createConnection({ host: "127.0.0.1", port: local });
        s.once("connect", () => ok(s));
        s.once("error", () => ok(undefined));
      });
      if (!sock) await new Promise((ok) => setTimeout(ok, 50));
    }
    // The banner arrives at once when the channel opens; a refused channel closes the connection.
    return await new Promise<string>((ok) => {
      let got = "";
      const timer = setTimeout(() => (sock!.destroy(), ok(got)), 10_000);
      sock!.setEncoding("utf8");
      sock!.on("data", (d: string) => {
        got += d;
        if (got.includes("\n")) {
          clearTimeout(timer);
          sock!.destroy();
          ok(got);
        }
      });
      sock!.once("close", () => (clearTimeout(timer), ok(got)));
    });
  } finally {
    child.kill("SIGTERM");
  }
}
