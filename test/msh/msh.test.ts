/**
 * msh with the real pieces: `bin/mezd auth start`, nodes joined with `bin/mezd node join`, an
 * identity joined with `bin/mezd identity start --one-shot`, one stock sshd, and `bin/msh`.
 * - `msh ls` lists exactly the nodes the identity's roles allow, with the logins, over the OUTPUT
 *   certificate; the renewal and admin certificates are refused there, the output certificate
 *   cannot renew, and a locked or deleted identity hears so (exit 3).
 * - `msh ssh` / `msh scp` log in and copy with the dir's certificate; `msh config` is an
 *   ssh_config that `ssh -G` resolves to the dir's files; `msh status` reads the certificate.
 * - bad input: one line on stderr and SPEC §6's exit codes.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import Database from "better-sqlite3";
import { Code, ConnectError } from "@connectrpc/connect";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AgentService, type ListAccessibleNodesResponse } from "../../src/api/gen/mezite/v1/agent_pb.js";
import { RenewService } from "../../src/api/gen/mezite/v1/renew_pb.js";
import { connect } from "../../src/api/client.js";
import { fromConnectError } from "../../src/api/errors.js";
import { CERT_EXTENSIONS } from "../../src/api/cert-extensions.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { encodeOpenSSHPrivateKey } from "../../src/ca/sshkey.js";
import { MEZD, ROOT, SEED_ROLE_PATH, mezctlOk, principalsMezd, run, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { SSH_PATH, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, startSshd, type Sshd } from "../harness/sshd.js";

const MSH = join(ROOT, "bin/msh");
const OPS_ROLE = `kind: role
metadata:
  name: ops
spec:
  allow:
    node_labels:
      '*': '*'
    logins: [ops, deploy]
`;
const FAST_SSH = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "KexAlgorithms=curve25519-sha256", "-o", "LogLevel=ERROR"];
const missing = sshdTestsCannotRun();

let work: string;
let auth: AuthProcess;
let dest: string;
let sshd: Sshd;
const msh = (...args: string[]) => run(MSH, args, { env: { MEZITE_AUTH_SERVER: "", MEZITE_IDENTITY_DIR: "" } });

/** Only the node behind sshd claims the loopback names (a principal belongs to one node). */
async function joinNode(name: string, labels: string, loopback = false): Promise<string> {
  const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", `--labels=${labels}`));
  const dir = join(work, `node-${name}`);
  const r = await run(MEZD, ["node", "join", `--auth-server=${auth.addr}`, `--token=${token}`, `--hostname=${name}`, ...(loopback ? ["--principals=127.0.0.1,localhost"] : []), `--ssh-dir=${dir}`, `--mezd-path=${principalsMezd()}`]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

async function joinIdentity(name: string, role: string, dirName = `dest-${name}`): Promise<string> {
  const token = tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=${name}`, `--roles=${role}`));
  const d = join(work, dirName);
  const r = await run(MEZD, ["identity", "start", `--auth-server=${auth.addr}`, `--destination-dir=${d}`, "--one-shot"], { env: { MEZITE_TOKEN: token } });
  assert.equal(r.code, 0, r.stderr);
  return d;
}

/** One line on stderr, starting "msh: ". */
function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0]!, /^msh: /);
  return lines[0]!;
}

describe("msh", () => {
  before(async () => {
    if (missing) return;
    work = mkdtempSync(join(tmpdir(), "mezite-msh-"));
    chmodSync(work, 0o755); // the principals command runs as nobody
    ensureUser("deploy");
    auth = await startAuth();
    writeFileSync(join(work, "ops.yaml"), OPS_ROLE);
    await Promise.all([mezctlOk(auth, "create", "-f", SEED_ROLE_PATH), mezctlOk(auth, "create", "-f", join(work, "ops.yaml"))]);
    const [staging] = await Promise.all([joinNode("web-staging", "env=staging", true), joinNode("web-prod", "env=production,tier=web"), joinNode("dev-box", "env=dev")]);
    dest = await joinIdentity("github-deploy", "ci-deployer");
    const sshdDir = join(work, "sshd");
    mkdirSync(sshdDir);
    sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(staging!, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(staging!, "sshd_config")}`, "Subsystem sftp internal-sftp"] });
  });

  after(async () => {
    await sshd?.stop();
    await auth?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("msh ls lists the nodes the identity's roles allow, with their logins", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const r = await msh("ls", `--identity-dir=${dest}`, "--format=json");
    assert.equal(r.code, 0, r.stderr);
    const nodes = JSON.parse(r.stdout) as { name: string; logins: string[]; labels: Record<string, string> }[];
    assert.deepEqual(
      nodes.map((n) => [n.name, n.logins]),
      [
        ["web-prod", ["deploy"]],
        ["web-staging", ["deploy"]],
      ],
    );
    assert.deepEqual(nodes[0]!.labels, { env: "production", tier: "web" });
    const text = await msh("ls", `--identity-dir=${dest}`);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^NODE\s+LOGINS\s+LABELS/);
    assert.match(text.stdout, /\nweb-prod\s+deploy\s+env=production,tier=web/);
    assert.doesNotMatch(text.stdout, /dev-box/);

    // Another identity with another role sees its own view, from its own certificate alone.
    const opsDest = await joinIdentity("ops-bot", "ops");
    const ops = JSON.parse((await msh("ls", `--identity-dir=${opsDest}`, "--format=json")).stdout) as { name: string; logins: string[] }[];
    assert.deepEqual(
      ops.map((n) => [n.name, n.logins]),
      [
        ["dev-box", ["deploy", "ops"]],
        ["web-prod", ["deploy", "ops"]],
        ["web-staging", ["deploy", "ops"]],
      ],
    );
    // A locked login disappears from the list; the rest stays.
    await mezctlOk(auth, "locks", "add", "--login=ops", "--reason=test");
    const locked = JSON.parse((await msh("ls", `--identity-dir=${opsDest}`, "--format=json")).stdout) as { logins: string[] }[];
    assert.deepEqual(locked.map((n) => n.logins), [["deploy"], ["deploy"], ["deploy"]]);
  });

  test("msh ls pages a large fleet on the server, a bounded read per call, and limits listings per identity", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const d = await joinIdentity("pager", "ci-deployer");
    // 12,000 more nodes straight into the store, every thousandth in production (where ci-deployer may log in).
    const FLEET = 12_000;
    const db = new Database(join(auth.dataDir, "mezite.db"));
    const insert = db.prepare("INSERT INTO items (key, value, revision, expires) VALUES (?, ?, ?, NULL)");
    db.transaction(() => {
      for (let i = 0; i < FLEET; i++) {
        const name = `fleet-${String(i).padStart(5, "0")}`;
        const node = { id: randomUUID(), name, labels: { env: i % 1000 === 0 ? "production" : "dev" }, principals: [], hostKey: "", address: `10.9.${i >> 8}.${i & 255}:22`, lastHeartbeat: Date.now(), hostCertExpires: 0, joined: Date.now() };
        insert.run(`/nodes/${name}`, JSON.stringify(node), randomUUID());
      }
    })();
    db.close();
    const expected = [...Array.from({ length: FLEET / 1000 }, (_, k) => `fleet-${String(k * 1000).padStart(5, "0")}`), "web-prod", "web-staging"];

    const caPem = (JSON.parse(readFileSync(join(d, ".mezite/state.json"), "utf8")) as { tls_ca_pem: string }).tls_ca_pem;
    const api = connect(AgentService, auth.addr, { certPem: readFileSync(join(d, "x509_cert.pem"), "utf8"), keyPem: readFileSync(join(d, "x509_key.pem"), "utf8"), caPem });
    // Pages of up to 1000: each call reads a bounded number of nodes, so 12,003 take several calls.
    const pages: ListAccessibleNodesResponse[] = [];
    const callMs: number[] = [];
    for (let token = ""; pages.length === 0 || token !== ""; token = pages[pages.length - 1]!.nextPageToken) {
      const started = performance.now();
      pages.push(await api.listAccessibleNodes({ pageSize: 1000, pageToken: token }));
      callMs.push(performance.now() - started);
      assert.ok(pages.length <= 10, "the listing ends");
    }
    assert.ok(pages.length >= 3, `12,003 nodes in ${pages.length} calls: a call must not read them all`);
    assert.deepEqual(pages.flatMap((p) => p.nodes.map((n) => n.name)), expected, "every page together: each accessible node once, in name order");
    assert.deepEqual(pages[0]!.nodes[0]!.logins, ["deploy"]);
    // A small page size is honoured.
    const small = await api.listAccessibleNodes({ pageSize: 5 });
    assert.deepEqual(small.nodes.map((n) => n.name), expected.slice(0, 5));
    assert.notEqual(small.nextPageToken, "");
    for (const bad of [{ pageSize: 1001 }, { pageSize: -1 }, { pageToken: "../roles/x" }]) {
      const e = await api.listAccessibleNodes(bad).then(() => undefined, (err: unknown) => fromConnectError(err, auth.addr));
      assert.equal(e?.code, "ERR_USAGE", JSON.stringify(bad));
    }
    t.diagnostic(`ListAccessibleNodes over ${FLEET + 3} nodes: ${pages.length} calls of ${callMs.map((ms) => ms.toFixed(0)).join(", ")} ms`);

    // msh ls fetches every page: the output is what it always was.
    const json = await msh("ls", `--identity-dir=${d}`, "--format=json");
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual((JSON.parse(json.stdout) as { name: string }[]).map((n) => n.name), expected);
    const text = await msh("ls", `--identity-dir=${d}`);
    assert.equal(text.code, 0, text.stderr);
    assert.equal(text.stdout.trimEnd().split("\n").length, 2 + expected.length, text.stdout);

    // A burst past the rate is refused with one clear line; another identity is still answered.
    // 50 at once: at most the burst of 10, plus 5 a second for as long as they take, are answered.
    const results = await Promise.all(Array.from({ length: 50 }, () => api.listAccessibleNodes({ pageSize: 1 }).then(() => "ok", (e: unknown) => e)));
    const limited = results.filter((r): r is ConnectError => r instanceof ConnectError && r.code === Code.ResourceExhausted);
    assert.ok(limited.length >= 20, `${limited.length} of 50 refused`);
    assert.equal(results.filter((r) => r !== "ok").length, limited.length, String(results.find((r) => r !== "ok" && !limited.includes(r as ConnectError))));
    const e = fromConnectError(limited[0], auth.addr);
    assert.equal(e.code, "ERR_RATE_LIMITED");
    assert.equal(e.message, `too many node listings for agent identity "pager": at most 5 a second; retry in a second`);
    const other = await msh("ls", `--identity-dir=${dest}`, "--format=json");
    assert.equal(other.code, 0, other.stderr);
    // msh ls waits for the rate to allow it (pages refused for the rate are asked again): same output.
    const after = await msh("ls", `--identity-dir=${d}`, "--format=json");
    assert.equal(after.code, 0, after.stderr);
    assert.deepEqual((JSON.parse(after.stdout) as { name: string }[]).map((n) => n.name), expected);
  });

  test("AgentService takes the output certificate only; the output certificate cannot renew", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const caPem = (JSON.parse(readFileSync(join(dest, ".mezite/state.json"), "utf8")) as { tls_ca_pem: string }).tls_ca_pem;
    const state = JSON.parse(readFileSync(join(dest, ".mezite/state.json"), "utf8")) as { renewal_cert_pem: string; renewal_key_pem: string };
    const admin = JSON.parse(readFileSync(auth.identityPath, "utf8")) as { cert_pem: string; key_pem: string };
    const output = { certPem: readFileSync(join(dest, "x509_cert.pem"), "utf8"), keyPem: readFileSync(join(dest, "x509_key.pem"), "utf8"), caPem };
    const refused = async (tls: { certPem?: string; keyPem?: string; caPem: string }, what: string) => {
      const e = await connect(AgentService, auth.addr, tls).listAccessibleNodes({}).then(
        () => undefined,
        (err: unknown) => fromConnectError(err, auth.addr),
      );
      assert.equal(e?.code, "ERR_NOT_AUTHORIZED", `${what}: ${e?.message ?? "accepted"}`);
    };
    await refused({ certPem: state.renewal_cert_pem, keyPem: state.renewal_key_pem, caPem }, "the renewal certificate");
    await refused({ certPem: admin.cert_pem, keyPem: admin.key_pem, caPem }, "the admin certificate");
    await refused({ caPem }, "no certificate");
    const ok = await connect(AgentService, auth.addr, output).listAccessibleNodes({});
    assert.equal(ok.identity, "github-deploy");
    assert.deepEqual(ok.roles, ["ci-deployer"]);
    const renew = await connect(RenewService, auth.addr, output).renew({}).then(
      () => undefined,
      (err: unknown) => fromConnectError(err, auth.addr),
    );
    assert.equal(renew?.code, "ERR_NOT_AUTHORIZED", renew?.message ?? "the output certificate renewed");
  });

  test("msh ssh and msh scp log in and copy with the dir's certificate; root is refused", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const ssh = await msh("ssh", `--identity-dir=${dest}`, "-p", String(sshd.port), ...FAST_SSH, "deploy@127.0.0.1", "echo", "hello", "from", "$(whoami)");
    assert.equal(ssh.code, 0, ssh.stderr);
    assert.equal(ssh.stdout, "hello from deploy\n");
    const asRoot = await msh("ssh", `--identity-dir=${dest}`, "-p", String(sshd.port), ...FAST_SSH, "-l", "root", "127.0.0.1", "true");
    assert.equal(asRoot.code, 255);
    assert.match(asRoot.stderr, /Permission denied/);

    const local = join(work, "artifact.txt");
    writeFileSync(local, "build 42\n");
    const remote = `/tmp/mezite-msh-${process.pid}.txt`;
    const scp = await msh("scp", `--identity-dir=${dest}`, "--", "-P", String(sshd.port), ...FAST_SSH, local, `deploy@127.0.0.1:${remote}`);
    assert.equal(scp.code, 0, scp.stderr);
    try {
      assert.equal(readFileSync(remote, "utf8"), "build 42\n");
      assert.equal(spawnSync("stat", ["-c", "%U", remote], { encoding: "utf8" }).stdout.trim(), "deploy", "written by the deploy login");
    } finally {
      rmSync(remote, { force: true });
    }
  });

  test("an identity dir holding spaces and % works for msh ssh, msh scp and msh config with real ssh", async (t) => {
    if (missing || !SSH_PATH) return missingComponent(t, ...(missing ?? ["ssh", "apt-get install openssh-client"]));
    // ssh splits option values on blanks and expands %-tokens (%d is the home dir; "%/" is an error).
    const odd = await joinIdentity("odd-dir", "ci-deployer", "ci certs %d 100%");
    const ssh = await msh("ssh", `--identity-dir=${odd}`, "-p", String(sshd.port), ...FAST_SSH, "deploy@127.0.0.1", "echo", "in", "as", "$(whoami)");
    assert.equal(ssh.code, 0, ssh.stderr);
    assert.equal(ssh.stdout, "in as deploy\n");

    const local = join(work, "odd artifact.txt");
    writeFileSync(local, "build 43\n");
    const remote = `/tmp/mezite-msh-odd-${process.pid}.txt`;
    const scp = await msh("scp", `--identity-dir=${odd}`, "--", "-P", String(sshd.port), ...FAST_SSH, local, `deploy@127.0.0.1:${remote}`);
    assert.equal(scp.code, 0, scp.stderr);
    try {
      assert.equal(readFileSync(remote, "utf8"), "build 43\n");
    } finally {
      rmSync(remote, { force: true });
    }

    const cfg = await msh("config", `--identity-dir=${odd}`, "--login=deploy");
    assert.equal(cfg.code, 0, cfg.stderr);
    const file = join(work, "odd_ssh_config");
    writeFileSync(file, cfg.stdout);
    const viaConfig = spawnSync(SSH_PATH, ["-F", file, "-p", String(sshd.port), ...FAST_SSH, "127.0.0.1", "whoami"], { encoding: "utf8" });
    assert.equal(viaConfig.status, 0, viaConfig.stderr);
    assert.equal(viaConfig.stdout, "deploy\n");
    // The daemon's own ssh_config in that dir works too.
    const viaDaemon = spawnSync(SSH_PATH, ["-F", join(odd, "ssh_config"), "-p", String(sshd.port), ...FAST_SSH, "deploy@127.0.0.1", "whoami"], { encoding: "utf8" });
    assert.equal(viaDaemon.status, 0, viaDaemon.stderr);
  });

  test("msh config is an ssh_config ssh -G resolves to the dir's files; msh status reads the certificate", async (t) => {
    if (missing || !SSH_PATH) return missingComponent(t, ...(missing ?? ["ssh", "apt-get install openssh-client"]));
    const cfg = await msh("config", `--identity-dir=${dest}`, "--host=web-*", "--login=deploy");
    assert.equal(cfg.code, 0, cfg.stderr);
    const file = join(work, "ansible_ssh_config");
    writeFileSync(file, cfg.stdout);
    const g = spawnSync(SSH_PATH, ["-G", "-F", file, "web-prod"], { encoding: "utf8" });
    assert.equal(g.status, 0, g.stderr);
    for (const line of ["user deploy", `identityfile ${join(dest, "ssh_key")}`, `certificatefile ${join(dest, "ssh_cert")}`, `userknownhostsfile ${join(dest, "ssh_known_hosts")}`, "identitiesonly yes", "stricthostkeychecking true"]) {
      assert.ok(g.stdout.split("\n").includes(line), `ssh -G lacks "${line}":\n${g.stdout}`);
    }
    const other = spawnSync(SSH_PATH, ["-G", "-F", file, "db-1"], { encoding: "utf8" });
    assert.ok(!other.stdout.includes(`certificatefile ${join(dest, "ssh_cert")}`), "the Host pattern limits the block");

    const st = await msh("status", `--identity-dir=${dest}`, "--format=json");
    assert.equal(st.code, 0, st.stderr);
    const doc = JSON.parse(st.stdout) as Record<string, unknown>;
    assert.equal(doc["identity"], "github-deploy");
    assert.deepEqual(doc["roles"], ["ci-deployer"]);
    assert.deepEqual(doc["principals"], ["deploy"]);
    assert.equal(doc["serial"], readFileSync(join(dest, "cert_serial"), "utf8").trim());
    assert.equal(doc["expired"], false);
    assert.ok((doc["seconds_left"] as number) > 3000 && (doc["seconds_left"] as number) <= 3600, String(doc["seconds_left"]));
    const text = await msh("status", `--identity-dir=${dest}`);
    assert.match(text.stdout, /^Identity: {4}github-deploy\n/);
    assert.match(text.stdout, /\nLogins: {6}deploy\n/);
    assert.match(text.stdout, /\nValid until: \S+ \((59m\d*s?|1h) left\)\n/);
  });

  test("bad input and an expired certificate: one line, SPEC §6 exit codes", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const noDir = await msh("status");
    assert.equal(noDir.code, 2);
    assert.match(oneLine(noDir.stderr), /--identity-dir or \$MEZITE_IDENTITY_DIR is required/);
    const nowhere = await msh("ls", "--identity-dir=/nonexistent/mezite");
    assert.equal(nowhere.code, 2);
    assert.match(oneLine(nowhere.stderr), /does not exist/);
    const badFormat = await msh("ls", `--identity-dir=${dest}`, "--format=xml");
    assert.equal(badFormat.code, 2);
    assert.match(oneLine(badFormat.stderr), /--format must be/);

    // A dir whose certificate expired an hour ago (signed by a throwaway CA: msh reads, sshd verifies).
    const old = join(work, "expired");
    mkdirSync(old);
    const ca = generateKeyPairSync("ed25519");
    const key = generateKeyPairSync("ed25519");
    const now = Math.floor(Date.now() / 1000);
    const blob = signSshCertificate(
      {
        type: "user",
        publicKey: key.publicKey,
        serial: 7n,
        keyId: "old",
        principals: ["deploy"],
        validAfter: now - 7200,
        validBefore: now - 3600,
        extensions: { [CERT_EXTENSIONS.identity]: JSON.stringify({ name: "old-bot", id: "i1", instance: "n1" }), [CERT_EXTENSIONS.roles]: "ci-deployer" },
      },
      ca.privateKey,
    );
    writeFileSync(join(old, "ssh_cert"), formatSshCertificate(blob) + "\n");
    writeFileSync(join(old, "ssh_key"), encodeOpenSSHPrivateKey(key.privateKey), { mode: 0o600 });
    const ssh = await msh("ssh", `--identity-dir=${old}`, "deploy@127.0.0.1", "true");
    assert.equal(ssh.code, 1);
    assert.match(oneLine(ssh.stderr), /expired 60m ago: is mezd identity running/);
    const st = await msh("status", `--identity-dir=${old}`);
    assert.equal(st.code, 1, "status says so with its exit code");
    assert.match(st.stdout, /EXPIRED 1h ago/);

    writeFileSync(join(old, "ssh_cert"), "garbage\n");
    const garbage = await msh("status", `--identity-dir=${old}`);
    assert.equal(garbage.code, 1);
    assert.match(oneLine(garbage.stderr), /is not an SSH certificate/);
    assert.ok(!garbage.stderr.includes("PRIVATE KEY"));
  });

  test("msh ls refuses a locked identity and a deleted one with exit 3", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const d = await joinIdentity("short-lived", "ci-deployer");
    assert.equal((await msh("ls", `--identity-dir=${d}`)).code, 0);
    await mezctlOk(auth, "locks", "add", "--agent-identity=short-lived", "--reason=incident 7");
    const locked = await msh("ls", `--identity-dir=${d}`);
    assert.equal(locked.code, 3, locked.stderr);
    assert.match(oneLine(locked.stderr), /locked/);
    await mezctlOk(auth, "agent-identities", "rm", "short-lived");
    const gone = await msh("ls", `--identity-dir=${d}`);
    assert.equal(gone.code, 3, gone.stderr);
    assert.match(oneLine(gone.stderr), /deleted/);
  });
});
