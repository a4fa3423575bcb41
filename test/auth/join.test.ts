/**
 * Join (SPEC §4, §5) through the real service: the certificates pass OpenSSH's and OpenSSL's own
 * checks, a token works exactly once even under 50 concurrent joins, and an expired token is
 * refused (in-process, with a clock the test moves instead of a minute's wait).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createPublicKey } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";
import { Code } from "@connectrpc/connect";
import { startAuthService, type AuthService } from "../../src/auth/server.js";
import { Audit } from "../../src/auth/audit.js";
import { formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { generateToken } from "../../src/ca/jointoken.js";
import { silentLogger } from "../../src/lib/log.js";
import { SEED_ROLE, run, startAuth, type AuthProcess } from "../harness/auth.js";
import { OPENSSL_PATH, SSH_KEYGEN_PATH, missingComponent } from "../harness/require.js";
import { HOUR_MS, addIdentity, auditEvents, createRole, join, outcome, refused, statusOf, tally } from "./client.js";

let auth: AuthProcess;
let dir: string;

function file(name: string, text: string): string {
  const p = joinPath(dir, name);
  writeFileSync(p, text);
  return p;
}

async function tool(bin: string, ...args: string[]): Promise<string> {
  const r = await run(bin, args, { env: { TZ: "UTC" } });
  assert.equal(r.code, 0, `${bin} ${args.join(" ")} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** `ssh-keygen -L` output as fields; ssh-keygen checks the CA signature while parsing. */
function keygenList(out: string) {
  const field = (name: string) => new RegExp(`^\\s+${name}: (.*)$`, "m").exec(out)?.[1] ?? "";
  const block = (name: string) => {
    const m = new RegExp(`^\\s+${name}: ?\\n((?:\\s{16}.*\\n?)*)`, "m").exec(out);
    return (m?.[1] ?? "").split("\n").map((l) => l.trim()).filter(Boolean);
  };
  const valid = /^from (\S+) to (\S+)$/.exec(field("Valid")) ?? [];
  return {
    type: field("Type"),
    publicKey: field("Public key"),
    signingCa: field("Signing CA"),
    keyId: field("Key ID"),
    serial: field("Serial"),
    from: Date.parse(`${valid[1]}Z`),
    to: Date.parse(`${valid[2]}Z`),
    principals: block("Principals"),
    critical: field("Critical Options"),
    extensions: block("Extensions").map((l) => l.split(" ")[0]),
  };
}

