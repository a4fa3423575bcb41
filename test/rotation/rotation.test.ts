/**
 * CA rotation end to end (SPEC §15) with real components: one auth service (restarted once in
 * the middle of a rotation), a node run by `mezd node start` behind a real sshd, and a real
 * identity daemon in continuous mode. A login over ssh as deploy runs once a second through
 * every phase of a User CA rotation (manual), a Host CA rotation (automatic) and a rollback, and
 * must never fail; the old keys must stop working at the end.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ROOT, SEED_ROLE, mezctlOk, run, startAuth, type AuthProcess } from "../harness/auth.js";
import { freePort } from "../harness/net.js";
import { missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { sshRun, type Sshd } from "../harness/sshd.js";
import { killDaemons, seedSsh } from "../identity/fixture.js";
import {
  AS_NODE, LoginLoop, caStatus, keepAside, loginWith, manualStep, report, signingCa, startLoginLoop, startOldHostSshd, startRotationAgent, startRotationNode, until,
  type RotationAgent, type RotationNode,
} from "./fixture.js";

const MSH = join(ROOT, "bin/msh");
const missing = sshdTestsCannotRun();
let work: string;
let auth: AuthProcess;
let diagPort: number;
let node: RotationNode;
let agent: RotationAgent;
let loop: LoginLoop;
let oldHost: Sshd | undefined;
const bed = () => ({ agent, node, loop });

describe("CA rotation with real sshd, node agent and identity daemon", () => {
  before(async () => {
    if (missing) return; // each test says so (missingComponent): loudly, and as a failure under CI
    work = mkdtempSync(join(tmpdir(), "mezite-rotation-"));
    diagPort = await freePort();
    auth = await startAuth({ extraArgs: [`--diag-addr=127.0.0.1:${diagPort}`] });
    writeFileSync(join(work, "role.yaml"), SEED_ROLE);
    await mezctlOk(auth, "create", "-f", join(work, "role.yaml"));
    node = await startRotationNode(auth, work, auth.addr, auth.addr);
    agent = await startRotationAgent(auth, work, auth.addr);
    loop = await startLoginLoop(agent, node);
  });

  after(async () => {
    await loop?.stop();
    killDaemons();
    await oldHost?.stop();
    await node?.stop();
    await auth?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("User CA, manual phases: every login works, the agent's certificates move to the new key, an old certificate is refused within 10 s", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const kept = keepAside(agent.dest, join(work, "kept-user"));
    assert.equal((await loginWith(kept, agent.dest, node.sshd.port)).code, 0, "the kept-aside certificate works before the rotation");
    const oldKey = signingCa(join(agent.dest, "ssh_cert"));

    await manualStep(bed(), auth, "user", "init");
    assert.equal(signingCa(join(agent.dest, "ssh_cert")), oldKey, "init still signs with the old key");
    assert.equal(readFileSync(join(node.dir, "user_ca.pub"), "utf8").trim().split("\n").length, 2, "nodes trust both keys from init");
    await manualStep(bed(), auth, "user", "update_clients");
    const [user] = await caStatus(auth);
    const next = user!.keys.find((k) => k.role === "next")!;
    assert.deepEqual([user!.phase, next.signing, next.holders, user!.holders_total], ["update_clients", true, 1, 1], "ca status: the agent holds a certificate of the new key");
    assert.equal(signingCa(join(agent.dest, "ssh_cert")), next.ssh_fingerprint);
    // The old key's output certificate still reads what it may (msh ls) while the old key is trusted.
    const mshLs = () => run(MSH, ["ls", `--identity-dir=${kept.dir}`, `--storage-dir=${join(agent.dest, ".mezite")}`]);
    const listed = await mshLs();
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /web-server-01/);
    await manualStep(bed(), auth, "user", "update_servers");
    await manualStep(bed(), auth, "user", "standby");
    const ended = Date.now();

    const [after] = await caStatus(auth);
    assert.deepEqual(after!.keys.map((k) => [k.ssh_fingerprint, k.signing, k.holders]), [[next.ssh_fingerprint, true, 1]]);
    assert.equal(readFileSync(join(node.dir, "user_ca.pub"), "utf8").trim().split("\n").length, 1);
    const { ms } = await until("the old User CA's certificate refused", 10_000, async () => {
      const r = await loginWith(kept, agent.dest, node.sshd.port);
      if (r.code === 0) return undefined;
      assert.match(r.stderr, /Permission denied/, r.stderr);
      return true;
    });
    report(`old User CA certificate refused by sshd ${Date.now() - ended} ms after standby (${ms} ms of probing)`);
    assert.notEqual((await mshLs()).code, 0, "the old key's output certificate is refused after standby");
    report(`logins so far: ${loop.attempts}, failed: ${loop.failures.length}`);
    assert.deepEqual(loop.failures, []);
  });

  test("Host CA, automatic over 30 s with the auth service restarted mid-rotation: every login works, the old host certificate is refused", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    oldHost = await startOldHostSshd(node, work);
    const probeOldHost = () => sshRun({ port: oldHost!.port, user: "deploy", keyPath: join(agent.dest, "ssh_key"), certPath: join(agent.dest, "ssh_cert"), knownHostsPath: join(agent.dest, "ssh_known_hosts"), command: "true", extraOptions: ["-o", "HostKeyAlias=web-server-01"] });
    // Before: the old host certificate passes the agent's known hosts (this sshd trusts no user, so the login itself is refused).
    assert.match((await probeOldHost()).stderr, /Permission denied/);

    loop.phase = "host init (automatic)";
    await mezctlOk(auth, "ca", "rotate", "--type=host", "--grace-period=30s", "--force");
    const phaseOf = async () => (await caStatus(auth)).find((c) => c.type === "host")!.phase;
    await until("host update_clients", 15_000, async () => ((await phaseOf()) === "update_clients" ? true : undefined));
    loop.phase = "host update_clients (automatic), auth service restarted";
    await auth.kill9();
    await auth.restart();
    report("auth service killed and restarted during host update_clients");
    const metrics = await (await fetch(`http://127.0.0.1:${diagPort}/metrics`)).text();
    assert.match(metrics, /^mezite_ca_rotation_phase\{ca="host",phase="update_clients"\} 1$/m, "the restarted service continues the rotation, and /metrics shows it");
    await until("host update_servers", 15_000, async () => ((await phaseOf()) === "update_servers" ? true : undefined));
    loop.phase = "host update_servers (automatic)";
    await until("host standby", 15_000, async () => ((await phaseOf()) === "standby" ? true : undefined));
    loop.phase = "host standby";
    // Both renewed into the final phase: one Host CA key left in what each holds.
    const hostCaKeys = () => [
      readFileSync(join(agent.dest, "ssh_known_hosts"), "utf8").match(/^@cert-authority /gm)?.length,
      (JSON.parse(readFileSync(join(node.dir, "node.json"), "utf8")) as { host_ca_ssh_keys: string[] }).host_ca_ssh_keys.length,
    ];
    const { ms } = await until("daemon and node on the new Host CA key alone", 20_000, async () => (hostCaKeys().join() === "1,1" ? true : undefined));
    report(`host CA standby: daemon and node renewed into it within ${ms} ms`);
    // An automatic rotation spreads the fleet's renewals over a quarter of a phase: 30 s / 3 / 4.
    assert.match(agent.daemon.output(), /"msg":"CA rotation phase changed; renewing","ca_state":"[0-9a-f]+","within_ms":2500/);
    assert.match(node.output(), /"msg":"CA rotation phase changed; renewing the host certificate","ca_state":"[0-9a-f]+","within_ms":2500/);

    const [, host] = await caStatus(auth);
    assert.deepEqual([host!.keys.length, host!.keys[0]!.holders, host!.holders_total], [1, 1, 1], "ca status: the node holds a host certificate of the new key");
    const refused = await probeOldHost();
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /Host key verification failed/, refused.stderr);

    const events = JSON.parse(await mezctlOk(auth, "audit", "ls", "--type=ca.rotation", "--format=json")) as { detail: string; actor: string }[];
    const host4 = events.filter((e) => e.detail.startsWith("Host CA"));
    assert.deepEqual(host4.map((e) => e.detail.split(" (")[0]), ["Host CA: standby -> init", "Host CA: init -> update_clients", "Host CA: update_clients -> update_servers", "Host CA: update_servers -> standby"]);
    assert.deepEqual(host4.map((e) => e.actor === "automatic rotation"), [false, true, true, true]);
    report(`logins so far: ${loop.attempts}, failed: ${loop.failures.length}`);
    assert.deepEqual(loop.failures, []);
  });

  test("a rollback from update_servers restores certificates of the old key and never breaks a login", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const before = signingCa(join(agent.dest, "ssh_cert"));
    for (const phase of ["init", "update_clients", "update_servers"]) await manualStep(bed(), auth, "user", phase);
    assert.notEqual(signingCa(join(agent.dest, "ssh_cert")), before);
    await manualStep(bed(), auth, "user", "rollback");
    assert.equal(signingCa(join(agent.dest, "ssh_cert")), before, "rollback signs with the old key again");
    await manualStep(bed(), auth, "user", "standby");
    const [user] = await caStatus(auth);
    assert.deepEqual(user!.keys.map((k) => [k.ssh_fingerprint, k.holders]), [[before, 1]]);
    assert.equal((await seedSsh(agent.dest, node.sshd.port, "root", AS_NODE)).code !== 0, true, "root is still refused");
    report(`logins in all: ${loop.attempts}, failed: ${loop.failures.length}`);
    assert.deepEqual(loop.failures, []);
    assert.ok(loop.attempts >= 40, `the loop ran ${loop.attempts} logins`);
  });
});
