/**
 * Nodes end to end with the real pieces: `bin/mezd auth start`, `bin/mezctl`, `bin/mezd node
 * join|start|principals`, and two stock sshd processes that Include the generated snippet. Agent
 * identities join through src/identity/protocol.ts and log in with the stock ssh client, which
 * checks the node's host certificate through @cert-authority with StrictHostKeyChecking=yes.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { once } from "node:events";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { NodeService } from "../../src/api/gen/mezite/v1/node_pb.js";
import { connect } from "../../src/api/client.js";
import { parseToken } from "../../src/ca/jointoken.js";
import { krlContentVersion } from "../../src/ca/krl.js";
import { parseSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { encodeOpenSSHPrivateKey, formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { buildJoinRequest, generateIssueKeys, verifyJoinReply } from "../../src/identity/protocol.js";
import { silentLogger } from "../../src/lib/log.js";
import { NODE_DEFAULTS, NodeAgent } from "../../src/node/agent.js";
import { readNodeConfig, readNodeTls } from "../../src/node/layout.js";
import { renderKnownHosts } from "../../src/identity/outputs.js";
import { MEZD, SEED_ROLE, mezctlOk, principalsMezd, run, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";

const PRINCIPALS_MEZD = principalsMezd();
import { SSH_KEYGEN_PATH, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, sshRun, startSshd, type Sshd } from "../harness/sshd.js";

const ALL_NODES_ROLE = `kind: role
metadata:
  name: all-nodes
spec:
  allow:
    node_labels:
      '*': '*'
    logins: [deploy]
`;

const missing = sshdTestsCannotRun();

interface Agent {
  name: string;
  keyPath: string;
  certPath: string;
  cert: string;
}
interface Node {
  name: string;
  dir: string;
  sshd: Sshd;
  joinOut: string;
}

let work: string;
let auth: AuthProcess;
let knownHosts: string;
const agents: Record<string, Agent> = {};
const nodes: Record<string, Node> = {};
const figures: string[] = [];
const report = (line: string) => {
  figures.push(line);
  process.stdout.write(`# ${line}\n`);
};

async function addAgent(name: string, role: string): Promise<Agent> {
  const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=${name}`, `--roles=${role}`));
  const keys = generateIssueKeys();
  const { request, macKey } = buildJoinRequest(parseToken(token), keys, 3_600_000);
  const certs = verifyJoinReply(request, await connect(JoinService, auth.addr, {}).join(request), macKey, keys);
  const dir = join(work, `agent-${name}`);
  mkdirSync(dir);
  const a = { name, keyPath: join(dir, "ssh_key"), certPath: join(dir, "ssh_cert"), cert: certs.sshCertificate };
  writeFileSync(a.keyPath, encodeOpenSSHPrivateKey(keys.ssh), { mode: 0o600 });
  writeFileSync(a.certPath, `${certs.sshCertificate}\n`);
  knownHosts ??= join(work, "known_hosts");
  writeFileSync(knownHosts, certs.hostCaSshKeys.map((k) => `@cert-authority * ${k}\n`).join(""));
  return a;
}

function joinArgs(token: string, name: string, dir: string): string[] {
  return ["node", "join", `--auth-server=${auth.addr}`, `--token=${token}`, `--hostname=${name}`, `--principals=${name}.test.mezite`, `--ssh-dir=${dir}`, `--mezd-path=${PRINCIPALS_MEZD}`];
}

async function addNode(name: string, labels: string): Promise<Node> {
  const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", `--labels=${labels}`));
  const dir = join(work, `node-${name}`);
  const r = await run(MEZD, joinArgs(token, name, dir));
  assert.equal(r.code, 0, r.stderr);
  const sshdDir = join(work, `sshd-${name}`);
  mkdirSync(sshdDir);
  // The harness adds Port, ListenAddress, PidFile and its defaults after our Include (first value wins).
  const sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(dir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(dir, "sshd_config")}`] });
  return { name, dir, sshd, joinOut: r.stdout };
}

async function login(a: Agent, n: Node, user = "deploy"): Promise<boolean> {
  // Every test node listens on 127.0.0.1, and a name belongs to one node: ssh checks the host
  // certificate against the node's name, as it would with that name in DNS.
  const r = await sshRun({ port: n.sshd.port, user, keyPath: a.keyPath, certPath: a.certPath, knownHostsPath: knownHosts, command: "whoami", extraOptions: ["-o", `HostKeyAlias=${n.name}`] });
  if (r.code === 0) assert.equal(r.stdout, `${user}\n`);
  else assert.match(r.stderr, /Permission denied/, r.stderr); // refused by sshd, not a broken host cert
  return r.code === 0;
}

/** Logs in until the answer is `want`; the time it took from `since`. */
async function until(want: boolean, a: Agent, n: Node, since: number, limitMs = 10_000): Promise<number> {
  for (;;) {
    if ((await login(a, n)) === want) return Date.now() - since;
    assert.ok(Date.now() - since < limitMs, `${a.name} still ${want ? "refused" : "admitted"} on ${n.name} after ${limitMs} ms`);
  }
}

