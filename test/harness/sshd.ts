/**
 * A private sshd on 127.0.0.1 for real-component tests, and the stock ssh client to talk to it.
 * sshd runs in the foreground (-D) as our child; stop() ends it, and so does process exit, so a
 * failed or interrupted test leaves nothing listening.
 */
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import type { Socket } from "node:net";
import { join, resolve } from "node:path";
import { SSH_PATH, SSHD_PATH } from "./require.js";
import { freePort } from "./net.js";

export interface SshdOptions {
  /** Directory for the config and the log (made absolute: sshd resets connections otherwise). */
  dir: string;
  hostKeyPath: string;
  hostCertPath?: string;
  trustedUserCaKeysPath?: string;
  /** A missing file refuses every key; a 0-byte file is an empty KRL. */
  revokedKeysPath?: string;
  /**
   * Lines placed before the harness defaults, so they win (sshd keeps the first value of a
   * keyword). No `Match` blocks: they would swallow the defaults that follow.
   */
  extraConfig?: string[];
}

export interface Sshd {
  port: number;
  logPath: string;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
function killAll(): void {
  for (const child of running) child.kill("SIGKILL");
}
process.on("exit", killAll);
// A signal skips "exit": kill sshd, then re-raise so the signal still ends the process.
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(sig, () => {
    killAll();
    process.kill(process.pid, sig);
  });
}


function canConnect(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      ok(true);
    });
    sock.once("error", () => ok(false));
  });
}

function readLog(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function config(opts: SshdOptions, port: number): string {
  return [
    ...(opts.extraConfig ?? []),
    `Port ${port}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${resolve(opts.hostKeyPath)}`,
    ...(opts.hostCertPath !== undefined ? [`HostCertificate ${resolve(opts.hostCertPath)}`] : []),
    ...(opts.trustedUserCaKeysPath !== undefined ? [`TrustedUserCAKeys ${resolve(opts.trustedUserCaKeysPath)}`] : []),
    ...(opts.revokedKeysPath !== undefined ? [`RevokedKeys ${resolve(opts.revokedKeysPath)}`] : []),
    "PidFile none",
    "UsePAM no",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PubkeyAuthentication yes",
    "AuthorizedKeysFile none",
    // Root may log in with a certificate, so refusing root proves the principal check.
    "PermitRootLogin prohibit-password",
    "UseDNS no",
    "LogLevel VERBOSE",
    "",
  ].join("\n");
}

async function startOnce(opts: SshdOptions): Promise<Sshd | "port-taken"> {
  if (SSHD_PATH === undefined) throw new Error("sshd is not installed");
  const dir = resolve(opts.dir);
  const port = await freePort();
  const configPath = join(dir, `sshd_config.${port}`);
  const logPath = join(dir, `sshd.${port}.log`);
  writeFileSync(configPath, config(opts, port));
  writeFileSync(logPath, "");
  chmodSync(resolve(opts.hostKeyPath), 0o600); // sshd ignores a group/world-readable host key

  const child = spawn(SSHD_PATH, ["-D", "-f", configPath, "-E", logPath], { stdio: ["ignore", "ignore", "pipe"] });
  running.add(child);
  // Unreferenced: a test that forgets stop() ends anyway, and the exit hook kills sshd.
  child.unref();
  (child.stderr as Socket).unref();
  let stderr = ""; // config errors come here, before the log file is opened
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  let exited = false;
  const exit = new Promise<void>((ok) => child.once("exit", () => ((exited = true), running.delete(child), ok())));
  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
    await exit;
    clearTimeout(timer);
  };

  const deadline = Date.now() + 5000;
  while (!exited && Date.now() < deadline) {
    if (await canConnect(port)) return { port, logPath, stop };
    await new Promise((ok) => setTimeout(ok, 10)); // polling for readiness, not waiting for time
  }
  await stop();
  const log = readLog(logPath);
  if (/Address already in use/.test(stderr + log)) return "port-taken";
  throw new Error(`sshd did not start listening on 127.0.0.1:${port}; its output:\n${stderr}${log}`);
}

