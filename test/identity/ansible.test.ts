/**
 * Ansible (Debian's ansible-core) through the generated ssh_config and the agent socket, with the
 * example ansible.cfg and playbook from examples/ansible: an ad-hoc ping and a playbook run
 * against a private sshd, with the SSH private key never on disk (--no-ssh-key-file).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { ROOT, run } from "../harness/auth.js";
import { findBinary, missingComponent } from "../harness/require.js";
import { JOINED, addIdentity, sshdMissing, startDaemon, startNode, identityTestbed } from "./fixture.js";

const ANSIBLE = findBinary(["/usr/bin/ansible"]);
const ANSIBLE_PLAYBOOK = findBinary(["/usr/bin/ansible-playbook"]);
const EXAMPLE = join(ROOT, "examples/ansible");
const MARKER = "/home/deploy/mezite-ansible-marker";

const bed = identityTestbed("ansible");
after(() => {
  rmSync(MARKER, { force: true });
});

test("ansible -m ping and ansible-playbook through ssh_config and the agent socket, no key on disk", async (t) => {
  if (sshdMissing(t)) return;
  if (ANSIBLE === undefined || ANSIBLE_PLAYBOOK === undefined) return missingComponent(t, "ansible", "apt-get install ansible-core");
  bed.node = await startNode(bed.auth, join(bed.tmp, "node"));
  const dest = join(bed.tmp, "certs");
  const daemon = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${join(bed.tmp, "agent", "sock")}`, "--no-ssh-key-file", "--cert-ttl=10m", "--renewal-interval=5m"], { MEZITE_TOKEN: await addIdentity(bed.auth, "ansible") });
  await daemon.waitFor(JOINED);
  assert.ok(!existsSync(join(dest, "ssh_key")));

  // The example's groups, pointed at the private sshd.
  const inventory = join(bed.tmp, "inventory.ini");
  writeFileSync(inventory, `[staging]\nweb-server-01 ansible_host=127.0.0.1 ansible_port=${bed.node.sshd.port}\n`);
  rmSync(MARKER, { force: true });
  const env = {
    ANSIBLE_CONFIG: join(EXAMPLE, "ansible.cfg"), // remote_user, host key checking, pipelining
    ANSIBLE_SSH_ARGS: `-F ${join(dest, "ssh_config")}`, // the example's ssh_args, with this test's DEST
    ANSIBLE_LOCAL_TEMP: join(bed.tmp, "ansible-local"),
    ANSIBLE_NOCOLOR: "1",
    ANSIBLE_FORCE_COLOR: "0",
  };

  const t0 = performance.now();
  const ping = await run(ANSIBLE, ["-i", inventory, "all", "-m", "ping"], { env, timeoutMs: 120_000 });
  const pingMs = performance.now() - t0;
  assert.equal(ping.code, 0, ping.stdout + ping.stderr);
  assert.match(ping.stdout, /web-server-01 \| SUCCESS => \{[\s\S]*"ping": "pong"/);

  const t1 = performance.now();
  const play = await run(ANSIBLE_PLAYBOOK, ["-i", inventory, join(EXAMPLE, "playbook.yml")], { env, timeoutMs: 120_000 });
  const playMs = performance.now() - t1;
  assert.equal(play.code, 0, play.stdout + play.stderr);
  assert.match(play.stdout, /web-server-01\s+: ok=3\s+changed=1\s+unreachable=0\s+failed=0/);
  assert.equal(readFileSync(MARKER, "utf8"), "deployed to web-server-01 by mezite\n");
  process.stderr.write(`# ansible ping ${Math.round(pingMs)} ms, playbook ${Math.round(playMs)} ms\n`);

  // sshd let Ansible in with the certificate, through the agent (there is no key file).
  const log = readFileSync(bed.node.sshd.logPath, "utf8");
  assert.match(log, /Accepted publickey for deploy from 127\.0\.0\.1 .*ED25519-CERT .*ID agent-identity\/ansible/);
  assert.doesNotMatch(log, /Accepted publickey for deploy .*: ED25519 SHA256/, "only the certificate logs in");
  assert.equal(await daemon.stop(), 0, daemon.output());
});
