/**
 * The release tarball on a machine without Node (SPEC §17): one executable behind the names mezd,
 * msh and mezctl (hard links), and the seed's `tar -xz mezd msh`. `npm run release`'s tarball is
 * extracted into an empty directory and everything runs from there with PATH = that directory
 * and /usr/bin:/bin, inside a private mount namespace where this machine's node is covered by an
 * empty file (so `command -v node` fails there). From the standalone executable alone: an auth
 * service on SQLite (the embedded addon), the seed's role and an identity made with mezctl, a
 * node joined with mezd (its default principals command is the standalone mezd itself) behind a
 * private sshd, a one-shot join with mezd, and logins with msh ssh: as deploy, and not as root.
 * The release is built first when dist/release is missing or older than its inputs.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { get as httpsGet } from "node:https";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { ROOT, SEED_ROLE_PATH, tokenFrom } from "../harness/auth.js";
import { freePort } from "../harness/net.js";
import { startPostgres } from "../harness/postgres.js";
import { PG_BIN_DIR, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { ensureUser, startSshd, type Sshd } from "../harness/sshd.js";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const TARBALL = join(ROOT, `dist/release/mezite-${VERSION}-linux-amd64.tar.gz`);
// sshd runs the principals command only from root-owned, not group/world-writable dirs: not /tmp.
const SAFE_PARENT = "/usr/local/libexec/mezite-test";
const FAST_SSH = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "KexAlgorithms=curve25519-sha256", "-o", "LogLevel=ERROR"];

const unshare = spawnSync("unshare", ["--mount", "--propagation", "private", "true"]).status === 0;
const missing = sshdTestsCannotRun() ?? (unshare ? undefined : (["unshare --mount", "util-linux, and root to make a mount namespace that hides node"] as [string, string]));

let root: string; // the extraction dir and everything the scenario writes
let bin: string;
let home: string;
let nonode: string;
const live = new Set<ChildProcess>();

/**
 * argv for running `cmd` where no node exists: a private mount namespace in which every node
 * PATH finds is covered by an empty, non-executable file; PATH = the release dir and /usr/bin:/bin.
 */
