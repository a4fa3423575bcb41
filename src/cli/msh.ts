/**
 * msh: the agent's SSH helper (SPEC §17). Everything but `ls` and `release` reads only the
 * destination dir that `mezd identity` writes; `ls` asks the auth service, authenticated by the
 * output X.509 certificate of that dir (which can only read, never renew), and `release` (SPEC
 * §19) ends that certificate's own instance with it, then removes the dir's outputs.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { Command, Option } from "commander";
import { MeziteError } from "../lib/errors.js";
import { versionLine } from "../lib/version.js";
import { identityDirOption, readIdentityDir, renderClientConfig, requireValid } from "../msh/identity-dir.js";
import { clientOptions, runClient, sshArgv } from "../msh/ssh.js";
import { statusDoc, statusText } from "../msh/status.js";
import { fail, routeCommanderErrors } from "./exit.js";
import { parseFormat, printDocument } from "./output.js";

const DIR_HELP = "the destination dir mezd identity writes (default $MEZITE_IDENTITY_DIR)";
const collect = (v: string, all: string[]) => [...all, v];

const program = new Command("msh")
  .description("SSH with an agent identity's short-lived certificates (the outputs of mezd identity)")
  .version(versionLine("msh"), "--version", "print the version and commit")
  .option("--debug", "print stack traces with errors")
  .enablePositionalOptions();

program
  .command("ssh")
  .description("log into a node with the identity's certificate: ssh [user@]host [command...]")
  .option("--identity-dir <dir>", DIR_HELP)
  .option("-l, --login <login>", "the login on the node (or user@host)")
  .option("-p, --port <port>", "the node's SSH port")
  .option("-o, --option <ssh-option>", "an extra ssh -o option, e.g. ConnectTimeout=5 (repeatable)", collect, [] as string[])
  .argument("<target>", "[user@]host")
  .argument("[command...]", "the command to run; none opens a shell")
  .passThroughOptions()
  .addHelpText("after", "\nExits with ssh's exit code. Options after the host belong to the remote command.")
  .action(async (target: string, command: string[], o: { identityDir?: string; login?: string; port?: string; option: string[] }) => {
    const d = readIdentityDir(o.identityDir);
    requireValid(d);
    process.exitCode = await runClient("ssh", sshArgv(d, { target, command, login: o.login, port: o.port, options: o.option }));
  });

program
  .command("scp")
  .description("copy files to or from nodes with the identity's certificate: scp's own arguments")
  .option("--identity-dir <dir>", DIR_HELP)
  .argument("<args...>", "scp arguments, e.g. -P 2222 app.tar deploy@web-1:/srv/ (put -- before options msh does not know)")
  .allowUnknownOption()
  .passThroughOptions()
  .addHelpText("after", "\nExample: msh scp --identity-dir=/tmp/mezite-certs -- -r build/ deploy@web-1:/srv/app\nExits with scp's exit code.")
  .action(async (args: string[], o: { identityDir?: string }) => {
    const d = readIdentityDir(o.identityDir);
    requireValid(d);
    if (!args.some((a) => a.includes(":"))) throw new MeziteError("ERR_USAGE", "scp needs a remote path: [user@]host:path as source or target");
    process.exitCode = await runClient("scp", [...clientOptions(d), ...args]);
  });

program
  .command("config")
  .description("print an ssh_config that uses the identity's files (for Ansible: ANSIBLE_SSH_ARGS=\"-F FILE\")")
  .option("--identity-dir <dir>", DIR_HELP)
  .option("--host <pattern>", "the Host pattern of the block", "*")
  .option("-l, --login <login>", "add a User line")
  .addHelpText("after", "\nExample: msh config --identity-dir=/var/lib/mezite-identity/ansible > ~/.ssh/mezite_config\n         ANSIBLE_SSH_ARGS=\"-F ~/.ssh/mezite_config\" ansible all -m ping")
  .action((o: { identityDir?: string; host: string; login?: string }) => {
    if (/[\s]/.test(o.host.trim()) || o.host.trim() === "") throw new MeziteError("ERR_USAGE", "--host must be one ssh_config Host pattern, without spaces");
    const d = readIdentityDir(o.identityDir);
    process.stdout.write(renderClientConfig(d, { host: o.host.trim(), ...(o.login !== undefined ? { user: o.login } : {}) }));
  });

program
  .command("status")
  .description("the identity, its roles, logins and the certificate's time left, read from the dir")
  .option("--identity-dir <dir>", DIR_HELP)
  .addOption(new Option("--format <format>", "text, json or yaml").default("text"))
  .addHelpText("after", "\nExits 1 when the certificate has expired (after printing the status).")
  .action((o: { identityDir?: string; format: string }) => {
    const format = parseFormat(o.format);
    const d = readIdentityDir(o.identityDir);
    const now = Date.now();
    if (format === "text") process.stdout.write(statusText(d, now));
    else printDocument(format, statusDoc(d, now));
    if (d.validBeforeMs <= now) process.exitCode = 1;
  });

program
  .command("ls")
  .description("list the nodes this identity may log into, and as which logins (asks the auth service)")
  .option("--identity-dir <dir>", DIR_HELP)
  .option("--auth-server <host:port>", "the auth service (default $MEZITE_AUTH_SERVER, else the one the daemon joined)")
  .option("--tls-ca <file>", "the CA of the auth service's TLS certificate, PEM (default: the one the daemon learned at join)")
  .option("--storage-dir <dir>", "the daemon's storage dir, for those two defaults (default DIR/.mezite)")
  .addOption(new Option("--format <format>", "text, json or yaml").default("text"))
  .addHelpText("after", "\nAuthenticated by the dir's x509_cert.pem (the output certificate), which may read this list and\nnothing else: it cannot renew. Roles are the identity's current ones, evaluated by the auth service.")
  .action(async (o: { identityDir?: string; authServer?: string; tlsCa?: string; storageDir?: string; format: string }) => {
    const format = parseFormat(o.format);
    const { listAccessibleNodes, lsDoc, lsText } = await import("../msh/ls.js");
    const r = await listAccessibleNodes(readIdentityDir(o.identityDir), { authServer: o.authServer ?? (process.env["MEZITE_AUTH_SERVER"] || undefined), tlsCaFile: o.tlsCa, storageDir: o.storageDir });
    if (format === "text") process.stdout.write(lsText(r));
    else printDocument(format, lsDoc(r));
  });

program
  .command("release")
  .description("end this identity's instance when the job is done: its certificates are revoked (nodes refuse them within seconds) and the dir's outputs are removed")
  .option("--identity-dir <dir>", DIR_HELP)
  .option("--auth-server <host:port>", "the auth service (default $MEZITE_AUTH_SERVER, else the one the daemon joined)")
  .option("--tls-ca <file>", "the CA of the auth service's TLS certificate, PEM (default: the one the daemon learned at join)")
  .option("--storage-dir <dir>", "the daemon's storage dir, for those two defaults; its state is removed too (default DIR/.mezite)")
  .addHelpText("after", "\nAuthenticated by the dir's x509_cert.pem (the output certificate), which may end its own instance and\nno other. Exits 0 once released, also when it was already released.")
  .action(async (o: { identityDir?: string; authServer?: string; tlsCa?: string; storageDir?: string }) => {
    const { releaseWithOutputs, releaseLine } = await import("../identity/release.js");
    const { authTarget } = await import("../msh/ls.js");
    const dir = identityDirOption(o.identityDir);
    const d = existsSync(join(dir, "ssh_cert")) ? readIdentityDir(dir) : undefined;
    const storageDir = o.storageDir !== undefined ? resolve(o.storageDir) : join(dir, ".mezite");
    const authServer = o.authServer ?? (process.env["MEZITE_AUTH_SERVER"] || undefined);
    const r = await releaseWithOutputs({
      destinationDir: dir,
      storageDir,
      validBeforeMs: d?.validBeforeMs,
      target: () => authTarget(d!, { authServer, tlsCaFile: o.tlsCa, storageDir }),
    });
    process.stdout.write(releaseLine(r, dir));
  });

routeCommanderErrors(program);
program.parseAsync(process.argv).catch((e: unknown) => fail("msh", e));