before(async () => {
  dir = mkdtempSync(joinPath(tmpdir(), "mezite-join-test-"));
  auth = await startAuth();
  const wide = SEED_ROLE.replace("name: ci-deployer", "name: wide").replace("      - deploy\n  deny:\n    logins:\n      - root\n", "      - deploy\n      - root\n");
  assert.match(wide, /- root\n$/);
  await Promise.all([createRole(auth, SEED_ROLE), createRole(auth, wide)]);
});
after(async () => {
  await auth?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("join: certificates that ssh-keygen and openssl accept, principals exactly deploy, at most 1h; the token then refuses", async (t) => {
  if (!SSH_KEYGEN_PATH) return missingComponent(t, "ssh-keygen", "apt-get install openssh-client");
  if (!OPENSSL_PATH) return missingComponent(t, "openssl", "apt-get install openssl");
  const token = await addIdentity(auth, "github-deploy", ["ci-deployer"]);
  const sentAt = Date.now();
  const { keys, certs } = await join(auth.addr, token, 2 * HOUR_MS); // asks for more than the role allows
  const answeredAt = Date.now();

  const certFile = file("id-cert.pub", certs.sshCertificate + "\n");
  const caFile = file("user_ca.pub", certs.userCaSshKeys[0] + "\n");
  const keyFile = file("id.pub", formatAuthorizedKey(createPublicKey(keys.ssh)) + "\n");
  const [listing, caPrint, keyPrint] = await Promise.all([
    tool(SSH_KEYGEN_PATH, "-L", "-f", certFile),
    tool(SSH_KEYGEN_PATH, "-l", "-f", caFile),
    tool(SSH_KEYGEN_PATH, "-l", "-f", keyFile),
  ]);
  const c = keygenList(listing);
  assert.equal(c.type, "ssh-ed25519-cert-v01@openssh.com user certificate");
  assert.equal(c.signingCa, `ED25519 ${caPrint.split(" ")[1]} (using ssh-ed25519)`, "signed by the cluster's User CA");
  assert.equal(c.publicKey, `ED25519-CERT ${keyPrint.split(" ")[1]}`, "certifies our own key");
  assert.equal(c.keyId, '"agent-identity/github-deploy"');
  assert.equal(c.serial, certs.serial.toString());
  assert.deepEqual(c.principals, ["deploy"]);
  assert.equal(c.critical, "(none)");
  for (const ext of ["permit-pty", "mezite-identity@mezite", "mezite-roles@mezite", "mezite-role-rules@mezite"]) {
    assert.ok(c.extensions.includes(ext), `extension ${ext} in ${c.extensions.join(", ")}`);
  }
  // ssh-keygen prints whole seconds: validity is the role's 1h plus the 1-minute backdate.
  assert.ok(c.to - c.from <= HOUR_MS + 60_000, `validity ${(c.to - c.from) / 1000}s is at most 1h + 1m`);
  assert.ok(c.to - c.from >= HOUR_MS, "the full hour the role allows");
  assert.ok(c.from >= sentAt - 61_000 && c.from <= answeredAt - 60_000, "backdated by one minute");
  assert.deepEqual(certs.principals, ["deploy"]);

  const userCa = file("user_ca.pem", certs.userCaX509Pems[0]!);
  const x509 = file("x509.pem", certs.x509CertificatePem);
  const renewal = file("renewal.pem", certs.renewalCertificatePem);
  assert.equal(await tool(OPENSSL_PATH, "verify", "-CAfile", userCa, x509), `${x509}: OK\n`);
  assert.equal(await tool(OPENSSL_PATH, "verify", "-CAfile", userCa, renewal), `${renewal}: OK\n`);
  const wrongCa = await run(OPENSSL_PATH, ["verify", "-CAfile", file("tls_ca.pem", certs.tlsCaPem), x509]);
  assert.notEqual(wrongCa.code, 0, "the oracle refuses a certificate from another CA");
  const text = await tool(OPENSSL_PATH, "x509", "-noout", "-subject", "-startdate", "-enddate", "-ext", "subjectAltName,extendedKeyUsage", "-in", x509);
  assert.match(text, /^subject=.*CN ?= ?github-deploy$/m);
  assert.match(text, /URI:spiffe:\/\/test\.mezite\/agent-identity\/github-deploy/);
  assert.match(text, /TLS Web Client Authentication/);
  const notBefore = Date.parse(/notBefore=(.*)/.exec(text)![1]!);
  const notAfter = Date.parse(/notAfter=(.*)/.exec(text)![1]!);
  assert.ok(notAfter - notBefore <= HOUR_MS + 60_000 && notAfter - notBefore >= HOUR_MS, "X.509 validity is the same 1h + 1m");

  await refused(join(auth.addr, token), "ERR_TOKEN_USED", Code.PermissionDenied);
  const unknown = await refused(join(auth.addr, generateToken()), "ERR_TOKEN_UNKNOWN", Code.PermissionDenied);
  assert.ok(!unknown.message.includes(token));
});

test("deny beats allow across roles: a role allowing root still yields only deploy", async () => {
  const token = await addIdentity(auth, "two-roles", ["wide", "ci-deployer"]);
  const { certs } = await join(auth.addr, token);
  assert.deepEqual(certs.principals, ["deploy"]);
  assert.deepEqual((await statusOf(auth, "two-roles")).principals, ["deploy"]);
});

test("50 concurrent joins with one token: exactly one succeeds, 49 get ERR_TOKEN_USED", async () => {
  const token = await addIdentity(auth, "racer", ["ci-deployer"]);
  const results = await Promise.all(Array.from({ length: 50 }, () => outcome(join(auth.addr, token))));
  assert.deepEqual(tally(results), { ok: 1, ERR_TOKEN_USED: 49 });
  assert.equal((await statusOf(auth, "racer")).instances.length, 1);
  const events = (await auditEvents(auth, { type: "agent_identity.join" })).filter((e) => e.identity === "racer");
  assert.deepEqual(tally(events.map((e) => (e.success ? "ok" : { grpc: Code.Unknown, code: e.error, message: "" }))), { ok: 1, ERR_TOKEN_USED: 49 });
});

test("an expired token is refused with ERR_TOKEN_EXPIRED (clock moved in-process), and works again in time", async () => {
  const dataDir = mkdtempSync(joinPath(tmpdir(), "mezite-join-clock-"));
  let svc: AuthService | undefined;
  try {
    svc = await startAuthService({ dataDir, listen: "127.0.0.1:0", publicAddrs: [], clusterName: "test.mezite", backend: "memory", singlePort: false }, silentLogger);
    const ctx = svc.context;
    let skewMs = 0;
    ctx.now = () => Date.now() + skewMs;
    ctx.audit = new Audit(ctx.backend, silentLogger, ctx.now); // keep audit lines off the test output
    const a = { addr: svc.addr, identityPath: joinPath(dataDir, "admin.identity") };
    await createRole(a, SEED_ROLE);
    const token = await addIdentity(a, "late", ["ci-deployer"], 60_000);

    skewMs = 61_000;
    await refused(join(a.addr, token), "ERR_TOKEN_EXPIRED", Code.PermissionDenied);
    assert.equal((await statusOf(a, "late")).tokenState, "expired");
    const failed = await auditEvents(a, { type: "agent_identity.join" });
    assert.deepEqual(failed.map((e) => [e.identity, e.success, e.error]), [["late", false, "ERR_TOKEN_EXPIRED"]]);

    skewMs = 59_000; // the refusal consumed nothing: within its minute the token still works
    const { certs } = await join(a.addr, token);
    assert.equal(certs.identityName, "late");
  } finally {
    await svc?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
