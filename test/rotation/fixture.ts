/**
 * What the CA rotation end-to-end tests share (SPEC §15): a real node (`mezd node join`, `mezd
 * node start`, a real sshd including the node's snippet), a real identity daemon in continuous
 * mode, and a loop logging in over ssh as deploy once a second, recording every failure.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { MEZD, mezctl, mezctlOk, principalsMezd, run, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { SSH_KEYGEN_PATH } from "../harness/require.js";
import { ensureUser, startSshd, sshRun, type Sshd } from "../harness/sshd.js";
import { JOINED, addIdentity, seedSsh, startDaemon, type Daemon } from "../identity/fixture.js";

export const NODE_NAME = "web-server-01";
/** ssh checks the host certificate against the node's name, as it would with that name in DNS. */
export const AS_NODE = ["-o", `HostKeyAlias=${NODE_NAME}`, "-o", "StrictHostKeyChecking=yes"];

export interface RotationNode {
  dir: string;
  sshd: Sshd;
  agent: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** Joins a node through `joinAddr`, starts its sshd and `mezd node start` against `agentAddr`. */
export async function startRotationNode(admin: AuthProcess, work: string, joinAddr: string, agentAddr: string): Promise<RotationNode> {
  const token = tokenFrom(await mezctlOk(admin, "tokens", "add", "--type=node", "--labels=env=staging"));
  const dir = join(work, "node");
  chmodSync(work, 0o755); // the principals command runs as nobody and must reach the ssh dir
  const joined = await run(MEZD, ["node", "join", `--auth-server=${joinAddr}`, `--token=${token}`, `--hostname=${NODE_NAME}`, `--ssh-dir=${dir}`, `--mezd-path=${principalsMezd()}`]);
  if (joined.code !== 0) throw new Error(`mezd node join failed: ${joined.stderr}`);
  ensureUser("deploy");
  const sshdDir = join(work, "sshd");
  mkdirSync(sshdDir);
  const sshd = await startSshd({ dir: sshdDir, hostKeyPath: join(dir, "ssh_host_ed25519_key"), extraConfig: [`Include ${join(dir, "sshd_config")}`] });
  const agent = spawn(MEZD, ["node", "start", `--ssh-dir=${dir}`, `--auth-server=${agentAddr}`], { stdio: ["ignore", "ignore", "pipe"] });
  let out = "";
  agent.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return {
    dir,
    sshd,
    agent,
    output: () => out,
    stop: async () => {
      agent.kill("SIGKILL");
      await sshd.stop();
    },
  };
}

export interface RotationAgent {
  dest: string;
  daemon: Daemon;
}

/** An identity with the seed's role and its daemon, checking for phase changes every second unless `args` say otherwise. */
export async function startRotationAgent(admin: AuthProcess, work: string, addr: string, args = ["--ca-check-interval=1s"]): Promise<RotationAgent> {
  const token = await addIdentity(admin, "deployer");
  const dest = join(work, "out");
  const daemon = startDaemon(addr, dest, [`--token=${token}`, ...args]);
  await daemon.waitFor(JOINED);
  return { dest, daemon };
}

/** The CA state the daemon's and the node's last certificates were issued in (the node's covers the Host CA alone). */
export function caStates(agent: RotationAgent, node: RotationNode): { agent: string | undefined; node: string | undefined } {
  const read = (p: string) => (JSON.parse(readFileSync(p, "utf8")) as { ca_state?: string }).ca_state;
  return { agent: read(join(agent.dest, ".mezite", "state.json")), node: read(join(node.dir, "node.json")) };
}

const userCaLines = (node: RotationNode) => readFileSync(join(node.dir, "user_ca.pub"), "utf8").trim().split("\n").length;

/**
 * Waits until a phase change reached the daemon and the node: the daemon renewed; for the Host
 * CA the node renewed too; for the User CA the node's user_ca.pub holds the keys the phase trusts
 * (nodes renew nothing for it). Returns the time it took.
 */
export async function reached(bed: RotationBed, type: "user" | "host", phase: string, before: ReturnType<typeof caStates>, limitMs = 20_000): Promise<number> {
  const start = Date.now();
  for (;;) {
    const s = caStates(bed.agent, bed.node);
    const nodeDone = type === "host" ? s.node !== before.node : userCaLines(bed.node) === (phase === "standby" ? 1 : 2);
    if (s.agent !== before.agent && nodeDone) return Date.now() - start;
    if (Date.now() - start > limitMs) {
      throw new Error(`the ${type} CA's ${phase} did not reach the daemon and the node within ${limitMs} ms: ${JSON.stringify(s)}\n${bed.agent.daemon.output().slice(-3000)}\n${bed.node.output().slice(-3000)}`);
    }
    await sleep(200);
  }
}

/** The seed's ssh command as deploy, once a second until stopped; every failure is kept with the phase it happened in. */
export class LoginLoop {
  attempts = 0;
  readonly failures: string[] = [];
  phase = "standby";
  private stopped = false;
  private done: Promise<void> | undefined;

  constructor(private readonly dest: string, private readonly port: number) {}

