/**
 * The real auth service (`dist/cli/mezd.js auth start`) as the bench runs it: its log and audit
 * lines go to a file (a pipe read by the bench would cost the bench CPU on a 2-core machine), its
 * CPU is read from /proc for the primary and its workers, and identities are seeded through the
 * admin API and joined with the daemon's own protocol code.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync, openSync, readFileSync, writeFileSync, closeSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { TokenVerifierSchema } from "../src/api/gen/mezite/v1/admin_pb.js";
import { deriveTokenSecrets, generateToken } from "../src/ca/jointoken.js";
import { ed25519RawPublic } from "../src/ca/sshkey.js";
import { adminApi } from "../test/auth/client.js";
import { SEED_ROLE } from "../test/harness/auth.js";
import { joinOnce } from "./rpc.js";
import { MEZCTL_JS, MEZD_JS, cpuSeconds, descendants, mustRun, sleep, spawnTracked, stopChild, tempDir } from "./lib.js";

export interface Service {
  addr: string;
  dataDir: string;
  identityPath: string;
  /** The primary and its workers. */
  pids(): number[];
  /** CPU seconds used so far by the primary and its workers. */
  cpu(): number;
  /** CPU seconds of the primary alone (with --workers > 1 it hands each connection to a worker). */
  primaryCpu(): number;
  /** The Prometheus text of /metrics (needs `diagPort`). */
  metrics(): Promise<string>;
  stop(): Promise<void>;
}

export interface ServiceOptions {
  workers?: number;
  dataDir?: string;
  /** Extra node flags, e.g. --cpu-prof (cluster workers inherit them). */
  nodeArgs?: string[];
  /** Another build of mezd.js, to compare a change side by side with dist/. */
  mezdJs?: string;
  /** Serve /metrics on this port (--diag-addr); with --workers > 1 each scrape reaches one worker. */
  diagPort?: number;
  /** Serve the dashboard on this port (--web-addr). */
  webPort?: number;
  /** --backend: sqlite (the default) or a postgres:// URL. */
  backend?: string;
  /** More `mezd auth start` flags. */
  args?: string[];
}

export async function startService(o: ServiceOptions = {}): Promise<Service> {
  const mezd = o.mezdJs ?? MEZD_JS;
  if (!existsSync(mezd)) throw new Error(`${mezd} is missing: run npx tsc -p tsconfig.build.json first`);
  const dataDir = o.dataDir ?? tempDir("auth");
  const logPath = join(dataDir, `service-${Date.now()}.log`);
  const fd = openSync(logPath, "a", 0o600);
  const args = [...(o.nodeArgs ?? []), mezd, "auth", "start", `--data-dir=${dataDir}`, "--listen=127.0.0.1:0", "--cluster-name=bench.mezite", `--backend=${o.backend ?? "sqlite"}`, `--workers=${o.workers ?? 1}`];
  if (o.diagPort !== undefined) args.push(`--diag-addr=127.0.0.1:${o.diagPort}`);
  if (o.webPort !== undefined) args.push(`--web-addr=127.0.0.1:${o.webPort}`);
  args.push(...(o.args ?? []));
  const proc: ChildProcess = spawnTracked(process.execPath, args, { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const addr = await readyAddr(proc, logPath);
  // The ready line comes once every worker is listening, so they are all there now.
  const all = [proc.pid!, ...descendants(proc.pid!)];
  const pids = () => all;
  return {
    addr,
    dataDir,
    identityPath: join(dataDir, "admin.identity"),
    pids,
    cpu: () => pids().reduce((s, p) => s + cpuSeconds(p), 0),
    primaryCpu: () => cpuSeconds(proc.pid!),
    metrics: async () => {
      if (o.diagPort === undefined) throw new Error("bench: this service was started without a diagnostics port");
      return (await fetch(`http://127.0.0.1:${o.diagPort}/metrics`)).text();
    },
    stop: () => stopChild(proc, 10_000),
  };
}

async function readyAddr(proc: ChildProcess, logPath: string): Promise<string> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const text = readFileSync(logPath, "utf8");
    const m = /auth service listening on (\S+)/.exec(text);
    if (m) return m[1]!;
    if (proc.exitCode !== null) throw new Error(`auth service exited with ${proc.exitCode}:\n${text.slice(-2000)}`);
    await sleep(20);
  }
  throw new Error(`auth service did not start within 30 s (log: ${logPath})`);
}

/** mezctl against the service, as an admin would run it. */
export function mezctl(svc: Service, ...args: string[]) {
  return mustRun(process.execPath, [MEZCTL_JS, `--identity=${svc.identityPath}`, ...args]);
}

export async function createSeedRole(svc: Service): Promise<void> {
  const path = join(svc.dataDir, "role.yaml");
  writeFileSync(path, SEED_ROLE);
  await mezctl(svc, "create", "-f", path);
}

/** Adds an agent identity through the admin API (what mezctl does, without a CLI start); returns its token. */
export async function addIdentity(svc: Service, name: string): Promise<string> {
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  const verifier = create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey, ttlMs: 3_600_000n });
  await adminApi(svc).addAgentIdentity({ name, roles: ["ci-deployer"], token: verifier });
  return token;
}

/** What a load generator needs to renew as one joined daemon. */
export interface Joined {
  name: string;
  certPem: string;
  keyPem: string;
}

/** Adds and joins `n` identities named PREFIX-i, a few at a time. */
export async function joinMany(svc: Service, prefix: string, n: number, parallel = 4): Promise<{ joined: Joined[]; caPem: string }> {
  const joined: Joined[] = [];
  let caPem = "";
  let next = 0;
  const lane = async () => {
    while (next < n) {
      const name = `${prefix}-${next++}`;
      const r = await joinOnce(svc.addr, await addIdentity(svc, name));
      caPem = r.caPem;
      joined.push({ name, certPem: r.certPem, keyPem: r.keyPem });
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
  return { joined, caPem };
}
