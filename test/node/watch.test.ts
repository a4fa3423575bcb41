/**
 * Node agents on change streams (SPEC §20), with the real pieces: `bin/mezd auth start`, `mezd
 * node join`, a NodeAgent polling only every 10 minutes, and a stock sshd: a lock reaches sshd
 * within 10 s by the stream alone, also after the stream sat idle past the service's idle
 * timeout. A service over its stream caps refuses the stream (RESOURCE_EXHAUSTED) and the agent
 * polls instead, and the lock still arrives.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startAuthService, type AuthService } from "../../src/auth/server.js";
import { Audit } from "../../src/auth/audit.js";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";
import { parseToken } from "../../src/ca/jointoken.js";
import { encodeOpenSSHPrivateKey } from "../../src/ca/sshkey.js";
import { buildJoinRequest, generateIssueKeys, verifyJoinReply } from "../../src/identity/protocol.js";
import { silentLogger } from "../../src/lib/log.js";
import { SEED_ROLE, mezctlOk, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { joinNode as joinNodeInto, revoked, startNodeAgent, waitFor } from "../harness/node-agent.js";
import { missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, sshRun, startSshd, type Sshd } from "../harness/sshd.js";

const missing = sshdTestsCannotRun();
/** Far longer than any wait here: whatever arrives in time came by the stream. */
const NO_POLL_MS = 10 * 60_000;

let work: string;
const figures: string[] = [];
const report = (line: string) => {
  figures.push(line);
  process.stdout.write(`# ${line}\n`);
};

interface Admin {
  addr: string;
  identityPath: string;
}

async function joinAgent(auth: Admin, name: string): Promise<{ keyPath: string; certPath: string }> {
  const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=${name}`, "--roles=ci-deployer"));
  const keys = generateIssueKeys();
  const { request, macKey } = buildJoinRequest(parseToken(token), keys, 3_600_000);
  const certs = verifyJoinReply(request, await connect(JoinService, auth.addr, {}).join(request), macKey, keys);
  const dir = join(work, `agent-${name}`);
  mkdirSync(dir);
  const a = { keyPath: join(dir, "ssh_key"), certPath: join(dir, "ssh_cert") };
  writeFileSync(a.keyPath, encodeOpenSSHPrivateKey(keys.ssh), { mode: 0o600 });
  writeFileSync(a.certPath, `${certs.sshCertificate}\n`);
  writeFileSync(join(dir, "known_hosts"), certs.hostCaSshKeys.map((k) => `@cert-authority * ${k}\n`).join(""));
  return a;
}

const joinNode = (auth: Admin, name: string) => joinNodeInto(auth, name, join(work, `node-${name}`));

before(() => {
  if (missing) return;
  work = mkdtempSync(join(tmpdir(), "mezite-watch-"));
  chmodSync(work, 0o755); // the principals command runs as nobody and must reach the ssh dirs
  ensureUser("deploy");
  writeFileSync(join(work, "seed.yaml"), SEED_ROLE);
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
  if (figures.length) process.stdout.write(`# figures:\n${figures.map((f) => `#   ${f}\n`).join("")}`);
});

