/**
 * The destination dir (SPEC §6): what ssh, scp, Ansible and TLS clients read. Each file is
 * replaced atomically; keys are 0600; a symlink in place of an output is refused.
 */
import { lstatSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import type { IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { encodeOpenSSHPrivateKey } from "../ca/sshkey.js";
import { privateKeyToPem } from "../ca/x509.js";
import { MeziteError } from "../lib/errors.js";
import { assertNotSymlink, assertOwnDir, ensureDir, stageFilesAsync, type StagedFiles } from "../lib/files.js";
import type { IssueKeys } from "./protocol.js";

export const OUTPUT_FILES = ["ssh_key", "ssh_cert", "x509_cert.pem", "x509_key.pem", "cert_serial", "ssh_known_hosts", "ssh_config", "x509_ca.pem"] as const;

/** How the outputs are laid out: the key file or not, the agent socket or not. */
export interface OutputOptions {
  sshKeyFile: boolean;
  sshAgentSocket: string | undefined;
}

/**
 * With an agent socket, ssh takes key and certificate from the agent alone (`IdentityFile none`:
 * no file identity, not even ~/.ssh/id_*), so a login never pairs files across a renewal.
 */
export function renderSshConfig(dest: string, out: OutputOptions = { sshKeyFile: true, sshAgentSocket: undefined }): string {
  const auth = out.sshAgentSocket !== undefined
    ? [`    IdentityAgent ${configPath(out.sshAgentSocket)}`, "    IdentityFile none"]
    : [`    IdentityFile ${configPath(join(dest, "ssh_key"))}`, `    CertificateFile ${configPath(join(dest, "ssh_cert"))}`, "    IdentitiesOnly yes"];
  return [
    "# Written by mezd identity; replaced on every renewal. Use with: ssh -F " + join(dest, "ssh_config") + " deploy@host",
    "Host *",
    ...auth,
    `    UserKnownHostsFile ${configPath(join(dest, "ssh_known_hosts"))}`,
    "    StrictHostKeyChecking yes",
    "",
  ].join("\n");
}

/**
 * A path as an ssh_config argument: ssh expands %-tokens in these options (so % is doubled) and
 * splits on blanks (so such a path is quoted). What cannot be written at all (a double quote,
 * a control character, "${") is refused by the options, before anything runs.
 */
export function configPath(p: string): string {
  const escaped = p.replace(/%/g, "%%");
  return /\s/.test(escaped) ? `"${escaped}"` : escaped;
}

/**
 * Every trusted Host CA, and the host keys of removed or replaced nodes as `@revoked` (SPEC §13):
 * ssh refuses such a host even with a valid host certificate.
 */
export function renderKnownHosts(hostCaKeys: string[], revokedHostKeys: string[] = []): string {
  return [...hostCaKeys.map((k) => `@cert-authority * ${k}`), ...revokedHostKeys.map((k) => `@revoked * ${k}`)].join("\n") + "\n";
}

/**
 * Refuses before anything is written, so a bad destination never leaves half the outputs.
 * A missing dir is created 0755; an existing one keeps the mode its owner chose, but must be
 * ours (or root's) and not writable by others: whoever can replace ssh_config there has our
 * user, or root, run its ProxyCommand at the next `ssh -F`.
 */
export function checkDestination(dest: string): void {
  let mode = 0o755;
  let st;
  try {
    st = lstatSync(dest);
  } catch {
    // missing: created below
  }
  if (st?.isDirectory()) {
    assertOwnDir(dest, `--destination-dir ${dest}`, { rootToo: true, code: "ERR_CONFIG" });
    mode = st.mode & 0o7777;
  }
  ensureDir(dest, mode);
  for (const f of OUTPUT_FILES) assertNotSymlink(join(dest, f));
}

/** Removes an ssh_key left by an earlier run without --no-ssh-key-file (a symlink there is refused). */
export function removeSshKeyFile(dest: string): void {
  const path = join(dest, "ssh_key");
  assertNotSymlink(path);
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new MeziteError("ERR_STORAGE", `cannot remove ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * `release` (SPEC §19): removes every output file there is (a symlink in an output's place is
 * removed itself, never followed) and returns the names removed. The dir itself stays: its owner
 * may have made it.
 */
export function removeOutputs(dest: string): string[] {
  const removed: string[] = [];
  for (const name of OUTPUT_FILES) {
    try {
      unlinkSync(join(dest, name));
      removed.push(name);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR") throw new MeziteError("ERR_STORAGE", `cannot remove ${join(dest, name)}: ${(e as Error).message}`, { cause: e });
    }
  }
  return removed;
}

export async function writeOutputs(dest: string, certs: IssuedCertificates, keys: IssueKeys, out: OutputOptions = { sshKeyFile: true, sshAgentSocket: undefined }): Promise<void> {
  (await stageOutputs(dest, certs, keys, out)).commit();
}

/**
 * The outputs written beside their targets and synced (their fsyncs run while the caller goes on),
 * not yet in place: commit() renames them, discard() removes them.
 */
export async function stageOutputs(dest: string, certs: IssuedCertificates, keys: IssueKeys, out: OutputOptions = { sshKeyFile: true, sshAgentSocket: undefined }): Promise<StagedFiles> {
  checkDestination(dest);
  const f = (name: string, data: string, mode: number) => ({ path: join(dest, name), data, mode });
  // Every file is written and synced first, then all are renamed back to back (one directory
  // sync for the lot). Certificate before key: ssh reads the certificate when it starts and the
  // private key when it signs, a moment later, and fails when they differ. Certificate first, a
  // login fails only if it starts before the first rename and signs after the second (or fits
  // wholly between the two, microseconds apart). Key first, it fails if it starts before the
  // second rename and signs after the first: a wider window. No order closes it:
  // --ssh-agent-socket does. The X.509 pair is likewise renamed back to back. Synced side by
  // side (their fsyncs commit together): the one-shot's largest wait after the request itself.
  return stageFilesAsync([
    f("ssh_cert", certs.sshCertificate + "\n", 0o644),
    ...(out.sshKeyFile ? [f("ssh_key", encodeOpenSSHPrivateKey(keys.ssh), 0o600)] : []),
    f("x509_key.pem", privateKeyToPem(keys.x509), 0o600),
    f("x509_cert.pem", certs.x509CertificatePem, 0o644),
    f("x509_ca.pem", certs.userCaX509Pems.join(""), 0o644),
    f("ssh_known_hosts", renderKnownHosts(certs.hostCaSshKeys, certs.revokedHostKeys), 0o644),
    f("ssh_config", renderSshConfig(dest, out), 0o644),
    f("cert_serial", `${certs.serial}\n`, 0o644),
  ]);
}
