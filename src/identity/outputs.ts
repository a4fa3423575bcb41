/**
 * The destination dir (SPEC §6): what ssh, scp, Ansible and TLS clients read. Each file is
 * replaced atomically; keys are 0600; a symlink in place of an output is refused.
 */
import { lstatSync } from "node:fs";
import { join } from "node:path";
import type { IssuedCertificates } from "../api/gen/mezite/v1/common_pb.js";
import { encodeOpenSSHPrivateKey } from "../ca/sshkey.js";
import { privateKeyToPem } from "../ca/x509.js";
import { assertNotSymlink, ensureDir, writeFileAtomic, writeFilesAtomic } from "../lib/files.js";
import type { IssueKeys } from "./protocol.js";

export const OUTPUT_FILES = ["ssh_key", "ssh_cert", "x509_cert.pem", "x509_key.pem", "cert_serial", "ssh_known_hosts", "ssh_config", "x509_ca.pem"] as const;

export function renderSshConfig(dest: string): string {
  return [
    "# Written by mezd identity; replaced on every renewal. Use with: ssh -F " + join(dest, "ssh_config") + " deploy@host",
    "Host *",
    `    IdentityFile ${join(dest, "ssh_key")}`,
    `    CertificateFile ${join(dest, "ssh_cert")}`,
    `    UserKnownHostsFile ${join(dest, "ssh_known_hosts")}`,
    "    IdentitiesOnly yes",
    "    StrictHostKeyChecking yes",
    "",
  ].join("\n");
}

export function renderKnownHosts(hostCaKeys: string[]): string {
  return hostCaKeys.map((k) => `@cert-authority * ${k}`).join("\n") + "\n";
}

/**
 * Refuses before anything is written, so a bad destination never leaves half the outputs.
 * A missing dir is created 0755; an existing one keeps the mode its owner chose.
 */
export function checkDestination(dest: string): void {
  let mode = 0o755;
  try {
    mode = lstatSync(dest).mode & 0o7777;
  } catch {
    // missing: created below
  }
  ensureDir(dest, mode);
  for (const f of OUTPUT_FILES) assertNotSymlink(join(dest, f));
}

export function writeOutputs(dest: string, certs: IssuedCertificates, keys: IssueKeys): void {
  checkDestination(dest);
  const w = (name: string, data: string, mode: number) => writeFileAtomic(join(dest, name), data, mode);
  const cert = { path: join(dest, "ssh_cert"), data: certs.sshCertificate + "\n", mode: 0o644 };
  // Both written and synced first, then renamed back to back: certificate first, key second.
  // ssh reads the certificate when it starts and the private key when it signs, a moment
  // later, and fails when they differ. Certificate first, a login fails only if it starts
  // before the first rename and signs after the second (or fits wholly between the two,
  // microseconds apart). Key first, it fails if it starts before the second rename and signs
  // after the first: a wider window. No order closes it.
  writeFilesAtomic([cert, { path: join(dest, "ssh_key"), data: encodeOpenSSHPrivateKey(keys.ssh), mode: 0o600 }]);
  w("x509_key.pem", privateKeyToPem(keys.x509), 0o600);
  w("x509_cert.pem", certs.x509CertificatePem, 0o644);
  w("x509_ca.pem", certs.userCaX509Pems.join(""), 0o644);
  w("ssh_known_hosts", renderKnownHosts(certs.hostCaSshKeys), 0o644);
  w("ssh_config", renderSshConfig(dest), 0o644);
  w("cert_serial", `${certs.serial}\n`, 0o644);
}