describe("node agents on change streams", () => {
  let auth: AuthProcess;
  before(async () => {
    if (missing) return;
    auth = await startAuth();
    await mezctlOk(auth, "create", "-f", join(work, "seed.yaml"));
  });

  after(() => auth?.stop());

  test("a lock reaches sshd within 10 s by the stream alone, after the stream sat idle past the service's idle timeout", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const ci = await joinAgent(auth, "ci");
    const dir = await joinNode(auth, "web-01");
    let sshd: Sshd | undefined;
    const node = startNodeAgent(auth.addr, dir, NO_POLL_MS);
    t.after(async () => {
      await node.stop();
      await sshd?.stop();
    });
    mkdirSync(join(work, "sshd-web-01"));
    sshd = await startSshd({ dir: join(work, "sshd-web-01"), hostKeyPath: join(dir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(dir, "sshd_config")}`] });
    const login = async () => {
      const r = await sshRun({ port: sshd!.port, user: "deploy", keyPath: ci.keyPath, certPath: ci.certPath, knownHostsPath: join(work, "agent-ci", "known_hosts"), command: "whoami", extraOptions: ["-o", "HostKeyAlias=web-01"] });
      if (r.code !== 0) assert.match(r.stderr, /Permission denied/, r.stderr);
      return r.code === 0;
    };
    await waitFor("the change stream is up", () => /"change stream up"/.test(node.log()));
    assert.equal(await login(), true, "ci logs in before the lock");
    const before = node.calls();

    // Quiet for longer than the service's idle timeout for connections (10 s): the stream must stay.
    await new Promise((r) => setTimeout(r, 12_000));
    await mezctlOk(auth, "agent-identities", "lock", "ci", "--reason=test");
    const since = Date.now();
    for (;;) {
      if (!(await login())) break;
      assert.ok(Date.now() - since < 10_000, `ci still logs in 10 s after the lock:\n${node.log()}`);
    }
    report(`lock -> refused by sshd after ${Date.now() - since} ms (stream; polls every ${NO_POLL_MS / 60_000} min)`);
    assert.ok(revoked(dir, ci.certPath), "the KRL holds ci's certificate");
    const after = node.calls();
    assert.equal(after.fetched, before.fetched, "no fetch: the lock came pushed");
    assert.ok(after.pushed > before.pushed, "a pushed state");
    assert.doesNotMatch(node.log(), /change stream failed|refused/);
  });
});

describe("a service over its stream caps", () => {
  let svc: AuthService | undefined;
  test("refuses the stream beyond the cap (RESOURCE_EXHAUSTED) and that agent polls: the lock reaches both KRLs", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const dataDir = mkdtempSync(join(tmpdir(), "mezite-watch-caps-"));
    svc = await startAuthService(
      { dataDir, listen: "127.0.0.1:0", publicAddrs: [], clusterName: "test.mezite", backend: "memory", singlePort: false, watchLimits: { maxStreams: 10, maxPerSource: 1 } },
      silentLogger,
    );
    svc.context.audit = new Audit(svc.context.backend, silentLogger, svc.context.now);
    const admin = { addr: svc.addr, identityPath: join(dataDir, "admin.identity") };
    t.after(async () => {
      await svc?.stop();
      rmSync(dataDir, { recursive: true, force: true });
    });
    await mezctlOk(admin, "create", "-f", join(work, "seed.yaml"));
    const ci = await joinAgent(admin, "capped");
    const dirs = [await joinNode(admin, "cap-01"), await joinNode(admin, "cap-02")];
    const first = startNodeAgent(svc.addr, dirs[0]!, 1_000);
    t.after(() => first.stop());
    await waitFor("the first agent's stream is up", () => /"change stream up"/.test(first.log()));
    const second = startNodeAgent(svc.addr, dirs[1]!, 1_000);
    t.after(() => second.stop());
    await waitFor("the second agent's stream is refused", () => /"change stream refused; polling meanwhile"/.test(second.log()));
    assert.match(second.log(), /"code":"ERR_RATE_LIMITED"|at most|most change streams from one address/);
    await mezctlOk(admin, "agent-identities", "lock", "capped");
    const since = Date.now();
    await waitFor("both KRLs revoke the certificate", () => dirs.every((d) => revoked(d, ci.certPath)), 10_000);
    report(`capped service: lock in both KRLs after ${Date.now() - since} ms (one pushed, one polled)`);
    assert.equal(second.calls().pushed, 0, "the refused agent has no stream");
    assert.ok(second.calls().fetched >= 2, "the refused agent polls");
    assert.ok(first.calls().pushed >= 2, "the first agent's states came pushed");
  });
});
