/**
 * The seed's CI pipeline end to end: `mezd identity start --one-shot` against a real auth
 * service, then stock ssh into a private sshd with the outputs, and openssl on the X.509 half.
 * Also: the token never shows in an output, a log line or the process list.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { AuthProcess } from "../harness/auth.js";
import { MEZD, mezctlOk } from "../harness/auth.js";
import { OPENSSL_PATH, SSH_KEYGEN_PATH, SSH_PATH } from "../harness/require.js";
import { JOINED, addIdentity, oneShot, readState, seedSsh, sshdMissing, startAuthWithRole, startDaemon, startNode, type Node, killDaemons } from "./fixture.js";

const OUTPUTS = ["cert_serial", "ssh_cert", "ssh_config", "ssh_key", "ssh_known_hosts", "x509_ca.pem", "x509_cert.pem", "x509_key.pem"];

let tmp: string;
let auth: AuthProcess;
let node: Node | undefined;
let dest: string;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mezite-identity-pipeline-"));
  auth = await startAuthWithRole(tmp);
  dest = join(tmp, "certs");
});

after(async () => {
  killDaemons();
  await node?.sshd.stop();
  await auth.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const mode = (p: string) => statSync(p).mode & 0o777;

/** Every file under `dir`, recursively, as [path, content]. */
function allFiles(dir: string): [string, string][] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .map((f) => join(dir, f))
    .filter((p) => statSync(p).isFile())
    .map((p) => [p, readFileSync(p, "utf8")]);
}

describe("the seed's one-shot pipeline", () => {
  test("one-shot join exits 0 and writes every output with the right modes", async () => {
    const token = await addIdentity(auth, "github-deploy");
    const t0 = performance.now();
    const r = await oneShot(auth.addr, dest, [`--token=${token}`]);
    const wallMs = performance.now() - t0;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `certificates written to ${dest}\n`);
    process.stderr.write(`# one-shot join wall time: ${Math.round(wallMs)} ms\n`);

    // Outputs, plus the storage dir; the renewal certificate lives only in there.
    assert.deepEqual(readdirSync(dest).sort(), [".mezite", ...OUTPUTS]);
    assert.deepEqual(readdirSync(join(dest, ".mezite")), ["state.json"]);
    assert.equal(mode(join(dest, ".mezite")), 0o700);
    assert.equal(mode(join(dest, ".mezite/state.json")), 0o600);
    assert.equal(mode(join(dest, "ssh_key")), 0o600);
    assert.equal(mode(join(dest, "x509_key.pem")), 0o600);
    for (const f of ["ssh_cert", "x509_cert.pem", "cert_serial", "ssh_known_hosts", "ssh_config", "x509_ca.pem"]) assert.equal(mode(join(dest, f)), 0o644, f);
    const renewalCert = readState(join(dest, ".mezite")).renewal_cert_pem;
    for (const f of OUTPUTS) assert.ok(!readFileSync(join(dest, f), "utf8").includes(renewalCert.trim().split("\n")[1]!), `${f} holds the renewal certificate`);
  });

  test("ssh-keygen and openssl accept the outputs: serial, key id, principals, key pair, chain", { skip: !SSH_KEYGEN_PATH || !OPENSSL_PATH }, () => {
    const listing = spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", join(dest, "ssh_cert")], { encoding: "utf8" });
    assert.equal(listing.status, 0, listing.stderr);
    assert.match(listing.stdout, /ssh-ed25519-cert-v01@openssh.com user certificate/);
    assert.match(listing.stdout, /Key ID: "agent-identity\/github-deploy"/);
    assert.match(listing.stdout, /Principals: \n\s+deploy\n\s+Critical/);
    const serial = /Serial: (\d+)/.exec(listing.stdout)?.[1];
    assert.equal(readFileSync(join(dest, "cert_serial"), "utf8"), `${serial}\n`);

    // ssh_key is the private half of the certified key.
    const pub = spawnSync(SSH_KEYGEN_PATH!, ["-y", "-f", join(dest, "ssh_key")], { encoding: "utf8" });
    assert.equal(pub.status, 0, pub.stderr);
    writeFileSync(join(tmp, "ssh_key.pub"), pub.stdout);
    const fp = spawnSync(SSH_KEYGEN_PATH!, ["-l", "-f", join(tmp, "ssh_key.pub")], { encoding: "utf8" }).stdout.split(" ")[1];
    assert.ok(fp?.startsWith("SHA256:") && listing.stdout.includes(`Public key: ED25519-CERT ${fp}`), `ssh_key does not match ssh_cert (${fp})`);

    const verify = spawnSync(OPENSSL_PATH!, ["verify", "-CAfile", join(dest, "x509_ca.pem"), join(dest, "x509_cert.pem")], { encoding: "utf8" });
    assert.equal(verify.status, 0, verify.stderr);
    assert.match(verify.stdout, /x509_cert.pem: OK/);
    const text = spawnSync(OPENSSL_PATH!, ["x509", "-noout", "-text", "-in", join(dest, "x509_cert.pem")], { encoding: "utf8" }).stdout;
    assert.match(text, /Subject: .*CN ?= ?github-deploy\n/);
    assert.match(text, /URI:spiffe:\/\/test\.mezite\/agent-identity\/github-deploy/);
    assert.match(text, /TLS Web Client Authentication/);
    // x509_key.pem is the private half of x509_cert.pem.
    const certPub = spawnSync(OPENSSL_PATH!, ["x509", "-noout", "-pubkey", "-in", join(dest, "x509_cert.pem")], { encoding: "utf8" }).stdout;
    const keyPub = spawnSync(OPENSSL_PATH!, ["pkey", "-pubout", "-in", join(dest, "x509_key.pem")], { encoding: "utf8" }).stdout;
    assert.equal(keyPub, certPub);
  });

  test("stock ssh logs in as deploy with the outputs, is refused as root, and -F ssh_config works", async (t) => {
    if (sshdMissing(t)) return;
    node = await startNode(auth, join(tmp, "node"));
    const port = node.sshd.port;
    assert.equal(readFileSync(join(dest, "ssh_known_hosts"), "utf8"), `@cert-authority * ${node.hostCaLine}\n`);

    const ok = await seedSsh(dest, port, "deploy");
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, "deploy\n");

    const root = await seedSsh(dest, port, "root");
    assert.equal(root.code, 255);
    assert.equal(root.stdout, "");
    assert.match(root.stderr, /Permission denied/);

    const viaConfig = spawnSync(SSH_PATH!, ["-F", join(dest, "ssh_config"), "-o", "BatchMode=yes", "-p", String(port), "deploy@127.0.0.1", "whoami"], { encoding: "utf8", timeout: 15_000 });
    assert.equal(viaConfig.status, 0, viaConfig.stderr);
    assert.equal(viaConfig.stdout, "deploy\n");

    // The host is verified through the Host CA, not trusted on first use: another CA's
    // known_hosts line makes ssh refuse the very same server.
    const other = join(tmp, "other_known_hosts");
    writeFileSync(other, `@cert-authority * ${node.userCaLine}\n`);
    const strict = await seedSsh(dest, port, "deploy", ["-o", `UserKnownHostsFile=${other}`, "-o", "StrictHostKeyChecking=yes"]);
    assert.equal(strict.code, 255);
    assert.match(strict.stderr, /Host key verification failed/);
  });
});