function noNode(cmd: string, args: string[]): [string, string[]] {
  const script = 'for n in node nodejs; do p=$(command -v "$n") && mount --bind "$0" "$(readlink -f "$p")" || true; done; exec "$@"';
  return ["unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script, nonode, cmd, ...args]];
}

function env(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: `${bin}:/usr/bin:/bin`, HOME: home, ...extra };
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], extraEnv: Record<string, string> = {}): Promise<Result> {
  const [c, a] = noNode(cmd, args);
  return new Promise((res) => {
    const p = spawn(c, a, { env: env(extraEnv), cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    live.add(p);
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    p.on("close", (code) => {
      clearTimeout(timer);
      live.delete(p);
      res({ code: code ?? 128, stdout, stderr });
    });
  });
}

async function ok(cmd: string, args: string[], extraEnv: Record<string, string> = {}): Promise<string> {
  const r = await run(cmd, args, extraEnv);
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")} exited ${r.code}:\n${r.stderr}`);
  return r.stdout;
}

let auth: ChildProcess | undefined;
let authAddr = "";
let authOut = "";
let sshd: Sshd | undefined;
const dataDir = () => join(root, "auth-data");
const admin = () => `--identity=${join(dataDir(), "admin.identity")}`;

describe("release: the tarball's executables work with no node on the machine", () => {
  before(async () => {
    if (missing) return; // each test says so loudly (and fails under CI)
    // Build it unless dist/release was built from these very inputs (CI's npm test covers it).
    const built = spawnSync(process.execPath, [join(ROOT, "scripts/release.mjs"), "--if-stale"], { cwd: ROOT, encoding: "utf8", timeout: 170_000 });
    assert.equal(built.status, 0, `release failed:\n${built.stdout}${built.stderr}`);
    process.stdout.write(`# ${built.stdout.trim().split("\n").join("\n# ")}\n`);

    mkdirSync(SAFE_PARENT, { recursive: true, mode: 0o755 });
    root = mkdtempSync(join(SAFE_PARENT, "release-"));
    chmodSync(root, 0o755); // the principals command runs as nobody and reads the node's ssh dir
    bin = join(root, "bin");
    home = join(root, "home");
    mkdirSync(bin);
    mkdirSync(home, { mode: 0o700 });
    nonode = join(root, "no-node-here");
    writeFileSync(nonode, "", { mode: 0o644 });
    ensureUser("deploy");
  });

  after(async () => {
    for (const p of live) p.kill("SIGKILL");
    if (auth && auth.exitCode === null) {
      const gone = new Promise((r) => auth!.once("exit", r));
      auth.kill("SIGTERM");
      await gone;
    }
    await sshd?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test("the tarball holds mezd with msh and mezctl as links to it, the units and SHA256SUMS at its root, under 40 MB, and they check", (t) => {
    if (missing) return missingComponent(t, ...missing);
    const x = spawnSync("tar", ["-xzf", TARBALL, "-C", bin], { encoding: "utf8" });
    assert.equal(x.status, 0, x.stderr);
    assert.deepEqual(readdirSync(bin).sort(), ["SHA256SUMS", "mezctl", "mezd", "mezd-auth.service", "mezd-identity@.service", "mezd-node.service", "msh"]);
    for (const p of ["mezd", "msh", "mezctl"]) assert.equal(statSync(join(bin, p)).mode & 0o755, 0o755, `${p} is executable`);
    for (const u of ["mezd-auth.service", "mezd-identity@.service", "mezd-node.service"]) {
      assert.equal(readFileSync(join(bin, u), "utf8"), readFileSync(join(ROOT, "deploy/systemd", u), "utf8"), `${u} is deploy/systemd's`);
    }
    const sums = spawnSync("sha256sum", ["--check", "--strict", "SHA256SUMS"], { cwd: bin, encoding: "utf8" });
    assert.equal(sums.status, 0, sums.stdout + sums.stderr);
    // One executable: mezd is stored first, as the file; msh and mezctl are hard links to it.
    const ino = statSync(join(bin, "mezd")).ino;
    for (const p of ["msh", "mezctl"]) assert.equal(statSync(join(bin, p)).ino, ino, `${p} is mezd's executable`);
    assert.equal(statSync(join(bin, "mezd")).nlink, 3);
    const list = spawnSync("tar", ["-tvzf", TARBALL], { encoding: "utf8" }).stdout.trim().split("\n");
    assert.match(list[0]!, /^-rwxr-xr-x 0\/0 +\d+ \S+ \S+ mezd$/);
    assert.match(list[1]!, /^hrwxr-xr-x 0\/0 +0 \S+ \S+ msh link to mezd$/);
    assert.match(list[2]!, /^hrwxr-xr-x 0\/0 +0 \S+ \S+ mezctl link to mezd$/);
    // Under 40 MB (SPEC §17): Node ships once.
    assert.ok(statSync(TARBALL).size < 40e6, `the tarball is ${statSync(TARBALL).size} bytes`);
    // Beside it: the same tarball under the unversioned name the seed's install line fetches,
    // and SHA256SUMS over both (issue 24), which sha256sum checks as the README says.
    const outer = readFileSync(join(ROOT, "dist/release/SHA256SUMS"), "utf8");
    assert.match(outer, new RegExp(`^([0-9a-f]{64})  mezite-${VERSION.replace(/\./g, "\\.")}-linux-amd64\\.tar\\.gz\\n\\1  mezite-linux-amd64\\.tar\\.gz\\n$`));
    const check = spawnSync("sha256sum", ["--check", "--strict", "SHA256SUMS"], { cwd: join(ROOT, "dist/release"), encoding: "utf8" });
    assert.equal(check.status, 0, check.stdout + check.stderr);
  });

  test("the seed's `tar -xz -C DIR mezd msh` gives two working programs; msh alone cannot come out without mezd", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const two = mkdtempSync(join(root, "seed-"));
    const x = spawnSync("tar", ["-xzf", TARBALL, "-C", two, "mezd", "msh"], { encoding: "utf8" });
    assert.equal(x.status, 0, x.stderr);
    assert.deepEqual(readdirSync(two).sort(), ["mezd", "msh"]);
    assert.equal(statSync(join(two, "msh")).ino, statSync(join(two, "mezd")).ino);
    for (const p of ["mezd", "msh"]) assert.match(await ok(join(two, p), ["--version"]), new RegExp(`^${p} ${VERSION.replace(/\./g, "\\.")} \\(commit `));
    // Either order on the command line: tar extracts in the archive's order, mezd first.
    const swapped = mkdtempSync(join(root, "seed-"));
    assert.equal(spawnSync("tar", ["-xzf", TARBALL, "-C", swapped, "msh", "mezd"]).status, 0);
    assert.match(await ok(join(swapped, "msh"), ["--version"]), /^msh /);
    // A link is a link: without mezd beside it, tar has nothing to link msh to (documented in the README).
    const alone = mkdtempSync(join(root, "alone-"));
    const a = spawnSync("tar", ["-xzf", TARBALL, "-C", alone, "msh"], { encoding: "utf8" });
    assert.notEqual(a.status, 0);
    assert.match(a.stderr, /msh: Cannot hard link to .mezd./);
    // Under a name that is none of the three, it says which names it answers to.
    const other = join(two, "mezite");
    linkSync(join(two, "mezd"), other);
    const r = await run(other, ["--version"]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^mezite: run this executable as mezd, msh or mezctl \(a link of that name\), not as "mezite": it is all three and runs the one it is called\n$/);
  });

  test("no node is reachable there, and each program prints its version and commit", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const r = await run("/bin/sh", ["-c", "command -v node || command -v nodejs"]);
    assert.notEqual(r.code, 0, `node is reachable: ${r.stdout}`);
    assert.equal(r.stdout, "");
    for (const p of ["mezd", "msh", "mezctl"]) {
      const v = await ok(p, ["--version"]);
      assert.match(v, new RegExp(`^${p} ${VERSION.replace(/\./g, "\\.")} \\(commit [0-9a-f]{7}(-dirty)?\\)\\n$`));
      // V8 takes the code cache trained at build time (scripts/release.mjs: a one-shot join and renewal).
      const debug = await run(p, ["--version"], { MEZITE_DEBUG: "1" });
      assert.match(debug.stderr, /^mezite: code cache of \d+ bytes taken\n$/);
    }
  });

  test("auth service, role, identity, node join, one-shot join and msh ssh, all from the tarball", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    // The auth service on the default SQLite backend (the addon comes out of the executable), with
    // two node:cluster workers: each is the standalone mezd started again by the primary.
    const webPort = await freePort();
    const [c, a] = noNode("mezd", ["auth", "start", `--data-dir=${dataDir()}`, "--listen=127.0.0.1:0", "--cluster-name=release.test", "--workers=2", `--web-addr=127.0.0.1:${webPort}`]);
    auth = spawn(c, a, { env: env(), cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    authAddr = await new Promise<string>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`auth service did not start:\n${authOut}`)), 20_000);
      const seen = (d: Buffer) => {
        authOut += d.toString();
        const m = /auth service listening on (127\.0\.0\.1:\d+)/.exec(authOut);
        if (m) {
          clearTimeout(timer);
          res(m[1]!);
        }
      };
      auth!.stdout!.on("data", seen);
      auth!.stderr!.on("data", seen);
      auth!.once("exit", (code) => rej(new Error(`auth service exited ${code}:\n${authOut}`)));
    });
    const cache = join(home, ".cache", "mezite");
    assert.equal(statSync(cache).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(cache).filter((f) => /^better_sqlite3-[0-9a-f]{64}\.node$/.test(f)).length, 1, readdirSync(cache).join(","));
    assert.ok(existsSync(join(dataDir(), "mezite.db")), "SQLite database written");
    // The dashboard's chart library comes out of the executable as well (no node_modules here).
    const uplot = await new Promise<{ status: number; body: string }>((res, rej) => {
      httpsGet({ host: "127.0.0.1", port: webPort, path: "/assets/uplot.js", ca: readAdminIdentity(join(dataDir(), "admin.identity")).ca_pem }, (r) => {
        let body = "";
        r.on("data", (d: Buffer) => (body += d.toString()));
        r.on("end", () => res({ status: r.statusCode ?? 0, body }));
      }).on("error", rej);
    });
    assert.equal(uplot.status, 200);
    assert.match(uplot.body, /uPlot/);

    await ok("mezctl", [admin(), "create", "-f", SEED_ROLE_PATH]);
    const nodeToken = tokenFrom(await ok("mezctl", [admin(), "tokens", "add", "--type=node", "--labels=env=staging"]));
    const nodeDir = join(root, "node-ssh");
    writeFileSync(join(root, "node.token"), nodeToken, { mode: 0o600 });
    // No --mezd-path: the standalone mezd names itself as sshd's principals command.
    await ok("mezd", ["node", "join", `--auth-server=${authAddr}`, `--token-file=${join(root, "node.token")}`, "--hostname=web-1", "--principals=127.0.0.1,localhost", `--ssh-dir=${nodeDir}`]);
    assert.match(readFileSync(join(nodeDir, "sshd_config"), "utf8"), new RegExp(`AuthorizedPrincipalsCommand ${join(bin, "mezd")} node principals`));
    const sshdDir = join(root, "sshd");
    mkdirSync(sshdDir);
    sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(nodeDir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(nodeDir, "sshd_config")}`] });

    const token = tokenFrom(await ok("mezctl", [admin(), "agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer", "--token-ttl=1h"]));
    const dest = join(root, "mezite-certs");
    await ok("mezd", ["identity", "start", `--auth-server=${authAddr}`, `--destination-dir=${dest}`, "--one-shot"], { MEZITE_TOKEN: token });

    const ssh = (login: string) => run("msh", ["ssh", `--identity-dir=${dest}`, "-p", String(sshd!.port), ...FAST_SSH, `${login}@127.0.0.1`, "whoami"]);
    const deploy = await ssh("deploy");
    assert.equal(deploy.code, 0, `msh ssh deploy@ failed:\n${deploy.stderr}\n${readFileSync(sshd.logPath, "utf8").slice(-2000)}`);
    assert.equal(deploy.stdout, "deploy\n");
    // The seed's role denies root: sshd asked the standalone mezd and got no principal.
    const rootLogin = await ssh("root");
    assert.equal(rootLogin.code, 255, rootLogin.stdout);
    assert.match(rootLogin.stderr, /Permission denied/);

    const status = JSON.parse(await ok("msh", ["status", `--identity-dir=${dest}`, "--format=json"])) as Record<string, unknown>;
    assert.equal(status["identity"], "github-deploy");
    assert.deepEqual(status["roles"], ["ci-deployer"]);
    assert.deepEqual(status["principals"], ["deploy"]);
    assert.ok((status["seconds_left"] as number) > 3000, JSON.stringify(status));

    // msh ls over the output certificate, the address and TLS CA from the daemon's state.
    const ls = JSON.parse(await ok("msh", ["ls", `--identity-dir=${dest}`, "--format=json"])) as { name: string; logins: string[] }[];
    assert.deepEqual(ls.map((n) => [n.name, n.logins]), [["web-1", ["deploy"]]]);
  });

  test("the standalone mezd runs the auth service on PostgreSQL too (pg bundled)", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    if (PG_BIN_DIR === undefined) return missingComponent(t, "PostgreSQL", "apt-get install postgresql");
    const pg = await startPostgres();
    const [c, a] = noNode("mezd", ["auth", "start", `--data-dir=${join(root, "pg-auth")}`, "--listen=127.0.0.1:0", "--cluster-name=release.test", `--backend=${pg.url}`]);
    const svc = spawn(c, a, { env: env(), cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    live.add(svc);
    let out = "";
    try {
      const addr = await new Promise<string>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`auth service on PostgreSQL did not start:\n${out}`)), 20_000);
        const seen = (d: Buffer) => {
          out += d.toString();
          const m = /auth service listening on (127\.0\.0\.1:\d+)/.exec(out);
          if (m) {
            clearTimeout(timer);
            res(m[1]!);
          }
        };
        svc.stdout.on("data", seen);
        svc.stderr.on("data", seen);
        svc.once("exit", (code) => rej(new Error(`auth service exited ${code}:\n${out}`)));
      });
      assert.match(out, /"backend":"postgres/);
      const id = `--identity=${join(root, "pg-auth", "admin.identity")}`;
      await ok("mezctl", [id, `--auth-server=${addr}`, "create", "-f", SEED_ROLE_PATH]);
      assert.match(await ok("mezctl", [id, `--auth-server=${addr}`, "get", "role/ci-deployer"]), /ci-deployer/);
    } finally {
      const gone = new Promise((r) => svc.once("exit", r));
      svc.kill("SIGTERM");
      await gone;
      live.delete(svc);
      await pg.stop();
    }
  });
});
