/**
 * Bench section "revocations": the auth service's revocation state at 100,000 revoked serials (a
 * worker process, bench/workers/revocations.ts, so nothing else in the bench shares its event loop).
 */
import { join } from "node:path";
import { ROOT, TSX, mustRun, note } from "./lib.js";

export interface RevocationsOptions {
  serials: number;
  rounds: number;
}

export interface RevocationsFigures {
  serials: number;
  insertMs: number;
  /** A rebuild of the KRL and lock lists past the cache, wall, median. */
  rebuildMs: number;
  /** A look past the cache when nothing changed (the change mark's read), wall, median. */
  unchangedMs: number;
  /** The longest a 1 ms timer waited during the rebuilds: wall, and this process's CPU in that wait. */
  stallMs: number;
  stallCpuMs: number;
  krlBytes: number;
  /** `ssh-keygen -Q` of a revoked certificate (what sshd does per login), median; and with a one-serial KRL. */
  queryMs: number;
  queryOneSerialMs: number;
  /** The same in ssh-keygen's CPU time, mean. */
  queryCpuMs: number;
  queryOneSerialCpuMs: number;
}

export async function revocations(o: RevocationsOptions): Promise<RevocationsFigures> {
  note(`revocations: ${o.serials.toLocaleString("en")} revoked serials in SQLite, ${o.rounds} rebuilds`);
  const r = await mustRun(process.execPath, [...TSX, join(ROOT, "bench/workers/revocations.ts"), String(o.serials), String(o.rounds)], { timeoutMs: 300_000 });
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as RevocationsFigures;
}
