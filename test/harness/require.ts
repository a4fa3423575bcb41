import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import type { TestContext } from "node:test";

/**
 * Real-component tests need real binaries. When one is missing the test says so loudly; under
 * CI=true a missing component is a failure, never a silent skip.
 */
export function missingComponent(t: TestContext, what: string, hint: string): void {
  const msg = `${what} is not installed (${hint}); this real-component test cannot run`;
  if (process.env["CI"] === "true") throw new Error(`${msg} — CI requires it`);
  process.stderr.write(`\n*** SKIPPED: ${msg} ***\n`);
  t.skip(msg);
}

export function findBinary(candidates: string[]): string | undefined {
  return candidates.find((p) => existsSync(p));
}

export const SSHD_PATH = findBinary(["/usr/sbin/sshd", "/usr/local/sbin/sshd"]);
export const SSH_PATH = findBinary(["/usr/bin/ssh", "/usr/local/bin/ssh"]);
export const SSH_KEYGEN_PATH = findBinary(["/usr/bin/ssh-keygen", "/usr/local/bin/ssh-keygen"]);
export const OPENSSL_PATH = findBinary(["/usr/bin/openssl", "/usr/local/bin/openssl"]);
export const PG_BIN_DIR = findBinary(["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]);

/** Runs ssh-keygen (TZ=UTC: it prints validity in local time); undefined when it is missing. */
export function sshKeygen(t: TestContext, args: string[]): { code: number | null; out: string } | undefined {
  if (SSH_KEYGEN_PATH === undefined) {
    missingComponent(t, "ssh-keygen", "apt-get install openssh-client");
    return undefined;
  }
  const r = spawnSync(SSH_KEYGEN_PATH, args, { encoding: "utf8", env: { ...process.env, TZ: "UTC" } });
  return { code: r.status, out: r.stdout + r.stderr };
}

/**
 * Why the tests that run sshd as root and log in with ssh cannot run here: [what, how to get it],
 * or undefined when they can.
 */
export function sshdTestsCannotRun(): [string, string] | undefined {
  if (SSHD_PATH === undefined) return ["sshd", "apt-get install openssh-server"];
  if (SSH_PATH === undefined || SSH_KEYGEN_PATH === undefined) return ["ssh", "apt-get install openssh-client"];
  if (process.getuid?.() !== 0) return ["root", "these tests run sshd as root and log in as local users"];
  return undefined;
}