describe("the destination dir", () => {
  test("a relative --destination-dir still gives an ssh_config usable from anywhere; an existing dir keeps its mode", async () => {
    const token = await addIdentity(auth, "relative");
    mkdirSync(join(tmp, "relative"), { mode: 0o750 });
    chmodSync(join(tmp, "relative"), 0o750); // whatever the umask
    const r = spawnSync(MEZD, ["identity", "start", `--auth-server=${auth.addr}`, "--destination-dir=relative", "--one-shot"], { cwd: tmp, env: { ...process.env, MEZITE_TOKEN: token }, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const config = readFileSync(join(tmp, "relative/ssh_config"), "utf8");
    assert.match(config, new RegExp(`^    IdentityFile ${join(tmp, "relative/ssh_key")}$`, "m"));
    assert.match(config, new RegExp(`^    CertificateFile ${join(tmp, "relative/ssh_cert")}$`, "m"));
    assert.equal(mode(join(tmp, "relative")), 0o750);
    assert.equal(mode(join(tmp, "relative/.mezite")), 0o700);
  });
});

describe("the token stays secret", () => {
  /** Every place a token could leak to, for `token`. */
  async function assertNowhere(token: string, where: { dest: string; output: string; cmdline?: string }): Promise<void> {
    for (const [path, content] of allFiles(where.dest)) assert.ok(!content.includes(token), `token in ${path}`);
    assert.ok(!where.output.includes(token), "token in the daemon's output");
    if (where.cmdline !== undefined) assert.ok(!where.cmdline.includes(token), `token in the process arguments: ${where.cmdline}`);
    assert.ok(!auth.output().includes(token), "token in the auth service's log");
    assert.ok(!(await mezctlOk(auth, "audit", "ls", "--format=json")).includes(token), "token in the audit trail");
  }

  test("$MEZITE_TOKEN: one-shot join, token in no file or log line", async () => {
    const token = await addIdentity(auth, "env-token");
    const d = join(tmp, "env-token");
    const r = await oneShot(auth.addr, d, [], { MEZITE_TOKEN: token });
    assert.equal(r.code, 0, r.stderr);
    await assertNowhere(token, { dest: d, output: r.stdout + r.stderr });
  });

  for (const how of ["--token-file", "--token="] as const) {
    test(`${how}: the running daemon's process list entry never shows the token`, async () => {
      const token = await addIdentity(auth, how === "--token-file" ? "file-token" : "arg-token");
      const d = join(tmp, `daemon${how}`);
      let arg = `--token=${token}`;
      if (how === "--token-file") {
        writeFileSync(join(tmp, "token"), `${token}\n`, { mode: 0o600 });
        arg = `--token-file=${join(tmp, "token")}`;
      }
      const daemon = startDaemon(auth.addr, d, [arg, "--cert-ttl=1m", "--renewal-interval=50s"]);
      await daemon.waitFor(JOINED);
      const cmdline = readFileSync(`/proc/${daemon.pid}/cmdline`, "utf8").replace(/\0/g, " ");
      const ps = spawnSync("ps", ["-eww", "-o", "args"], { encoding: "utf8" }).stdout;
      assert.ok(!ps.includes(token), "token in ps -eww -o args");
      assert.equal(await daemon.stop("SIGTERM"), 0, daemon.output());
      await assertNowhere(token, { dest: d, output: daemon.output(), cmdline });
    });
  }
});
