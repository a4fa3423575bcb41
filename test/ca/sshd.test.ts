/**
 * Stock OpenSSH is the oracle: sshd trusts our User CA, our KRLs and our host certificates, and
 * the ssh client trusts our host certificates through @cert-authority.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { TestContext } from "node:test";
import { encodeKrl } from "../../src/ca/krl.js";
import type { KrlSection } from "../../src/ca/krl.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import type { SshCertFields } from "../../src/ca/sshcert.js";
import { encodeOpenSSHPrivateKey, formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { SSH_KEYGEN_PATH, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, sshRun, startSshd } from "../harness/sshd.js";
import type { Sshd } from "../harness/sshd.js";

const userCa = generateKeyPairSync("ed25519");
const hostCa = generateKeyPairSync("ed25519");
const rogueHostCa = generateKeyPairSync("ed25519");
const hostKey = generateKeyPairSync("ed25519");
const userKey = generateKeyPairSync("ed25519");
// sshd checks validity against the real clock, so these certs are relative to it.
const now = Math.floor(Date.now() / 1000);

const missing = sshdTestsCannotRun();
function skipped(t: TestContext): boolean {
  if (missing !== undefined) missingComponent(t, ...missing);
  return missing !== undefined;
}

let dir: string;
const sshds: Sshd[] = [];
let sshd: Sshd;
let knownHosts: string;
let krlPath: string;
let userKeyPath: string;

function writeHostFiles(name: string, key: KeyObject, signer: KeyObject): { keyPath: string; certPath: string } {
  const keyPath = join(dir, name);
  const certPath = `${keyPath}-cert.pub`;
  writeFileSync(keyPath, encodeOpenSSHPrivateKey(key), { mode: 0o600 });
  const blob = signSshCertificate(
    { type: "host", publicKey: hostKey.publicKey, serial: 1n, keyId: "node/test", principals: ["127.0.0.1", "localhost"], validAfter: now - 60, validBefore: now + 3600 },
    signer,
  );
  writeFileSync(certPath, `${formatSshCertificate(blob)}\n`);
  return { keyPath, certPath };
}

let certCount = 0;
function userCert(over: Partial<SshCertFields> = {}): string {
  const path = join(dir, `user-${certCount++}-cert.pub`);
  const f: SshCertFields = {
    type: "user",
    publicKey: userKey.publicKey,
    serial: 1000n + BigInt(certCount),
    keyId: "agent-identity/github-deploy",
    principals: ["deploy"],
    validAfter: now - 60,
    validBefore: now + 3600,
    extensions: { "permit-pty": "", "mezite-roles@mezite": "ci-deployer" },
    ...over,
  };
  writeFileSync(path, `${formatSshCertificate(signSshCertificate(f, userCa.privateKey))}\n`);
  return path;
}

/** Replaced by rename, as the node agent does: sshd reads it on the next login. */
function setKrl(sections: KrlSection[] | "empty"): void {
  const tmp = `${krlPath}.tmp`;
  writeFileSync(tmp, sections === "empty" ? Buffer.alloc(0) : encodeKrl({ version: BigInt(certCount), generatedAt: now, sections }));
  renameSync(tmp, krlPath);
}

/** Logs in and returns the result plus what sshd logged for this connection. */
async function login(user: string, certPath: string, target: Sshd = sshd, known = knownHosts) {
  const from = statSync(target.logPath).size;
  const r = await sshRun({ port: target.port, user, keyPath: userKeyPath, certPath, knownHostsPath: known, command: "whoami" });
  return { ...r, log: readFileSync(target.logPath).subarray(from).toString("utf8") };
}

function assertRefused(r: { code: number | null; stderr: string; log: string }, logLine: RegExp): void {
  assert.equal(r.code, 255, `expected a refusal, got ${r.code}: ${r.stderr}`);
  assert.match(r.stderr, /Permission denied \(publickey\)/);
  assert.match(r.log, logLine);
}

before(async () => {
  if (missing !== undefined) return;
  ensureUser("deploy");
  dir = mkdtempSync(join(tmpdir(), "mezite-sshd-"));
  userKeyPath = join(dir, "user_key");
  writeFileSync(userKeyPath, encodeOpenSSHPrivateKey(userKey.privateKey, "agent"), { mode: 0o600 });
  writeFileSync(join(dir, "user_ca.pub"), `${formatAuthorizedKey(userCa.publicKey, "mezite user CA")}\n`);
  krlPath = join(dir, "revoked.krl");
  writeFileSync(krlPath, ""); // 0 bytes = empty KRL (a missing file would refuse everyone)
  const host = writeHostFiles("host_key", hostKey.privateKey, hostCa.privateKey);
  sshd = await startSshd({
    dir,
    hostKeyPath: host.keyPath,
    hostCertPath: host.certPath,
    trustedUserCaKeysPath: join(dir, "user_ca.pub"),
    revokedKeysPath: krlPath,
  });
  sshds.push(sshd);
  knownHosts = join(dir, "known_hosts");
  writeFileSync(knownHosts, `@cert-authority [127.0.0.1]:${sshd.port} ${formatAuthorizedKey(hostCa.publicKey)}\n`);
});

