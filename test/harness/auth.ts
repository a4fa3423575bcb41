/**
 * Starts the real auth service (`bin/mezd auth start`) on a random loopback port in a temp data
 * dir, and runs the real `bin/mezctl` against it. Everything started is stopped at exit, even
 * when a test fails.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { unsafeCommandReason } from "../../src/node/join.js";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "../..");
export const MEZD = join(ROOT, "bin/mezd");
export const MEZCTL = join(ROOT, "bin/mezctl");

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/**
 * The mezd that sshd may run as AuthorizedPrincipalsCommand. sshd refuses a command below any
 * group- or world-writable directory, so a checkout under /tmp gets a root-owned wrapper.
 */
export function principalsMezd(): string {
  if (unsafeCommandReason(MEZD) === undefined) return MEZD;
  const dir = "/usr/local/libexec/mezite-test";
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const wrapper = join(dir, `mezd-${createHash("sha256").update(ROOT).digest("hex").slice(0, 12)}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ${MEZD} "$@"\n`, { mode: 0o755 });
  return wrapper;
}

/**
 * The tests run the real binaries, bin/* on dist/bundle/: npm test builds both first; a lone test
 * file needs them too. tsc alone leaves the bundle older than dist/, i.e. the binaries on old code.
 */
export function ensureBuilt(): void {
  const mtime = (p: string) => (existsSync(join(ROOT, p)) ? statSync(join(ROOT, p)).mtimeMs : undefined);
  const dist = mtime("dist/cli/mezd.js");
  const bundles = [mtime("dist/bundle/mezd.js"), mtime("dist/bundle/mezctl.js")];
  if (dist === undefined || bundles.includes(undefined)) throw new Error("dist/ is missing: run npm run build first");
  if (bundles.some((b) => b! < dist)) throw new Error("dist/bundle/ is older than dist/ (tsc alone was run): run npm run build");
}

export interface AuthProcess {
  addr: string;
  port: number;
  dataDir: string;
  identityPath: string;
  proc: ChildProcess;
  output(): string;
  stop(): Promise<void>;
  kill9(): Promise<void>;
  /** Starts it again on the same port and data dir. */
  restart(): Promise<void>;
}

export interface StartAuthOptions {
  dataDir?: string;
  backend?: string;
  port?: number;
  extraArgs?: string[];
  env?: Record<string, string>;
  /** --cluster-name; null: leave the flag out. Default test.mezite. */
  clusterName?: string | null;
}

export async function startAuth(o: StartAuthOptions = {}): Promise<AuthProcess> {
  ensureBuilt();
  const dataDir = o.dataDir ?? mkdtempSync(join(tmpdir(), "mezite-auth-"));
  let out = "";
  let proc!: ChildProcess;
  let port = o.port ?? 0;
  const launch = async () => {
    const args = ["auth", "start", `--data-dir=${dataDir}`, `--listen=127.0.0.1:${port}`, ...(o.clusterName === null ? [] : [`--cluster-name=${o.clusterName ?? "test.mezite"}`]), ...(o.backend ? [`--backend=${o.backend}`] : []), ...(o.extraArgs ?? [])];
    proc = spawn(MEZD, args, { env: { ...process.env, ...o.env }, stdio: ["ignore", "pipe", "pipe"] });
    live.add(proc);
    proc.on("exit", () => live.delete(proc));
    const ready = new Promise<number>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`auth service did not start:\n${out}`)), 20_000);
      proc.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /auth service listening on [^\s]+:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          res(Number(m[1]));
        }
      });
      proc.stderr!.on("data", (d: Buffer) => (out += d.toString()));
      proc.on("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`auth service exited with ${code}:\n${out}`));
      });
    });
    port = await ready;
  };
  await launch();
  const waitExit = (sig: NodeJS.Signals) =>
    new Promise<void>((res) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return res();
      proc.once("exit", () => res());
      proc.kill(sig);
    });
  const handle: AuthProcess = {
    get addr() {
      return `127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    dataDir,
    identityPath: join(dataDir, "admin.identity"),
    get proc() {
      return proc;
    },
    output: () => out,
    stop: async () => {
      await waitExit("SIGTERM");
      if (!o.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
    kill9: () => waitExit("SIGKILL"),
    restart: launch,
  };
  return handle;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a real binary to completion. */
export function run(bin: string, args: string[], opts: { env?: Record<string, string>; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((res) => {
    const p = spawn(bin, args, { env: { ...process.env, ...opts.env }, stdio: ["pipe", "pipe", "pipe"] });
    live.add(p);
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
    p.on("close", (code, signal) => {
      clearTimeout(timer);
      live.delete(p);
      res({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    // A child that exits before reading its stdin (most do not read it) makes this write EPIPE.
    p.stdin.on("error", () => {});
    p.stdin.end(opts.input ?? "");
  });
}

export function mezctl(auth: { identityPath: string }, ...args: string[]): Promise<RunResult> {
  return run(MEZCTL, [`--identity=${auth.identityPath}`, ...args]);
}

/** mezctl that must succeed; returns stdout. */
export async function mezctlOk(auth: { identityPath: string }, ...args: string[]): Promise<string> {
  const r = await mezctl(auth, ...args);
  if (r.code !== 0) throw new Error(`mezctl ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** The seed's ci-deployer role, as shipped in examples/. */
export const SEED_ROLE_PATH = join(ROOT, "examples/ci-deployer.yaml");
export const SEED_ROLE = readFileSync(SEED_ROLE_PATH, "utf8");

/** Token from `agent-identities add` / `tokens add` text output. */
export function tokenFrom(stdout: string): string {
  const m = /^Token: ([0-9a-f]{64})$/m.exec(stdout);
  if (!m) throw new Error(`no token in:\n${stdout}`);
  return m[1]!;
}
