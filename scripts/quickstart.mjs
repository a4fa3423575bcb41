#!/usr/bin/env node
// npm run quickstart: the seed's whole story on one machine, on the embedded SQLite default.
// Starts an auth service, creates the ci-deployer role and the github-deploy agent identity,
// joins one-shot, and where sshd is installed makes a private node and logs into it with the
// issued certificate. Shows each step; stops everything it started, even on Ctrl-C.
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const MEZD = join(ROOT, "bin/mezd");
const MEZCTL = join(ROOT, "bin/mezctl");
const SSHD = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"].find(existsSync);
const SSH = ["/usr/bin/ssh", "/usr/local/bin/ssh"].find(existsSync);

const started = [];
let cleaning = false;
function cleanup() {
  if (cleaning) return;
  cleaning = true;
  for (const p of started.reverse()) if (p.exitCode === null && p.signalCode === null) p.kill("SIGTERM");
}
process.on("exit", () => {
  for (const p of started) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    console.log(`\n${sig}: stopping everything quickstart started`);
    cleanup();
    process.exit(130);
  });
}

let stepNo = 0;
const step = (title) => console.log(`\n\x1b[1m[${++stepNo}] ${title}\x1b[0m`);
const show = (cmd) => console.log(`$ ${cmd}`);
const indent = (s) => s.trimEnd().split("\n").map((l) => `    ${l}`).join("\n");

function die(msg) {
  console.error(`\nquickstart failed: ${msg}`);
  cleanup();
  process.exit(1);
}

