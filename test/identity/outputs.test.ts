/** The generated ssh_config, as golden files beside this test: with the file outputs, and with the agent socket. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { renderSshConfig } from "../../src/identity/outputs.js";

const golden = (name: string) => readFileSync(join(import.meta.dirname, "golden", name), "utf8");

test("ssh_config: key and certificate files, IdentitiesOnly", () => {
  assert.equal(renderSshConfig("/var/lib/mezite/certs", { sshKeyFile: true, sshAgentSocket: undefined }), golden("ssh_config.files"));
});

test("ssh_config with --ssh-agent-socket: IdentityAgent and no file identity, whether or not ssh_key is written", () => {
  for (const sshKeyFile of [true, false]) {
    assert.equal(renderSshConfig("/var/lib/mezite/certs", { sshKeyFile, sshAgentSocket: "/run/mezite/agent.sock" }), golden("ssh_config.agent"));
  }
});

test("ssh_config: % doubled and blanks quoted, as ssh reads its arguments", () => {
  assert.equal(renderSshConfig("/srv/my certs/100%", { sshKeyFile: false, sshAgentSocket: "/run/a b/%h.sock" }), golden("ssh_config.odd"));
});
