/**
 * What the `mezd identity` end-to-end tests share: the real daemon as a child process (one-shot
 * or long-running), an auth service with the seed's role, and a private sshd whose host
 * certificate comes from the cluster's Host CA and which trusts its User CA.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, type TestContext } from "node:test";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { connect } from "../../src/api/client.js";
import { AdminService } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { openCaStore } from "../../src/auth/cas.js";
import { openBackend } from "../../src/backend/open.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { encodeOpenSSHPrivateKey } from "../../src/ca/sshkey.js";
import { MEZD, SEED_ROLE, mezctlOk, run, startAuth, tokenFrom, type AuthProcess, type RunResult } from "../harness/auth.js";
import { missingComponent, OPENSSL_PATH, SSH_KEYGEN_PATH, SSH_PATH, SSHD_PATH } from "../harness/require.js";
import { ensureUser, startSshd, type Sshd } from "../harness/sshd.js";

/** An auth service that knows the seed's ci-deployer role (deploy allowed, root denied). */
export async function startAuthWithRole(dir: string): Promise<AuthProcess> {
  const auth = await startAuth();
  const rolePath = join(dir, "role.yaml");
  writeFileSync(rolePath, SEED_ROLE);
  await mezctlOk(auth, "create", "-f", rolePath);
  return auth;
}

/** Creates an agent identity with the seed's role and returns its one-time token. */
export async function addIdentity(auth: AuthProcess, name: string): Promise<string> {
  return tokenFrom(await mezctlOk(auth, "agent-identities", "add", `--name=${name}`, "--roles=ci-deployer"));
}

export interface Status {
  name: string;
  locked: boolean;
  generation: number;
  instances: { id: string; generation: number; locked: boolean }[];
}

export async function status(auth: AuthProcess, name: string): Promise<Status> {
  return JSON.parse(await mezctlOk(auth, "agent-identities", "status", name, "--format=json")) as Status;
}

export interface AuditEvent {
  type: string;
  identity: string;
  instance: string;
  generation: number;
  serial: string;
  success: boolean;
  error: string;
}

export async function audit(auth: AuthProcess, type: string): Promise<AuditEvent[]> {
  return JSON.parse(await mezctlOk(auth, "audit", "ls", `--type=${type}`, "--format=json")) as AuditEvent[];
}

const admin = (auth: AuthProcess) => {
  const id = readAdminIdentity(auth.identityPath);
  return connect(AdminService, auth.addr, { certPem: id.cert_pem, keyPem: id.key_pem, caPem: id.ca_pem });
};

/** `status` through the admin API: for checks in a loop, without a CLI start each time. */
export async function quickStatus(auth: AuthProcess, name: string): Promise<Status> {
  const s = (await admin(auth).getAgentIdentity({ name })).identity!;
  return { name: s.name, locked: s.locked, generation: Number(s.generation), instances: s.instances.map((i) => ({ id: i.id, generation: Number(i.generation), locked: i.locked })) };
}

/** `audit` through the admin API. */
export async function quickAudit(auth: AuthProcess, type: string): Promise<AuditEvent[]> {
  const events = [];
  for await (const page of admin(auth).listAudit({ type })) events.push(...page.events);
  return events.map((e) => ({ type: e.type, identity: e.identity, instance: e.instance, generation: Number(e.generation), serial: e.serial, success: e.success, error: e.error }));
}

/** `mezd identity start ... --one-shot` to completion. */
export function oneShot(addr: string, dest: string, args: string[] = [], env: Record<string, string> = {}): Promise<RunResult> {
  return run(MEZD, ["identity", "start", `--auth-server=${addr}`, `--destination-dir=${dest}`, "--one-shot", ...args], { env, timeoutMs: 60_000 });
}

/** Lines on stderr that are not the daemon's JSON log: what a human reads. */
export function humanLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l !== "" && !l.startsWith("{"));
}

/** The JSON log lines, parsed. */
export function logLines(output: string): Record<string, unknown>[] {
  return output.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
}

export interface Daemon {
  proc: ChildProcess;
  pid: number;
  output(): string;
  /** Resolves once `re` has matched the output `times` times. */
  waitFor(re: RegExp, times?: number, timeoutMs?: number): Promise<void>;
  count(re: RegExp): number;
  /** Sends `sig` (default SIGTERM) and resolves with the exit code (128+n for a signal). */
  stop(sig?: NodeJS.Signals): Promise<number>;
  exited: Promise<number>;
}

const daemons = new Set<ChildProcess>();
process.on("exit", () => killDaemons());

/** For `after`: a failed test must not leave a daemon holding the test process open. */
export function killDaemons(): void {
  for (const p of daemons) p.kill("SIGKILL");
}