async function stopAgent(agent: ChildProcess, log: () => string): Promise<void> {
  const exited = new Promise<number | null>((res) => agent.once("exit", (code) => res(code)));
  agent.kill("SIGTERM");
  assert.equal(await exited, 0, log());
  assert.match(log(), /"msg":"stopped"/);
}

/** Like Promise.all, but waits for every setup step, so none still runs while `after` cleans up. */
async function settled<T>(steps: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(steps);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

const principals = (dir: string, user: string, cert: string) => run(MEZD, ["node", "principals", `--ssh-dir=${dir}`, user, cert]);
const b64 = (certLine: string) => certLine.split(" ")[1]!;
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

describe("nodes: stock sshd enforces roles, locks and deletions", () => {
  before(async () => {
    if (missing) return; // each test says so loudly (and fails under CI)
    work = mkdtempSync(join(tmpdir(), "mezite-node-"));
    chmodSync(work, 0o755); // the principals command runs as nobody and must reach the ssh dirs
    ensureUser("deploy");
    auth = await startAuth();
    writeFileSync(join(work, "seed.yaml"), SEED_ROLE);
    writeFileSync(join(work, "all.yaml"), ALL_NODES_ROLE);
    await Promise.all([mezctlOk(auth, "create", "-f", join(work, "seed.yaml")), mezctlOk(auth, "create", "-f", join(work, "all.yaml"))]);
    const [ci, ci2, ops] = await settled([addAgent("ci", "ci-deployer"), addAgent("ci2", "ci-deployer"), addAgent("ops", "all-nodes")]);
    Object.assign(agents, { ci, ci2, ops });
    const [staging, dev] = await settled([addNode("staging-01", "env=staging"), addNode("dev-01", "env=dev")]);
    Object.assign(nodes, { staging, dev });
  });

  after(async () => {
    await Promise.all(Object.values(nodes).map((n) => n.sshd.stop()));
    await auth?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
    if (figures.length) process.stdout.write(`# figures:\n${figures.map((f) => `#   ${f}\n`).join("")}`);
  });

  test("join writes the ssh dir: modes, host certificate, an empty valid KRL, the snippet", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const { dir, joinOut } = nodes["staging"]!;
    const mode = (f: string) => (lstatSync(join(dir, f)).mode & 0o777).toString(8);
    assert.equal(mode("."), "755");
    for (const f of ["ssh_host_ed25519_key", "node_tls.json"]) assert.equal(mode(f), "600", f);
    for (const f of ["ssh_host_ed25519_key-cert.pub", "user_ca.pub", "revoked.krl", "revoked_locks.json", "node.json", "sshd_config"]) assert.equal(mode(f), "644", f);
    const cert = spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", join(dir, "ssh_host_ed25519_key-cert.pub")], { encoding: "utf8" }).stdout;
    assert.match(cert, /host certificate/);
    assert.match(cert, /Principals: \n\s+staging-01\n\s+staging-01\.test\.mezite\n\s+Critical/);
    const q = spawnSync(SSH_KEYGEN_PATH!, ["-Q", "-f", join(dir, "revoked.krl"), agents["ci"]!.certPath], { encoding: "utf8" });
    assert.equal(q.status, 0, q.stdout + q.stderr);
    assert.match(q.stdout, /: ok$/m);
    const snippet = readFileSync(join(dir, "sshd_config"), "utf8");
    assert.match(snippet, new RegExp(`^AuthorizedPrincipalsCommand ${PRINCIPALS_MEZD} node principals --ssh-dir=${dir} %u %k$`, "m"));
    assert.match(snippet, /^AuthorizedPrincipalsCommandUser nobody$/m);
    for (const k of ["HostKey", "HostCertificate", "TrustedUserCAKeys", "RevokedKeys"]) assert.match(snippet, new RegExp(`^${k} ${dir}/`, "m"));
    assert.match(joinOut, new RegExp(`^  Include ${dir}/sshd_config$`, "m"));
    assert.deepEqual(JSON.parse(readFileSync(join(dir, "node.json"), "utf8")).labels, { env: "staging" });
    assert.doesNotMatch(joinOut, /Warning/);
  });

  test("a used token is refused; a symlink in the ssh dir and a wrong --ca-pin are refused and keep the token", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=x"));
    const dir = join(work, "node-symlinked");
    mkdirSync(dir);
    symlinkSync("/etc/passwd", join(dir, "user_ca.pub"));
    const refused = await run(MEZD, joinArgs(token, "sym-01", dir));
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /^mezd: .*user_ca\.pub is a symlink/);
    rmSync(join(dir, "user_ca.pub"));
    const wrongPin = await run(MEZD, [...joinArgs(token, "sym-01", dir), `--ca-pin=sha256:${"0".repeat(64)}`]);
    assert.equal(wrongPin.code, 3, `a server that is not the pinned cluster is not worth retrying: ${wrongPin.stderr}`);
    assert.match(wrongPin.stderr, /not signed by the pinned CA/);
    const pin = /"ca_pin":"(sha256:[0-9a-f]{64})"/.exec(auth.output())![1]!;
    const joined = await run(MEZD, [...joinArgs(token, "sym-01", dir), `--ca-pin=${pin}`]);
    assert.equal(joined.code, 0, joined.stderr);
    const again = await run(MEZD, joinArgs(token, "sym-02", join(work, "node-again")));
    assert.equal(again.code, 3, again.stderr);
    assert.equal(again.stderr.split("\n").length, 2, again.stderr);
    for (const f of readdirSync(dir)) assert.ok(!readFileSync(join(dir, f), "latin1").includes(token), `${f} holds the token`);

    // A second join into that joined node's dir is refused before the token is spent (issue 24):
    // without --force it would silently make this machine another node.
    const second = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=x"));
    const hostKey = readFileSync(join(dir, "ssh_host_ed25519_key"), "latin1");
    const rejoin = await run(MEZD, joinArgs(second, "sym-03", dir));
    assert.equal(rejoin.code, 2, rejoin.stderr);
    assert.equal(rejoin.stderr.trim(), `mezd: ${dir} already holds joined node "sym-01": run mezd node start with it, or join into another --ssh-dir (--force makes this machine a new node there)`);
    assert.equal(readFileSync(join(dir, "ssh_host_ed25519_key"), "latin1"), hostKey, "the joined node's files are untouched");
    const forced = await run(MEZD, [...joinArgs(second, "sym-03", dir), "--force"]);
    assert.equal(forced.code, 0, `the refused join kept the token, and --force joins: ${forced.stderr}`);
    assert.match(readFileSync(join(dir, "node.json"), "utf8"), /"name": "sym-03"/);
  });

  test("roles decide who logs in where; root never", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const { ci, ops } = agents as Record<string, Agent>;
    const { staging, dev } = nodes as Record<string, Node>;
    const results = await Promise.all([
      login(ci!, staging!), login(ci!, dev!), login(ci!, staging!, "root"), login(ci!, dev!, "root"),
      login(ops!, staging!), login(ops!, dev!), login(ops!, staging!, "root"), login(ops!, dev!, "root"),
    ]);
    assert.deepEqual(results, [true, false, false, false, true, true, false, false]);
  });

  test("the principals command refuses other CAs, expired and tampered certificates, and garbage", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dir = nodes["staging"]!.dir;
    const real = parseSshCertificate(agents["ci2"]!.cert);
    const ok = await principals(dir, "deploy", b64(agents["ci2"]!.cert));
    assert.deepEqual([ok.code, ok.stdout], [0, "deploy\n"]);

    const now = Math.floor(Date.now() / 1000);
    const fields = { ...real, validAfter: now - 7200, validBefore: now + 3600 };
    const rogue = generateKeyPairSync("ed25519");
    const fromOtherCa = signSshCertificate(fields, rogue.privateKey).toString("base64");
    const tampered = Buffer.from(real.blob);
    tampered.write("productiom", tampered.indexOf("production"), "latin1");
    // Expired: a dir that trusts a CA of ours, so the certificate is valid in every other way.
    const expiredDir = join(work, "node-expired");
    mkdirSync(expiredDir);
    for (const f of ["node.json", "revoked_locks.json"]) writeFileSync(join(expiredDir, f), readFileSync(join(dir, f)));
    writeFileSync(join(expiredDir, "user_ca.pub"), `${formatAuthorizedKey(rogue.publicKey)}\n`);
    const expired = signSshCertificate({ ...fields, validBefore: now - 60 }, rogue.privateKey).toString("base64");
    assert.equal((await principals(expiredDir, "deploy", fromOtherCa)).stdout, "deploy\n"); // the control: only expiry differs

    const cases: [string, string, string, RegExp][] = [
      ["another CA", dir, fromOtherCa, /not signed by this cluster's User CA/],
      ["expired", expiredDir, expired, /expired/],
      ["tampered extension", dir, tampered.toString("base64"), /signature does not verify/],
      ["garbage", dir, "not base64 at all", /not an Ed25519 OpenSSH certificate/],
      ["empty", dir, "", /expected exactly two arguments/],
      ["truncated", dir, b64(agents["ci2"]!.cert).slice(0, 200), /not an Ed25519 OpenSSH certificate/],
      ["an RSA key", dir, "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7", /not an Ed25519 OpenSSH certificate/],
    ];
    for (const [what, d, c, why] of cases) {
      const r = await principals(d, "deploy", c);
      assert.deepEqual([r.code, r.stdout], [0, ""], what);
      assert.match(r.stderr, why, what);
      assert.equal(r.stderr.split("\n").length, 2, `${what}: one line, no stack: ${r.stderr}`);
    }

    // Wall time per call as sshd sees it: the whole process, twice per login.
    const times: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = process.hrtime.bigint();
      const r = await principals(dir, "deploy", b64(agents["ci2"]!.cert));
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      assert.equal(r.stdout, "deploy\n");
    }
    report(`principals wall time over 50 calls: median ${median(times).toFixed(1)} ms, min ${Math.min(...times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms`);
  });

  test("node start: heartbeats, and lock, unlock and rm reach sshd within 10 s", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const { ci, ci2 } = agents as Record<string, Agent>;
    const staging = nodes["staging"]!;
    const started = Date.now();
    const agent = spawn(MEZD, ["node", "start", `--ssh-dir=${staging.dir}`, `--auth-server=${auth.addr}`, "--diag-addr=127.0.0.1:0"], { stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    agent.stderr!.on("data", (d: Buffer) => (log += d.toString()));
    t.after(() => agent.kill("SIGKILL"));

    // The join itself counts as a heartbeat: only one after the agent started is the agent's.
    for (let seen = false; !seen; ) {
      const list = JSON.parse(await mezctlOk(auth, "--format=json", "nodes", "ls")) as { name: string; address: string; last_heartbeat: string; labels: Record<string, string> }[];
      const n = list.find((x) => x.name === "staging-01");
      seen = n !== undefined && n.address !== "" && Date.parse(n.last_heartbeat) >= started;
      if (seen) assert.deepEqual(n!.labels, { env: "staging" });
      assert.equal(agent.exitCode, null, log);
    }
    while (!/"diagnostics listening"/.test(log)) await once(agent.stderr!, "data");
    const port = Number(/"diagnostics listening","port":(\d+)/.exec(log)?.[1]);
    for (let ready = false; !ready; ) ready = (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200;

    await mezctlOk(auth, "agent-identities", "lock", "ci", "--reason=test");
    let since = Date.now();
    const lockMs = await until(false, ci!, staging, since);
    assert.equal(await login(ci2!, staging), true, "another identity still logs in");
    report(`lock -> ci refused after ${lockMs} ms (from mezctl returning)`);
    assert.match(spawnSync(SSH_KEYGEN_PATH!, ["-Q", "-f", join(staging.dir, "revoked.krl"), ci!.certPath], { encoding: "utf8" }).stdout, /REVOKED/);
    assert.ok(JSON.parse(readFileSync(join(staging.dir, "revoked_locks.json"), "utf8")).identity_ids.length === 1);

    await mezctlOk(auth, "agent-identities", "unlock", "ci");
    since = Date.now();
    report(`unlock -> ci admitted after ${await until(true, ci!, staging, since)} ms`);

    await mezctlOk(auth, "agent-identities", "rm", "ci");
    since = Date.now();
    report(`rm -> ci refused after ${await until(false, ci!, staging, since)} ms`);
    assert.equal(await login(ci2!, staging), true);

    // Files are replaced only when their content changes, though every KRL the service sends is new.
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /^mezite_node_file_updates_total\{file="krl"\} 3$/m, metrics);
    assert.match(metrics, /^mezite_node_file_updates_total\{file="locks"\} 2$/m, metrics);
    assert.doesNotMatch(metrics, /file="userCa"/);
    await stopAgent(agent, () => log);
  });

  test("a node receives the KRL's bytes only when its content changed; a node that sends no version still gets them", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const staging = nodes["staging"]!;
    const krlPath = join(staging.dir, "revoked.krl");
    const agent = new NodeAgent({ sshDir: staging.dir, authServer: undefined, advertiseAddr: "", ...NODE_DEFAULTS }, { log: silentLogger });
    const received = () => Number(/^mezite_node_krl_received_bytes_total (\d+)$/m.exec(agent.registry.render())?.[1] ?? 0);
    await agent.syncRevocations();
    const first = received();
    // Polls across several of the service's rebuilds (each a new KRL header, the same content).
    for (const end = Date.now() + 2_500; Date.now() < end; ) assert.equal(await agent.syncRevocations(), false);
    assert.equal(received(), first, "polls of an unchanged KRL receive no KRL bytes");

    // What an older node asks (no version), and what this one asks, straight over its mTLS.
    const tls = readNodeTls(staging.dir);
    const client = connect(NodeService, auth.addr, { certPem: tls.cert_pem, keyPem: tls.key_pem, caPem: readNodeConfig(staging.dir).tls_ca_pem });
    const held = readFileSync(krlPath);
    const old = await client.getRevocations({});
    assert.deepEqual(Buffer.from(old.krl).subarray(28), held.subarray(28), "a node sending no version gets the whole KRL");
    assert.equal((await client.getRevocations({ krlVersion: krlContentVersion(held) })).krl.length, 0);

    await mezctlOk(auth, "agent-identities", "lock", "ops", "--reason=test");
    const deadline = Date.now() + 10_000;
    while (!(await agent.syncRevocations())) assert.ok(Date.now() < deadline, "the lock reached the node");
    const locked = readFileSync(krlPath);
    assert.ok(locked.length > held.length);
    assert.equal(received(), first + locked.length, "the changed KRL, once");
    await mezctlOk(auth, "agent-identities", "unlock", "ops");
    while (readFileSync(krlPath).length !== held.length) await agent.syncRevocations();
    assert.equal(await login(agents["ops"]!, staging), true);
  });

  test("renewal at half life replaces the host certificate and TLS certificate; sshd serves the new one", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dev = nodes["dev"]!;
    const certPath = join(dev.dir, "ssh_host_ed25519_key-cert.pub");
    const before = parseSshCertificate(readFileSync(certPath, "utf8"));
    const now = () => Date.now();
    const fresh = new NodeAgent({ sshDir: dev.dir, authServer: undefined, advertiseAddr: "", ...NODE_DEFAULTS }, { log: silentLogger, now });
    assert.equal(await fresh.renewIfDue(), false, "a new certificate is not due");
    const halfLife = (before.validBefore - before.validAfter) * 500;
    const later = new NodeAgent({ sshDir: dev.dir, authServer: undefined, advertiseAddr: "", ...NODE_DEFAULTS }, { log: silentLogger, now: () => now() + halfLife + 60_000 });
    assert.equal(await later.renewIfDue(), true);
    const after = parseSshCertificate(readFileSync(certPath, "utf8"));
    assert.notEqual(after.serial, before.serial);
    assert.deepEqual(after.principals, before.principals);
    await later.heartbeat(); // over mTLS with the renewed TLS certificate
    const ops = agents["ops"]!;
    const r = await sshRun({ port: dev.sshd.port, user: "deploy", keyPath: ops.keyPath, certPath: ops.certPath, knownHostsPath: knownHosts, command: "whoami", extraOptions: ["-o", "LogLevel=DEBUG1", "-o", `HostKeyAlias=${dev.name}`] });
    assert.equal(r.stdout, "deploy\n");
    assert.match(r.stderr, new RegExp(`Server host certificate: .*serial ${after.serial} `));
  });

  test("nodes rm: from their next renewal, agents' ssh_known_hosts refuse the removed node's host key", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dev = nodes["dev"]!;
    const ops = agents["ops"]!;
    assert.equal(await login(ops, dev), true);
    await mezctlOk(auth, "nodes", "rm", dev.name);
    // What a daemon writes after its next renewal (a join here: the same certificates reply).
    const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add-token", "ops"));
    const keys = generateIssueKeys();
    const { request, macKey } = buildJoinRequest(parseToken(token), keys, 3_600_000);
    const certs = verifyJoinReply(request, await connect(JoinService, auth.addr, {}).join(request), macKey, keys);
    const revokedHosts = join(work, "known_hosts_after_rm");
    writeFileSync(revokedHosts, renderKnownHosts(certs.hostCaSshKeys, certs.revokedHostKeys));
    assert.match(readFileSync(revokedHosts, "utf8"), /^@revoked \* ssh-ed25519 /m);
    const r = await sshRun({ port: dev.sshd.port, user: "deploy", keyPath: ops.keyPath, certPath: ops.certPath, knownHostsPath: revokedHosts, command: "whoami", extraOptions: ["-o", `HostKeyAlias=${dev.name}`] });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /REVOKED HOST KEY|revoked/i);
    const staging = nodes["staging"]!;
    const still = await sshRun({ port: staging.sshd.port, user: "deploy", keyPath: ops.keyPath, certPath: ops.certPath, knownHostsPath: revokedHosts, command: "whoami", extraOptions: ["-o", `HostKeyAlias=${staging.name}`] });
    assert.equal(still.stdout, "deploy\n", "other nodes are unaffected");
    // The removed node's agent stops at once, with one line and exit 3: retrying cannot help.
    const agent = await run(MEZD, ["node", "start", `--ssh-dir=${dev.dir}`, `--auth-server=${auth.addr}`], { timeoutMs: 20_000 });
    assert.equal(agent.code, 3, agent.stderr);
    assert.match(agent.stderr, new RegExp(`^mezd: node "${dev.name}" was removed or replaced: join it again with a new node token$`, "m"));
  });

  test("with the auth service down, logins keep working and node start keeps the files", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const staging = nodes["staging"]!;
    const files = ["revoked.krl", "revoked_locks.json", "user_ca.pub"].map((f) => readFileSync(join(staging.dir, f)));
    await auth.kill9();
    const agent = spawn(MEZD, ["node", "start", `--ssh-dir=${staging.dir}`], { stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    agent.stderr!.on("data", (d: Buffer) => (log += d.toString()));
    t.after(() => agent.kill("SIGKILL"));
    assert.equal(await login(agents["ops"]!, staging), true);
    assert.equal(await login(agents["ci"]!, staging), false);
    while (!/revocations failed; keeping the current files/.test(log)) await once(agent.stderr!, "data");
    assert.match(log, /"code":"ERR_UNREACHABLE"/);
    await stopAgent(agent, () => log);
    assert.deepEqual(["revoked.krl", "revoked_locks.json", "user_ca.pub"].map((f) => readFileSync(join(staging.dir, f))), files);
  });
});

test("node start: --advertise-addr must be host:port, refused before anything starts", async () => {
  for (const bad of ["10.0.0.5", "10.0.0.5:22\x1b[2J", "web 01:22", "10.0.0.5:0"]) {
    const r = await run(MEZD, ["node", "start", "--ssh-dir=/nonexistent", `--advertise-addr=${bad}`]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr, "mezd: --advertise-addr must be host:port (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535)\n");
  }
});