  start(): void {
    this.done = (async () => {
      while (!this.stopped) {
        const began = Date.now();
        const r = await seedSsh(this.dest, this.port, "deploy", AS_NODE);
        this.attempts++;
        if (r.code !== 0 || r.stdout !== "deploy\n") this.failures.push(`${new Date().toISOString()} in ${this.phase}: exit ${r.code}: ${r.stderr.trim()}`);
        await sleep(Math.max(0, 1000 - (Date.now() - began)));
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

/** A copy of the agent's current outputs (keys and certificates), kept aside. */
export function keepAside(dest: string, to: string): { dir: string; key: string; cert: string } {
  mkdirSync(to, { recursive: true, mode: 0o700 });
  for (const f of readdirSync(dest, { withFileTypes: true })) if (f.isFile()) copyFileSync(join(dest, f.name), join(to, f.name));
  return { dir: to, key: join(to, "ssh_key"), cert: join(to, "ssh_cert") };
}

/** Logs in with a kept-aside key and certificate (host key checks on the agent's known hosts). */
export function loginWith(kept: { key: string; cert: string }, dest: string, port: number) {
  return sshRun({ port, user: "deploy", keyPath: kept.key, certPath: kept.cert, knownHostsPath: join(dest, "ssh_known_hosts"), command: "whoami", extraOptions: ["-o", `HostKeyAlias=${NODE_NAME}`] });
}

/** An sshd presenting a kept-aside host key and certificate, trusting no user: only its host certificate is under test. */
export async function startOldHostSshd(node: RotationNode, work: string): Promise<Sshd> {
  const dir = join(work, "old-host");
  mkdirSync(dir);
  copyFileSync(join(node.dir, "ssh_host_ed25519_key"), join(dir, "host_key"));
  copyFileSync(join(node.dir, "ssh_host_ed25519_key-cert.pub"), join(dir, "host_key-cert.pub"));
  return startSshd({ dir, hostKeyPath: join(dir, "host_key"), hostCertPath: join(dir, "host_key-cert.pub") });
}

export interface CaStatusDoc {
  type: string;
  phase: string;
  mode: string | null;
  keys: { role: string; ssh_fingerprint: string; x509_pin: string; signing: boolean; trusted: boolean; holders: number }[];
  holders_total: number;
  behind: { count: number; first: string[] };
}

export async function caStatus(admin: AuthProcess): Promise<CaStatusDoc[]> {
  return JSON.parse(await mezctlOk(admin, "ca", "status", "--format=json")) as CaStatusDoc[];
}

export const report = (line: string) => process.stdout.write(`# ${line}\n`);

/** The fingerprint of the CA that signed an SSH certificate file, as ssh-keygen -L prints it. */
export function signingCa(certPath: string): string {
  const r = spawnSync(SSH_KEYGEN_PATH!, ["-L", "-f", certPath], { encoding: "utf8" });
  const m = /Signing CA: ED25519 (SHA256:\S+)/.exec(r.stdout);
  if (!m) throw new Error(`ssh-keygen -L printed no signing CA:\n${r.stdout}${r.stderr}`);
  return m[1]!;
}

export async function until<T>(what: string, limitMs: number, probe: () => Promise<T | undefined>): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  for (;;) {
    const value = await probe();
    if (value !== undefined) return { value, ms: Date.now() - start };
    if (Date.now() - start > limitMs) throw new Error(`${what}: not within ${limitMs} ms`);
    await sleep(250);
  }
}

export interface RotationBed {
  agent: RotationAgent;
  node: RotationNode;
  loop: LoginLoop;
}

/** The one line a manual step is refused with while someone is behind (SPEC §15). */
export const BEHIND_REFUSAL = /^mezctl: the (User|Host) CA cannot move to (update_clients|update_servers|standby) yet: \d+ live instances? or nodes? \([^)]+\) (is|are) not yet in step with \w+ \(see mezctl ca status\); wait for (it|them), or pass --force\n$/;

/**
 * `mezctl ca rotate` as an operator stepping as fast as it allows: again every half second while
 * it is refused because someone is behind (each refusal must be the one line). Returns the refusals.
 */
export async function stepWhenAllowed(admin: AuthProcess, args: string[], limitMs = 120_000): Promise<string[]> {
  const refusals: string[] = [];
  const start = Date.now();
  for (;;) {
    const r = await mezctl(admin, "ca", "rotate", ...args);
    if (r.code === 0) return refusals;
    if (r.code !== 1 || !BEHIND_REFUSAL.test(r.stderr)) throw new Error(`mezctl ca rotate ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
    refusals.push(r.stderr.trim());
    if (Date.now() - start > limitMs) throw new Error(`mezctl ca rotate ${args.join(" ")} still refused after ${limitMs} ms: ${r.stderr}`);
    await sleep(500);
  }
}

/** One manual step through `admin`, the time until the daemon and the node both renewed into it, then two logins' worth in it. */
export async function manualStep(bed: RotationBed, admin: AuthProcess, type: "user" | "host", phase: string): Promise<void> {
  bed.loop.phase = `${type} ${phase}`;
  const states = caStates(bed.agent, bed.node);
  await stepWhenAllowed(admin, [`--type=${type}`, ...(phase === "rollback" ? [] : ["--manual"]), `--phase=${phase}`], 20_000);
  const ms = await reached(bed, type, phase, states);
  report(`${type} CA ${phase} (through ${admin.addr}): reached the daemon and the node within ${ms} ms`);
  await sleep(2_000);
}

/** Waits for a first login with the agent's outputs (the node agent writes its first KRL within ~2 s; until then sshd may refuse), then logs in once a second. */
export async function startLoginLoop(agent: RotationAgent, node: RotationNode): Promise<LoginLoop> {
  let last = "";
  await until("a first login", 15_000, async () => {
    const r = await seedSsh(agent.dest, node.sshd.port, "deploy", AS_NODE);
    last = r.stderr;
    return r.code === 0 ? true : undefined;
  }).catch((e: Error) => Promise.reject(new Error(`${e.message}: ${last}`)));
  const loop = new LoginLoop(agent.dest, node.sshd.port);
  loop.start();
  return loop;
}