after(async () => {
  await Promise.all(sshds.map((s) => s.stop()));
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("sshd with TrustedUserCAKeys = our User CA", () => {
  test("accepts our user cert for deploy", async (t) => {
    if (skipped(t)) return;
    const r = await login("deploy", userCert({ serial: 4242n }));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "deploy\n");
    assert.match(r.log, /Accepted publickey for deploy .* ID agent-identity\/github-deploy \(serial 4242\)/);
  });

  test("refuses it for root: root is not a principal", async (t) => {
    if (skipped(t)) return;
    assertRefused(await login("root", userCert()), /Certificate invalid: name is not a listed principal/);
  });

  test("refuses an expired cert", async (t) => {
    if (skipped(t)) return;
    assertRefused(await login("deploy", userCert({ validAfter: now - 7200, validBefore: now - 3600 })), /Certificate invalid: expired/);
  });

  test("refuses a cert from another CA", async (t) => {
    if (skipped(t)) return;
    const path = join(dir, "rogue-cert.pub");
    const f: SshCertFields = { type: "user", publicKey: userKey.publicKey, serial: 1n, keyId: "rogue", principals: ["deploy"], validAfter: now - 60, validBefore: now + 3600 };
    writeFileSync(path, formatSshCertificate(signSshCertificate(f, rogueHostCa.privateKey)));
    assertRefused(await login("deploy", path), /Failed publickey for deploy .* ID rogue \(serial 1\)/);
  });

  const krlCases: [string, Omit<KrlSection, "caKey">, Partial<SshCertFields>, Partial<SshCertFields>][] = [
    ["serial", { serials: [5001n] }, { serial: 5001n }, { serial: 5002n }],
    ["key id", { keyIds: ["agent-identity/locked"] }, { keyId: "agent-identity/locked" }, { keyId: "agent-identity/fine" }],
  ];
  for (const [what, section, revokedCert, otherCert] of krlCases) {
    test(`a KRL revoking the ${what} refuses that cert, and only it; ssh-keygen -Q agrees`, async (t) => {
      if (skipped(t)) return;
      const revoked = userCert(revokedCert);
      const other = userCert(otherCert);
      assert.equal((await login("deploy", revoked)).code, 0, "accepted before the KRL names it");
      setKrl([{ caKey: userCa.publicKey, ...section }]);
      t.after(() => setKrl("empty"));
      assertRefused(await login("deploy", revoked), /revoked by file/);
      const ok = await login("deploy", other);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, "deploy\n");

      const q = spawnSync(SSH_KEYGEN_PATH as string, ["-Q", "-f", krlPath, revoked], { encoding: "utf8" });
      assert.equal(q.status, 1, q.stdout + q.stderr);
      assert.match(q.stdout, /REVOKED/);
      const qOther = spawnSync(SSH_KEYGEN_PATH as string, ["-Q", "-f", krlPath, other], { encoding: "utf8" });
      assert.equal(qOther.status, 0, qOther.stdout + qOther.stderr);
      assert.match(qOther.stdout, /: ok$/m);
    });
  }
});

describe("ssh client with our host certificate", () => {
  test("accepts it through @cert-authority [127.0.0.1]:PORT and through *", async (t) => {
    if (skipped(t)) return;
    const r = await login("deploy", userCert());
    assert.equal(r.code, 0, r.stderr);
    const star = join(dir, "known_hosts_star");
    writeFileSync(star, `@cert-authority * ${formatAuthorizedKey(hostCa.publicKey)}\n`);
    const s = await login("deploy", userCert(), sshd, star);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout, "deploy\n");
  });

  test("refuses a host cert signed by another CA", async (t) => {
    if (skipped(t)) return;
    const host = writeHostFiles("rogue_host_key", hostKey.privateKey, rogueHostCa.privateKey);
    const rogue = await startSshd({ dir, hostKeyPath: host.keyPath, hostCertPath: host.certPath, trustedUserCaKeysPath: join(dir, "user_ca.pub"), revokedKeysPath: krlPath });
    sshds.push(rogue);
    t.after(() => rogue.stop());
    const star = join(dir, "known_hosts_star");
    writeFileSync(star, `@cert-authority * ${formatAuthorizedKey(hostCa.publicKey)}\n`);
    const r = await login("deploy", userCert(), rogue, star);
    assert.equal(r.code, 255, r.stdout);
    assert.match(r.stderr, /Host key verification failed/);
    assert.doesNotMatch(r.log, /Accepted publickey/);
  });
});