const SIGNALS: Partial<Record<string, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** A long-running `mezd identity start` (not one-shot). */
export function startDaemon(addr: string, dest: string, args: string[] = [], env: Record<string, string> = {}): Daemon {
  const proc = spawn(MEZD, ["identity", "start", `--auth-server=${addr}`, `--destination-dir=${dest}`, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  daemons.add(proc);
  let out = "";
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const l of listeners) l();
  };
  proc.stdout!.on("data", onData);
  proc.stderr!.on("data", onData);
  const exited = new Promise<number>((res) =>
    proc.on("close", (code, signal) => {
      daemons.delete(proc);
      for (const l of listeners) l();
      res(code ?? 128 + (SIGNALS[signal ?? ""] ?? 0));
    }),
  );
  const count = (re: RegExp) => out.match(new RegExp(re.source, re.flags.includes("g") ? re.flags : re.flags + "g"))?.length ?? 0;
  return {
    proc,
    pid: proc.pid!,
    output: () => out,
    count,
    exited,
    waitFor: (re, times = 1, timeoutMs = 15_000) =>
      new Promise<void>((res, rej) => {
        const check = () => {
          if (count(re) >= times) done(res);
          else if (proc.exitCode !== null || proc.signalCode !== null) done(() => rej(new Error(`daemon exited before ${re} (x${times}):\n${out}`)));
        };
        const timer = setTimeout(() => done(() => rej(new Error(`timed out waiting for ${re} (x${times}):\n${out}`))), timeoutMs);
        const done = (f: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          f();
        };
        listeners.add(check);
        check();
      }),
    stop: (sig = "SIGTERM") => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      return exited;
    },
  };
}

export const JOINED = /"msg":"agent identity joined"/;
export const RENEWED = /"msg":"agent identity renewed"/;

/** Why the sshd tests cannot run here, or undefined when they can. */
export function sshdMissing(t: TestContext): boolean {
  const why: [string, string] | undefined =
    SSHD_PATH === undefined ? ["sshd", "apt-get install openssh-server"]
    : SSH_PATH === undefined || SSH_KEYGEN_PATH === undefined ? ["ssh", "apt-get install openssh-client"]
    : OPENSSL_PATH === undefined ? ["openssl", "apt-get install openssl"]
    : process.getuid?.() !== 0 ? ["root", "these tests run sshd as root and log in as the local user deploy"]
    : undefined;
  if (why) missingComponent(t, ...why);
  return why !== undefined;
}

export interface Node {
  sshd: Sshd;
  /** The Host CA's and User CA's SSH public keys (authorized_keys lines). */
  hostCaLine: string;
  userCaLine: string;
}

/**
 * A Mezite-style node without `mezd node` (tested elsewhere): the host certificate is signed
 * with the Host CA read from the auth service's own data dir, the way the service stores it.
 */
export async function startNode(auth: AuthProcess, dir: string): Promise<Node> {
  mkdirSync(dir, { recursive: true });
  const backend = await openBackend("sqlite", auth.dataDir);
  let cas;
  try {
    cas = (await openCaStore(backend, auth.dataDir, "test.mezite", Date.now())).cas;
  } finally {
    await backend.close();
  }
  const host = generateKeyPairSync("ed25519");
  const now = Math.floor(Date.now() / 1000);
  const hostKeyPath = join(dir, "ssh_host_ed25519_key");
  writeFileSync(hostKeyPath, encodeOpenSSHPrivateKey(host.privateKey), { mode: 0o600 });
  const cert = signSshCertificate(
    { type: "host", publicKey: host.publicKey, serial: 1n, keyId: "node/test", principals: ["127.0.0.1", "localhost"], validAfter: now - 60, validBefore: now + 3600 },
    cas.host.sshPrivate,
  );
  writeFileSync(`${hostKeyPath}-cert.pub`, `${formatSshCertificate(cert)}\n`);
  writeFileSync(join(dir, "user_ca.pub"), `${cas.user.sshPublicLine}\n`);
  ensureUser("deploy");
  const sshd = await startSshd({ dir, hostKeyPath, hostCertPath: `${hostKeyPath}-cert.pub`, trustedUserCaKeysPath: join(dir, "user_ca.pub") });
  return { sshd, hostCaLine: cas.host.sshPublicLine, userCaLine: cas.user.sshPublicLine };
}

/** The seed's ssh command, verbatim but for the port and batch mode (no prompt in a test). */
export function seedSsh(dest: string, port: number, user: string, extra: string[] = []): Promise<RunResult> {
  return run(SSH_PATH!, [
    ...extra, // first: ssh keeps the first value of an option
    "-i", join(dest, "ssh_key"),
    "-o", `CertificateFile=${join(dest, "ssh_cert")}`,
    "-o", `UserKnownHostsFile=${join(dest, "ssh_known_hosts")}`,
    "-o", "BatchMode=yes",
    `${user}@127.0.0.1`, "-p", String(port), "whoami",
  ], { timeoutMs: 15_000 });
}

export function readState(storageDir: string): { generation: string; instance_id: string; renewal_cert_pem: string } {
  return JSON.parse(readFileSync(join(storageDir, "state.json"), "utf8")) as { generation: string; instance_id: string; renewal_cert_pem: string };
}

/**
 * What most identity test files share: before them, a temp dir and an auth service with the seed
 * role; after them, every daemon killed, the node's sshd stopped (set `node` when a test starts
 * one), the service stopped and the dir removed.
 */
export function identityTestbed(name: string): { readonly tmp: string; readonly auth: AuthProcess; node: Node | undefined } {
  const bed = { tmp: "", auth: undefined as unknown as AuthProcess, node: undefined as Node | undefined };
  before(async () => {
    bed.tmp = mkdtempSync(join(tmpdir(), `mezite-identity-${name}-`));
    bed.auth = await startAuthWithRole(bed.tmp);
  });
  after(async () => {
    killDaemons();
    await bed.node?.sshd.stop();
    await bed.auth?.stop();
    if (bed.tmp) rmSync(bed.tmp, { recursive: true, force: true });
  });
  return bed;
}