function sh(bin, args, { env, display } = {}) {
  show(display ?? [bin.replace(ROOT + "/", ""), ...args].join(" "));
  const r = spawnSync(bin, args, { encoding: "utf8", env: { ...process.env, ...env } });
  if (r.stdout.trim()) console.log(indent(r.stdout));
  if (r.status !== 0) die(`${bin} ${args[0] ?? ""} exited ${r.status}: ${r.stderr.trim().split("\n").pop()}`);
  return r.stdout;
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Waits for a line matching `re` on the process's stdout or stderr. */
function waitFor(proc, re, what) {
  return new Promise((ok) => {
    let out = "";
    let done = false;
    const timer = setTimeout(() => die(`${what} did not start in 20 s:\n${out}`), 20_000);
    const onData = (d) => {
      out += d.toString();
      const m = re.exec(out);
      if (m && !done) {
        done = true;
        clearTimeout(timer);
        ok(m);
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("exit", (code) => cleaning || die(`${what} exited with ${code}:\n${out}`));
  });
}

async function main() {
  if (!existsSync(join(ROOT, "dist/bundle/mezd.js"))) die("dist/bundle/ is missing: run npm ci (it builds) or npm run build");
  const dir = mkdtempSync(join(tmpdir(), "mezite-quickstart-"));
  chmodSync(dir, 0o755); // sshd runs the principals command as nobody, which must reach the node dir
  console.log(`Mezite quickstart — working in ${dir}`);

  step("Start the auth service (SQLite backend, CAs created on first start)");
  show(`mezd auth start --data-dir=${dir}/auth --listen=127.0.0.1:0 --cluster-name=quickstart.mezite`);
  const auth = spawn(MEZD, ["auth", "start", `--data-dir=${dir}/auth`, "--listen=127.0.0.1:0", "--cluster-name=quickstart.mezite"], { stdio: ["ignore", "pipe", "pipe"] });
  started.push(auth);
  const [line, addr] = await waitFor(auth, /auth service listening on (\S+)/, "the auth service");
  console.log(indent(line));
  const env = { MEZITE_IDENTITY: `${dir}/auth/admin.identity` };

  step("Create the seed's ci-deployer role");
  const rolePath = join(ROOT, "examples/ci-deployer.yaml");
  sh(MEZCTL, ["create", "-f", rolePath], { env });

  step("Create the github-deploy agent identity (prints its one-time token)");
  const added = sh(MEZCTL, ["agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer", "--token-ttl=1h"], { env });
  const token = /^Token: ([0-9a-f]{64})$/m.exec(added)?.[1];
  if (!token) die("no token in the output of agent-identities add");

  step("Bootstrap certificates once, as a CI job would (token passed in MEZITE_TOKEN, never on the command line)");
  const certs = join(dir, "certs");
  sh(MEZD, ["identity", "start", `--auth-server=${addr}`, `--destination-dir=${certs}`, "--one-shot"], {
    env: { MEZITE_TOKEN: token },
    display: `MEZITE_TOKEN=… mezd identity start --auth-server=${addr} --destination-dir=${certs} --one-shot`,
  });
  show(`ls ${certs}`);
  console.log(indent(spawnSync("ls", ["-l", certs], { encoding: "utf8" }).stdout));

  if (!SSHD || !SSH) {
    step("Skip the SSH login: OpenSSH's sshd is not installed (apt-get install openssh-server)");
  } else if (process.getuid?.() !== 0) {
    step("Skip the SSH login: a private sshd that logs in as 'deploy' needs root");
  } else {
    await sshLogin(dir, addr, env, certs);
  }

  step("The identity's status and the audit trail");
  sh(MEZCTL, ["agent-identities", "status", "github-deploy"], { env });
  sh(MEZCTL, ["audit", "ls", "--since=10m"], { env });

  step("The CAs that signed all this: their keys and who holds certificates of each (rotate them with mezctl ca rotate, README)");
  sh(MEZCTL, ["ca", "status"], { env });

  cleanup();
  console.log(`\nDone. Everything quickstart started is stopped; files are left in ${dir}.`);
}

/**
 * sshd runs AuthorizedPrincipalsCommand only from a root-owned path that nobody else can write;
 * a checkout under /tmp is not one, so it gets a small root-owned wrapper (as an operator would).
 */
async function principalsCommandPath() {
  const { unsafeCommandReason } = await import(join(ROOT, "dist/node/join.js"));
  const why = unsafeCommandReason(MEZD);
  if (!why) return MEZD;
  const wrapper = "/usr/local/libexec/mezite-quickstart/mezd";
  console.log(`(sshd would refuse ${MEZD}: ${why}; using a root-owned wrapper at ${wrapper})`);
  mkdirSync(dirname(wrapper), { recursive: true, mode: 0o755 });
  writeFileSync(wrapper, `#!/bin/sh\nexec ${MEZD} "$@"\n`, { mode: 0o755 });
  return wrapper;
}

async function sshLogin(dir, addr, env, certs) {
  step("Make a private node: a node token, mezd node join, and a stock sshd that includes its config");
  const added = sh(MEZCTL, ["tokens", "add", "--type=node", "--labels=env=staging"], { env });
  const nodeToken = /^Token: ([0-9a-f]{64})$/m.exec(added)?.[1];
  if (!nodeToken) die("no token in the output of tokens add");
  const sshDir = join(dir, "node");
  const mezdPath = await principalsCommandPath();
  // The host certificate names every address clients use: here the node is reached on loopback.
  sh(MEZD, ["node", "join", `--auth-server=${addr}`, "--hostname=web-server-01", "--principals=localhost,127.0.0.1", `--ssh-dir=${sshDir}`, `--mezd-path=${mezdPath}`], {
    env: { MEZITE_TOKEN: nodeToken },
    display: `MEZITE_TOKEN=… mezd node join --auth-server=${addr} --hostname=web-server-01 --principals=localhost,127.0.0.1 --ssh-dir=${sshDir}`,
  });
  if (spawnSync("id", ["deploy"]).status !== 0) {
    sh("useradd", ["-m", "-s", "/bin/sh", "deploy"]);
  }
  spawnSync("usermod", ["-p", "*", "deploy"]); // Debian leaves new accounts locked for sshd with UsePAM no
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const port = await freePort();
  const cfg = join(dir, "sshd_config");
  writeFileSync(cfg, [`Port ${port}`, "ListenAddress 127.0.0.1", `PidFile ${dir}/sshd.pid`, "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "AuthorizedKeysFile none", `Include ${sshDir}/sshd_config`, ""].join("\n"));
  show(`/usr/sbin/sshd -D -f ${cfg}   # Include ${sshDir}/sshd_config`);
  const sshd = spawn(SSHD, ["-D", "-e", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] });
  started.push(sshd);
  await waitFor(sshd, /Server listening on 127\.0\.0\.1 port/, "sshd");

  step("Log into the node as deploy with the issued certificate — stock OpenSSH on both ends");
  const knownHosts = join(certs, "ssh_known_hosts");
  const args = ["-i", join(certs, "ssh_key"), "-o", `CertificateFile=${join(certs, "ssh_cert")}`, "-o", `UserKnownHostsFile=${knownHosts}`, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-p", String(port)];
  const out = sh(SSH, [...args, "deploy@127.0.0.1", "whoami"], { display: `ssh -i ${certs}/ssh_key -o CertificateFile=${certs}/ssh_cert -o UserKnownHostsFile=${knownHosts} -p ${port} deploy@127.0.0.1 whoami` });
  if (out.trim() !== "deploy") die(`expected "deploy", got "${out.trim()}"`);
  show(`ssh … root@127.0.0.1 whoami   # the role denies root`);
  const root = spawnSync(SSH, [...args, "root@127.0.0.1", "whoami"], { encoding: "utf8" });
  console.log(indent(root.status === 0 ? `UNEXPECTED: root logged in` : `refused: ${root.stderr.trim().split("\n").pop()}`));
  if (root.status === 0) die("root must be refused");
}

main().catch((e) => die(e?.stack ?? String(e)));
