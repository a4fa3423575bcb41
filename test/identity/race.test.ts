/**
 * The reason the agent socket exists: logins racing renewals. For a minute the daemon renews
 * every 2 s (SIGHUP, "renew now", is how this test renews faster than the 10 s minimum
 * --renewal-interval without a production knob) while two loops log in as fast as they can: one
 * with the file outputs (ssh -i ssh_key -o CertificateFile=ssh_cert), one through the agent
 * socket (ssh -F ssh_config). The agent path must never fail; the file path's failures are
 * counted for the record (ssh reads the certificate at start and the key when it signs).
 * MEZITE_RACE_MS shortens the race while iterating on this file; the suite runs the full minute.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { run } from "../harness/auth.js";
import { SSH_PATH } from "../harness/require.js";
import { sshRun } from "../harness/sshd.js";
import { JOINED, RENEWED, addIdentity, sshdMissing, startDaemon, startNode, identityTestbed } from "./fixture.js";

/** How long the logins race the renewals, and how often a renewal comes. */
const RACE_MS = Number(process.env["MEZITE_RACE_MS"] ?? 60_000);
const RENEW_EVERY_MS = 2_000;

const bed = identityTestbed("race");

/** A login through the generated ssh_config, which names the agent socket. */
function sshViaConfig(dest: string, port: number) {
  return run(SSH_PATH!, ["-F", join(dest, "ssh_config"), "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256", "-o", "LogLevel=ERROR", "-p", String(port), "deploy@127.0.0.1", "whoami"], { timeoutMs: 15_000 });
}

interface Tally {
  ok: number;
  failed: string[];
}

test(`a renewal every ${RENEW_EVERY_MS / 1000} s for ${RACE_MS / 1000} s: logins through the agent never fail`, async (t) => {
  if (sshdMissing(t)) return;
  bed.node = await startNode(bed.auth, join(bed.tmp, "node"));
  const port = bed.node.sshd.port;
  const dest = join(bed.tmp, "certs");
  const sock = join(bed.tmp, "agent", "sock");
  const daemon = startDaemon(bed.auth.addr, dest, [`--ssh-agent-socket=${sock}`, "--cert-ttl=1m", "--renewal-interval=50s"], { MEZITE_TOKEN: await addIdentity(bed.auth, "racer") });
  await daemon.waitFor(JOINED);

  const files: Tally = { ok: 0, failed: [] };
  const agent: Tally = { ok: 0, failed: [] };
  const endAt = performance.now() + RACE_MS;
  const running = () => performance.now() < endAt;
  const record = (tally: Tally, r: { code: number | null; stdout: string; stderr: string }) => {
    if (r.code === 0 && r.stdout === "deploy\n") tally.ok++;
    else tally.failed.push(`exit ${r.code}: ${r.stderr.trim()}`);
  };
  const renewals = (async () => {
    let sent = 0;
    while (running()) {
      await new Promise((r) => setTimeout(r, RENEW_EVERY_MS));
      if (!running()) break;
      daemon.proc.kill("SIGHUP");
      sent++;
    }
    return sent;
  })();
  const fileLoop = (async () => {
    while (running()) {
      record(files, await sshRun({ port, user: "deploy", keyPath: join(dest, "ssh_key"), certPath: join(dest, "ssh_cert"), knownHostsPath: join(dest, "ssh_known_hosts"), command: "whoami", extraOptions: ["-o", "LogLevel=ERROR"] }));
    }
  })();
  const agentLoop = (async () => {
    while (running()) record(agent, await sshViaConfig(dest, port));
  })();
  const [hups] = await Promise.all([renewals, fileLoop, agentLoop]);
  await new Promise((r) => setTimeout(r, 500));
  const renewed = daemon.count(RENEWED);
  assert.equal(await daemon.stop(), 0, daemon.output());

  const serials = new Set([...readFileSync(bed.node.sshd.logPath, "utf8").matchAll(/Accepted publickey for deploy .*\(serial (\d+)\)/g)].map((m) => m[1]));
  process.stderr.write(
    `# ${Math.round(RACE_MS / 1000)} s, ${hups} SIGHUPs, ${renewed} renewals, ${serials.size} certificates used by sshd\n` +
      `# file outputs: ${files.ok + files.failed.length} logins, ${files.failed.length} failed\n` +
      `# agent socket: ${agent.ok + agent.failed.length} logins, ${agent.failed.length} failed\n`,
  );
  for (const f of new Set(files.failed)) process.stderr.write(`#   file path failure: ${f.split("\n")[0]}\n`);
  assert.deepEqual(agent.failed, [], "a login through the agent failed");
  // Floors at half of what an idle machine does (29 renewals, ~180 logins a path): the suite
  // runs two files at once on two shared cores, and a race with fewer proves little.
  assert.ok(renewed >= RACE_MS / RENEW_EVERY_MS / 2, `only ${renewed} renewals in ${RACE_MS} ms`);
  assert.ok(agent.ok >= RACE_MS / 2_000, `only ${agent.ok} agent logins: the race proves nothing`);
  assert.ok(serials.size >= renewed - 2, `sshd saw ${serials.size} certificates for ${renewed} renewals: the logins did not span them`);
  // The file path may fail when a login straddles a renewal, but only that way.
  for (const f of files.failed) assert.match(f, /do not match|Permission denied|No such file|Load key/, f);
});
