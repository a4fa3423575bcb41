/**
 * msh ssh and msh scp: the stock OpenSSH client with the identity dir's key, certificate and
 * known hosts given as -o options (they win over ~/.ssh/config, which still applies otherwise:
 * ProxyJump, ports). msh exits with the client's exit code.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { MeziteError } from "../lib/errors.js";
import { sshPath, type IdentityDir } from "./identity-dir.js";

/** The options every msh ssh/scp call passes first (ssh keeps the first value of an option). */
export function clientOptions(d: IdentityDir): string[] {
  const o = (kv: string) => ["-o", kv];
  const f = (n: string) => sshPath(join(d.dir, n));
  return [
    ...(d.agentSocket !== undefined ? o(`IdentityAgent=${sshPath(d.agentSocket)}`) : o(`IdentityFile=${f("ssh_key")}`)),
    ...o(`CertificateFile=${f("ssh_cert")}`),
    ...o(`UserKnownHostsFile=${f("ssh_known_hosts")}`),
    ...o("IdentitiesOnly=yes"),
    ...o("StrictHostKeyChecking=yes"),
  ];
}

export interface SshArgs {
  /** [user@]host */
  target: string;
  command: string[];
  login?: string | undefined;
  port?: string | undefined;
  /** Extra -o options, e.g. ["ConnectTimeout=5"]. */
  options: string[];
}

export function sshArgv(d: IdentityDir, a: SshArgs): string[] {
  if (a.target === "" || a.target.startsWith("-")) throw new MeziteError("ERR_USAGE", `expected [user@]host, got ${JSON.stringify(a.target)}`);
  if (a.port !== undefined && !/^\d{1,5}$/.test(a.port)) throw new MeziteError("ERR_USAGE", `--port must be a port number (got ${JSON.stringify(a.port)})`);
  return [
    ...a.options.flatMap((x) => ["-o", x]),
    ...clientOptions(d),
    ...(a.port !== undefined ? ["-p", a.port] : []),
    ...(a.login !== undefined ? ["-l", a.login] : []),
    "--",
    a.target,
    ...a.command,
  ];
}

/** Runs `program` (ssh or scp) on the terminal; resolves with the exit code msh should use. */
export function runClient(program: "ssh" | "scp", argv: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, argv, { stdio: "inherit" });
    // The terminal's Ctrl-C reaches the client too (same process group): let it decide.
    const ignore = () => {};
    process.on("SIGINT", ignore);
    child.once("error", (e: NodeJS.ErrnoException) => {
      process.off("SIGINT", ignore);
      if (e.code === "ENOENT") reject(new MeziteError("ERR_NOT_FOUND", `${program} is not installed or not on PATH (Debian: apt-get install openssh-client)`));
      else reject(new MeziteError("ERR_INTERNAL", `cannot run ${program}: ${e.message}`, { cause: e }));
    });
    child.once("exit", (code, signal) => {
      process.off("SIGINT", ignore);
      resolve(code ?? 128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 9));
    });
  });
}
