/**
 * Revocations at scale (bench section "revocations"), in one process: an auth service's revocation
 * state over SQLite holding SERIALS revoked serials, as many deleted instances (each CI run that an
 * admin removed is one tombstone with one serial: the most rows per serial). Measures
 *  - the rebuild (Revocations.get past its cache), wall time, median of ROUNDS;
 *  - a look past the cache when nothing changed (what each second costs a service at rest);
 *  - the longest the event loop was held during those rebuilds: a 1 ms timer chain records the
 *    largest gap between its ticks, less the 1 ms it asked for;
 *  - the KRL's size;
 *  - `ssh-keygen -Q -f KRL CERT` (what sshd does per login with RevokedKeys) for a revoked
 *    certificate, against the same with a one-serial KRL (ssh-keygen's own start-up): wall time
 *    (median) and CPU time (mean, from the children's times in /proc/self/stat, 10 ms ticks).
 * Usage: revocations.ts SERIALS ROUNDS. Prints one JSON line.
 */
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Revocations, revokedUntil, type TombstoneRecord } from "../../src/auth/revocations.js";
import { encode, keys } from "../../src/auth/records.js";
import type { WriteOp } from "../../src/backend/backend.js";
import { openBackend } from "../../src/backend/open.js";
import { encodeKrl } from "../../src/ca/krl.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { unitAuthContext } from "../../test/harness/auth-context.js";
import { median, tempDir } from "../lib.js";

const [serialCount, rounds] = process.argv.slice(2).map(Number) as [number, number];
const dir = tempDir("mezite-bench-revocations-");
const now = Date.now();
const backend = await openBackend("sqlite", join(dir, "data"), { now: () => Date.now() });
const ctx = await unitAuthContext({ backend, dataDir: join(dir, "data"), clusterName: "bench.mezite", now: () => Date.now() });

const serials: bigint[] = [];
const t0 = performance.now();
for (let i = 0; i < serialCount; i += 1000) {
  const ops: WriteOp[] = [];
  for (let j = i; j < Math.min(i + 1000, serialCount); j++) {
    const serial = randomBytes(8).readBigUInt64BE() | 1n;
    serials.push(serial);
    const expires = now + 3_600_000;
    const t: TombstoneRecord = { identityName: `ci-${j % 100}`, certs: [[serial.toString(), expires]] };
    ops.push({ op: "put", key: keys.revokedInstance(`bench-instance-${j}`), value: encode(t), expires: revokedUntil(expires) });
  }
  await backend.write(ops);
}
const insertMs = performance.now() - t0;

/**
 * The longest the event loop is held while `work` runs: the largest gap between ticks of a 1 ms
 * timer chain (less the 1 ms), in wall time and in this process's CPU time within that gap. On a
 * shared, loaded machine a wall gap also holds time the process was not scheduled at all; the CPU
 * time is what the process itself spent without letting a timer run.
 */
async function stallDuring<T>(work: () => Promise<T>): Promise<{ value: T; stallMs: number; stallCpuMs: number; ms: number }> {
  let last = performance.now();
  let lastCpu = process.cpuUsage();
  let worst = 0;
  let worstCpu = 0;
  let running = true;
  const tick = () => {
    const t = performance.now();
    const cpu = process.cpuUsage(lastCpu);
    worst = Math.max(worst, t - last - 1);
    worstCpu = Math.max(worstCpu, (cpu.user + cpu.system) / 1000 - 1);
    last = t;
    lastCpu = process.cpuUsage();
    if (running) setTimeout(tick, 1);
  };
  setTimeout(tick, 1);
  const start = performance.now();
  const value = await work();
  const ms = performance.now() - start;
  running = false;
  await new Promise((r) => setTimeout(r, 5));
  return { value, stallMs: Math.max(0, worst), stallCpuMs: Math.max(0, worstCpu), ms };
}

const runs: { ms: number; stallMs: number; stallCpuMs: number }[] = [];
let krl = Buffer.alloc(0);
for (let r = 0; r < rounds + 1; r++) {
  const { value, ms, stallMs, stallCpuMs } = await stallDuring(() => new Revocations(ctx).get());
  krl = Buffer.from(value.krl);
  if (r > 0) runs.push({ ms, stallMs, stallCpuMs }); // the first warms the JIT and SQLite's page cache
}

// What a service's once-a-second look costs when nothing changed: one read of the change mark.
let clock = performance.now();
const steady = new Revocations(ctx, { monotonic: () => clock });
await steady.get();
const unchangedMs: number[] = [];
for (let i = 0; i < 20; i++) {
  clock += 1_001; // past the one-second cache
  const t = performance.now();
  await steady.get();
  unchangedMs.push(performance.now() - t);
}

// A certificate of the cluster's User CA with a revoked serial, and a KRL of one serial for ssh-keygen's start-up.
const subject = generateKeyPairSync("ed25519");
const certPath = join(dir, "revoked-cert.pub");
const serial = serials[Math.floor(serials.length / 2)]!;
writeFileSync(certPath, `${formatSshCertificate(signSshCertificate({ type: "user", publicKey: subject.publicKey, serial, keyId: "agent-identity/ci-1", principals: ["deploy"], validAfter: Math.floor(now / 1000) - 60, validBefore: Math.floor(now / 1000) + 3600 }, ctx.cas.user.sshPrivate))}\n`);
const krlPath = join(dir, "revoked.krl");
const smallPath = join(dir, "small.krl");
writeFileSync(krlPath, krl);
writeFileSync(smallPath, encodeKrl({ version: 1n, generatedAt: Math.floor(now / 1000), sections: [{ caKey: ctx.cas.user.sshPublic, serials: [serial] }] }));
const query = (path: string) => {
  const t = performance.now();
  let out = "";
  try {
    out = execFileSync("ssh-keygen", ["-Q", "-f", path, certPath], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    out = String((e as { stdout?: string }).stdout ?? "");
  }
  if (!out.includes("REVOKED")) throw new Error(`ssh-keygen -Q did not find the certificate revoked: ${out.trim()}`);
  return performance.now() - t;
};
/** CPU seconds of this process's waited-for children (utime + stime, /proc/self/stat fields 16 and 17). */
const childrenCpu = () => {
  const fields = readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[13]) + Number(fields[14])) / 100;
};
const queryMs: number[] = [];
const smallMs: number[] = [];
let queryCpu = 0;
let smallCpu = 0;
const QUERIES = 9;
for (let i = 0; i < QUERIES; i++) {
  let c = childrenCpu();
  queryMs.push(query(krlPath));
  queryCpu += childrenCpu() - c;
  c = childrenCpu();
  smallMs.push(query(smallPath));
  smallCpu += childrenCpu() - c;
}
await backend.close?.();
process.stdout.write(
  JSON.stringify({
    serials: serialCount,
    insertMs,
    rebuildMs: median(runs.map((r) => r.ms)),
    unchangedMs: median(unchangedMs),
    stallMs: Math.max(...runs.map((r) => r.stallMs)),
    stallCpuMs: Math.max(...runs.map((r) => r.stallCpuMs)),
    krlBytes: krl.length,
    queryMs: median(queryMs),
    queryOneSerialMs: median(smallMs),
    queryCpuMs: (1000 * queryCpu) / QUERIES,
    queryOneSerialCpuMs: (1000 * smallCpu) / QUERIES,
  }) + "\n",
);