/** Starts sshd on a free port and resolves once it accepts TCP connections. */
export async function startSshd(opts: SshdOptions): Promise<Sshd> {
  if (process.getuid?.() === 0) mkdirSync("/run/sshd", { recursive: true }); // privilege separation dir
  for (let attempt = 0; attempt < 3; attempt++) {
    const started = await startOnce(opts);
    if (started !== "port-taken") return started;
  }
  throw new Error("sshd could not find a free port after 3 attempts");
}

export interface SshRunOptions {
  port: number;
  user: string;
  keyPath: string;
  certPath?: string;
  /** Without one, host keys are not checked at all (StrictHostKeyChecking=no, no file). */
  knownHostsPath?: string;
  /** Default: "yes" with a knownHostsPath, else "no". */
  strictHostKeyChecking?: "yes" | "no" | "accept-new";
  /** Extra ssh arguments (e.g. ["-o", "HostKeyAlgorithms=..."]); they win over the defaults. */
  extraOptions?: string[];
  command: string;
  timeoutMs?: number;
}

export interface SshResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one command over /usr/bin/ssh with nothing from the environment (no agent, no config). */
export function sshRun(opts: SshRunOptions): Promise<SshResult> {
  const ssh = SSH_PATH;
  if (ssh === undefined) throw new Error("ssh is not installed");
  const strict = opts.strictHostKeyChecking ?? (opts.knownHostsPath !== undefined ? "yes" : "no");
  const o = (v: string) => ["-o", v];
  const args = [
    // First: ssh keeps the first value given for an option, so these override the defaults below.
    ...(opts.extraOptions ?? []),
    "-F", "/dev/null",
    "-p", String(opts.port),
    "-l", opts.user,
    "-i", resolve(opts.keyPath),
    ...(opts.certPath !== undefined ? o(`CertificateFile=${resolve(opts.certPath)}`) : []),
    ...o("IdentitiesOnly=yes"),
    ...o("IdentityAgent=none"),
    ...o("BatchMode=yes"),
    ...o("ConnectTimeout=5"),
    ...o("PasswordAuthentication=no"),
    ...o(`UserKnownHostsFile=${opts.knownHostsPath !== undefined ? resolve(opts.knownHostsPath) : "/dev/null"}`),
    ...o("GlobalKnownHostsFile=/dev/null"),
    ...o(`StrictHostKeyChecking=${strict}`),
    ...o("LogLevel=ERROR"),
    // The default post-quantum hybrid kex costs ~300 ms a login here; tests don't need it.
    ...o("KexAlgorithms=curve25519-sha256"),
    "127.0.0.1",
    opts.command,
  ];
  return new Promise((ok, fail) => {
    const child = spawn(ssh, args, { stdio: ["ignore", "pipe", "pipe"], timeout: opts.timeoutMs ?? 15000 });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.once("error", fail);
    child.once("close", (code) => ok({ code, stdout, stderr }));
  });
}

/**
 * Makes sure a local user exists that sshd will let in with a certificate: created with a home
 * if missing, and unlocked if locked (Debian's useradd locks it, and sshd with UsePAM no refuses
 * locked accounts). Needs root.
 */
export function ensureUser(name: string): void {
  if (spawnSync("id", ["-u", name]).status !== 0) {
    const add = spawnSync("useradd", ["-m", name], { encoding: "utf8" });
    // 9 = already exists: another test file created it at the same moment.
    if (add.status !== 0 && add.status !== 9) throw new Error(`useradd ${name} failed: ${add.stderr}`);
  }
  const shadow = readFileSync("/etc/shadow", "utf8").split("\n").find((l) => l.startsWith(`${name}:`));
  if (shadow?.split(":")[1]?.startsWith("!") === true) {
    const mod = spawnSync("usermod", ["-p", "*", name], { encoding: "utf8" });
    if (mod.status !== 0) throw new Error(`usermod -p '*' ${name} failed: ${mod.stderr}`);
  }
}
