/**
 * The principals decision with a frozen clock and hand-made certificates, then the command over
 * real files: which certificates get a login on which node, and that garbage never throws.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { signSshCertificate, type SshCertFields } from "../../src/ca/sshcert.js";
import { formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { formatLockState, NO_LOCKS, writeNodeConfig, type LockState } from "../../src/node/layout.js";
import { CERT_EXTENSIONS as EXT } from "../../src/api/cert-extensions.js";
import { decide, principalsCommand, type PrincipalsInput } from "../../src/node/principals.js";
import type { RoleAccess } from "../../src/rbac/access.js";
import { ensureBuilt, MEZD, run } from "../harness/auth.js";

const NOW = 1_800_000_000; // frozen: unix seconds
const ca = generateKeyPairSync("ed25519");
const rotatedCa = generateKeyPairSync("ed25519");
const otherCa = generateKeyPairSync("ed25519");
const userKey = generateKeyPairSync("ed25519");

const CI_DEPLOYER: RoleAccess = {
  role: "ci-deployer",
  allow: { logins: ["deploy"], labels: { env: ["staging", "production"] } },
  deny: { logins: ["root"], labels: {} },
  maxSessionTtlMs: 0,
};
const NO_DEV: RoleAccess = { role: "no-dev", allow: { logins: [], labels: {} }, deny: { logins: [], labels: { env: ["dev"] } }, maxSessionTtlMs: 0 };
const ANYWHERE: RoleAccess = { role: "anywhere", allow: { logins: ["deploy"], labels: { "*": ["*"] } }, deny: { logins: [], labels: {} }, maxSessionTtlMs: 0 };

function cert(over: Partial<SshCertFields> = {}, roles: RoleAccess[] = [CI_DEPLOYER], signer: KeyObject = ca.privateKey): string {
  const f: SshCertFields = {
    type: "user",
    publicKey: userKey.publicKey,
    serial: 42n,
    keyId: "agent-identity/ci",
    principals: ["deploy"],
    validAfter: NOW - 60,
    validBefore: NOW + 3600,
    extensions: {
      "permit-pty": "",
      [EXT.identity]: JSON.stringify({ name: "ci", id: "id-1", instance: "inst-1" }),
      [EXT.roles]: roles.map((r) => r.role).join(","),
      [EXT.roleRules]: JSON.stringify(roles.map((r) => ({ role: r.role, allow: r.allow, deny: r.deny, maxSessionTtlMs: 0 }))),
    },
    ...over,
  };
  return signSshCertificate(f, signer).toString("base64");
}

function input(over: Partial<PrincipalsInput> = {}): PrincipalsInput {
  return { login: "deploy", cert: cert(), userCaKeys: [ca.publicKey], nodeLabels: { env: "staging" }, locks: NO_LOCKS, nowSeconds: NOW, ...over };
}

function refusedFor(i: PrincipalsInput, reason: RegExp): void {
  const d = decide(i);
  assert.equal(d.allow, false);
  if (!d.allow) assert.match(d.reason, reason);
}

describe("decide", () => {
  test("a role allowing the login on the node's labels admits it", () => {
    assert.deepEqual(decide(input()), { allow: true });
    assert.deepEqual(decide(input({ nodeLabels: { env: "production", team: "x" } })), { allow: true });
    assert.deepEqual(decide(input({ cert: cert({}, [ANYWHERE]), nodeLabels: { env: "dev" } })), { allow: true });
  });

  test("other labels, other logins and denied logins are refused", () => {
    refusedFor(input({ nodeLabels: { env: "dev" } }), /roles do not allow/);
    refusedFor(input({ nodeLabels: {} }), /roles do not allow/);
    refusedFor(input({ login: "root", cert: cert({ principals: ["deploy", "root"] }) }), /roles do not allow/);
    refusedFor(input({ login: "root" }), /does not name the login/);
    refusedFor(input({ cert: cert({}, [ANYWHERE, NO_DEV]), nodeLabels: { env: "dev" } }), /roles do not allow/); // deny wins
  });

  test("role rules from the certificate: own labels only, and a deny in another case denies", () => {
    // Rules as the certificate carries them (JSON): "constructor" must not reach Object.prototype.
    const protoKey: RoleAccess = { role: "proto", allow: { logins: ["deploy"], labels: JSON.parse('{"constructor": ["*"]}') }, deny: { logins: [], labels: {} }, maxSessionTtlMs: 0 };
    refusedFor(input({ cert: cert({}, [protoKey]), nodeLabels: { env: "dev" } }), /roles do not allow/);
    const denyRoot: RoleAccess = { role: "no-root", allow: { logins: [], labels: {} }, deny: { logins: ["Root"], labels: {} }, maxSessionTtlMs: 0 };
    const rootAnywhere: RoleAccess = { role: "root", allow: { logins: ["root"], labels: { "*": ["*"] } }, deny: { logins: [], labels: {} }, maxSessionTtlMs: 0 };
    assert.deepEqual(decide(input({ login: "root", cert: cert({ principals: ["root"] }, [rootAnywhere]) })), { allow: true });
    refusedFor(input({ login: "root", cert: cert({ principals: ["root"] }, [rootAnywhere, denyRoot]) }), /roles do not allow/);
  });

  test("signature, CA and validity are checked against the frozen clock", () => {
    refusedFor(input({ cert: cert({}, [CI_DEPLOYER], otherCa.privateKey) }), /not signed by this cluster's User CA/);
    refusedFor(input({ nowSeconds: NOW + 3600 }), /expired/);
    refusedFor(input({ nowSeconds: NOW - 61 }), /not valid yet/);
    refusedFor(input({ userCaKeys: [] }), /no User CA key/);
    refusedFor(input({ cert: cert({ type: "host" }) }), /not a user certificate/);
    // During a rotation both CA keys are trusted.
    assert.deepEqual(decide(input({ cert: cert({}, [CI_DEPLOYER], rotatedCa.privateKey), userCaKeys: [ca.publicKey, rotatedCa.publicKey] })), { allow: true });
  });

  test("a tampered extension breaks the signature", () => {
    const blob = Buffer.from(cert(), "base64");
    const at = blob.indexOf("production");
    assert.ok(at > 0);
    blob.write("productiom", at, "latin1");
    refusedFor(input({ cert: blob.toString("base64") }), /signature does not verify/);
  });

  test("each kind of lock refuses", () => {
    const locked = (l: Partial<LockState>) => input({ locks: { ...NO_LOCKS, ...l } });
    refusedFor(locked({ identity_ids: ["id-1"] }), /agent identity "ci" is locked/);
    refusedFor(locked({ instance_ids: ["inst-1"] }), /instance "inst-1" is locked/);
    refusedFor(locked({ roles: ["ci-deployer"] }), /roles is locked/);
    refusedFor(locked({ logins: ["deploy"] }), /login "deploy" is locked/);
    assert.deepEqual(decide(locked({ identity_ids: ["id-2"], instance_ids: ["inst-2"], roles: ["other"], logins: ["root"] })), { allow: true });
  });

  test("certificates without Mezite's extensions, or with malformed ones, are refused", () => {
    const ext = (e: Record<string, string>) => input({ cert: cert({ extensions: e }) });
    const good = { [EXT.identity]: '{"name":"ci","id":"i","instance":"n"}', [EXT.roles]: "ci-deployer", [EXT.roleRules]: JSON.stringify([CI_DEPLOYER]) };
    assert.deepEqual(decide(ext(good)), { allow: true });
    refusedFor(ext({ "permit-pty": "" }), /no mezite-identity@mezite/);
    refusedFor(ext({ ...good, [EXT.identity]: "{" }), /not JSON/);
    refusedFor(ext({ ...good, [EXT.identity]: '{"name":"ci"}' }), /mezite-identity@mezite extension is malformed/);
    refusedFor(ext({ ...good, [EXT.roleRules]: '[{"role":"x","allow":{"logins":"deploy","labels":{}},"deny":{"logins":[],"labels":{}}}]' }), /role-rules@mezite extension is malformed/);
    refusedFor(ext({ ...good, [EXT.roleRules]: '{"__proto__":1}' }), /malformed/);
  });

  test("garbage is refused without throwing", () => {
    for (const c of ["", "!!!", "AAAA", "c3NoLWVkMjU1MTk=", Buffer.alloc(300, 7).toString("base64"), "A".repeat(100_000), `ssh-rsa ${cert()}`]) {
      refusedFor(input({ cert: c }), /./);
    }
  });
});

describe("principalsCommand over files", () => {
  const dir = mkdtempSync(join(tmpdir(), "mezite-principals-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const nowMs = NOW * 1000;
  writeNodeConfig(dir, { version: 1, name: "web-1", labels: { env: "staging" }, principals: [], auth_server: "x:1", tls_ca_pem: "", host_ca_ssh_keys: [], host_cert_expires: 0 });
  writeFileSync(join(dir, "user_ca.pub"), `# comment\nssh-rsa AAAAB3NzaC1yc2E= not ours\n${formatAuthorizedKey(ca.publicKey)}\n`);
  writeFileSync(join(dir, "revoked_locks.json"), formatLockState(NO_LOCKS));

  test("prints the login when allowed, nothing (and one stderr line) when not", () => {
    assert.deepEqual(principalsCommand(dir, ["deploy", cert()], nowMs), { stdout: "deploy\n", stderr: "" });
    const r = principalsCommand(dir, ["root", cert()], nowMs);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^mezd node principals: refused "root" for "agent-identity\/ci" serial 42: .*\n$/);
    assert.equal(r.stderr.split("\n").length, 2);
  });

  test("bad arguments and missing or symlinked state refuse, failing closed", () => {
    assert.equal(principalsCommand(undefined, ["deploy", cert()], nowMs).stdout, "");
    assert.equal(principalsCommand(dir, ["deploy"], nowMs).stdout, "");
    assert.equal(principalsCommand(dir, ["deploy", cert(), "x"], nowMs).stdout, "");
    const locks = join(dir, "revoked_locks.json");
    unlinkSync(locks);
    assert.match(principalsCommand(dir, ["deploy", cert()], nowMs).stderr, /revoked_locks\.json is missing/);
    writeFileSync(join(dir, "elsewhere.json"), formatLockState(NO_LOCKS));
    symlinkSync(join(dir, "elsewhere.json"), locks);
    assert.match(principalsCommand(dir, ["deploy", cert()], nowMs).stderr, /symlink/);
    unlinkSync(locks);
    writeFileSync(locks, "{not json");
    assert.equal(principalsCommand(dir, ["deploy", cert()], nowMs).stdout, "");
    writeFileSync(locks, formatLockState(NO_LOCKS));
    assert.equal(principalsCommand(dir, ["deploy", cert()], nowMs).stdout, "deploy\n");
  });

  test("a FIFO (or anything but a regular file) as node.json is refused at once, not waited on", async () => {
    ensureBuilt();
    const d = mkdtempSync(join(tmpdir(), "mezite-principals-fifo-"));
    try {
      writeFileSync(join(d, "user_ca.pub"), `${formatAuthorizedKey(ca.publicKey)}\n`);
      writeFileSync(join(d, "revoked_locks.json"), formatLockState(NO_LOCKS));
      assert.equal(spawnSync("mkfifo", [join(d, "node.json")]).status, 0, "mkfifo");
      // Nobody ever writes to the FIFO: a blocking open would wait until the timeout kills it.
      const r = await run(MEZD, ["node", "principals", `--ssh-dir=${d}`, "deploy", cert({ validAfter: Math.floor(Date.now() / 1000) - 60, validBefore: Math.floor(Date.now() / 1000) + 3600 })], { timeoutMs: 30_000 });
      assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, /^mezd node principals: refused "deploy": .*node\.json is not a regular file/);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
