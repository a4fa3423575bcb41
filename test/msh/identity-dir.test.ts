/**
 * msh on a destination dir whose ssh_config names the daemon's SSH agent socket (SPEC §16,
 * `--ssh-agent-socket`): config, ssh and status use the socket instead of a key file. The dir
 * is made here with a real certificate from a throwaway CA; `ssh -G` is the oracle for config.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { CERT_EXTENSIONS } from "../../src/api/cert-extensions.js";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { renderSshConfig } from "../../src/identity/outputs.js";
import { agentSocketFrom, readIdentityDir, renderClientConfig } from "../../src/msh/identity-dir.js";
import { sshArgv } from "../../src/msh/ssh.js";
import { ROOT, run } from "../harness/auth.js";
import { SSH_PATH, missingComponent } from "../harness/require.js";

const work = mkdtempSync(join(tmpdir(), "mezite-mshdir-"));
after(() => rmSync(work, { recursive: true, force: true }));

function identityDir(name: string, sshConfig: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  const now = Math.floor(Date.now() / 1000);
  const blob = signSshCertificate(
    {
      type: "user",
      publicKey: generateKeyPairSync("ed25519").publicKey,
      serial: 42n,
      keyId: "agent-bot",
      principals: ["deploy"],
      validAfter: now - 60,
      validBefore: now + 1800,
      extensions: { [CERT_EXTENSIONS.identity]: JSON.stringify({ name: "agent-bot", id: "id-1", instance: "in-1" }), [CERT_EXTENSIONS.roles]: "ci-deployer" },
    },
    generateKeyPairSync("ed25519").privateKey,
  );
  writeFileSync(join(dir, "ssh_cert"), formatSshCertificate(blob) + "\n");
  writeFileSync(join(dir, "ssh_config"), sshConfig);
  return dir;
}

describe("msh with the daemon's agent socket", () => {
  test("IdentityAgent in the dir's ssh_config replaces the key file in config, ssh and status", async (t) => {
    const socket = join(work, "agent.sock");
    const dir = identityDir("with-agent", `Host *\n    IdentityAgent ${socket}\n    CertificateFile x\n`);
    const d = readIdentityDir(dir);
    assert.equal(d.agentSocket, socket);
    const cfg = renderClientConfig(d);
    assert.match(cfg, new RegExp(`\\n    IdentityAgent ${socket}\\n`));
    assert.doesNotMatch(cfg, /IdentityFile/);
    const argv = sshArgv(d, { target: "deploy@web-1", command: ["uptime"], options: [] });
    assert.ok(argv.includes(`IdentityAgent=${socket}`), argv.join(" "));
    assert.ok(!argv.some((a) => a.startsWith("IdentityFile=")), argv.join(" "));

    const status = await run(join(ROOT, "bin/msh"), ["status", `--identity-dir=${dir}`]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`\\nKey: {9}agent socket ${socket}\\n`));

    if (!SSH_PATH) return missingComponent(t, "ssh", "apt-get install openssh-client");
    const file = join(work, "cfg");
    writeFileSync(file, cfg);
    const g = spawnSync(SSH_PATH, ["-G", "-F", file, "web-1"], { encoding: "utf8" });
    assert.equal(g.status, 0, g.stderr);
    assert.ok(g.stdout.split("\n").includes(`identityagent ${socket}`), g.stdout);
  });

  test("without IdentityAgent (or with IdentityAgent none) the key file is used", () => {
    assert.equal(agentSocketFrom("Host *\n    IdentityFile /d/ssh_key\n"), undefined);
    assert.equal(agentSocketFrom("Host *\n    IdentityAgent none\n"), undefined);
    assert.equal(agentSocketFrom('Host *\n  identityagent "/run/a b.sock"\n'), "/run/a b.sock");
    const d = readIdentityDir(identityDir("no-agent", "Host *\n    IdentityFile /x\n"));
    assert.match(renderClientConfig(d), new RegExp(`IdentityFile ${join(d.dir, "ssh_key")}`));
    assert.equal(d.agentSocket, undefined);
  });

  test("an agent socket path with blanks and % (as the daemon writes it) reaches ssh as that path; what ssh cannot take is refused", (t) => {
    const socket = "/run/mezite agent/100%d%/agent.sock";
    const dir = identityDir("odd-agent", renderSshConfig("/unused", { sshKeyFile: false, sshAgentSocket: socket }));
    const d = readIdentityDir(dir);
    assert.equal(d.agentSocket, socket, "the path itself, not its escaped form");
    const argv = sshArgv(d, { target: "deploy@web-1", command: [], options: [] });
    assert.ok(argv.includes('IdentityAgent="/run/mezite agent/100%%d%%/agent.sock"'), argv.join(" "));
    const bad = readIdentityDir(identityDir("dollar ${HOME}", "Host *\n"));
    assert.throws(() => sshArgv(bad, { target: "web-1", command: [], options: [] }), (e: Error & { code?: string }) => e.code === "ERR_USAGE" && /"\$\{"/.test(e.message));
    if (!SSH_PATH) return missingComponent(t, "ssh", "apt-get install openssh-client");
    const file = join(work, "odd-cfg");
    writeFileSync(file, renderClientConfig(d));
    const g = spawnSync(SSH_PATH, ["-G", "-F", file, "web-1"], { encoding: "utf8" });
    assert.equal(g.status, 0, g.stderr);
    assert.ok(g.stdout.split("\n").includes(`identityagent /run/mezite agent/100%d%/agent.sock`), g.stdout);
  });
});
