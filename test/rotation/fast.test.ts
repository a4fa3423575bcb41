/**
 * CA rotation stepped by hand as fast as `mezctl` allows (SPEC §15, "No step strands anyone"),
 * with real components: an identity daemon on its default intervals (a CA check every ~45 s), a
 * node run by `mezd node start` behind a real sshd, and a login once a second. Every step is
 * either refused with the one line naming who is behind, or safe; the daemon and the node end on
 * the new keys without a new token. Then a daemon waiting out an automatic rotation's renewal
 * spread: a later manual step renews it at once.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { SEED_ROLE, mezctlOk, startAuth, type AuthProcess } from "../harness/auth.js";
import { missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { JOINED, killDaemons } from "../identity/fixture.js";
import {
  LoginLoop, caStatus, report, signingCa, startLoginLoop, startRotationAgent, startRotationNode, stepWhenAllowed, until, type RotationAgent, type RotationNode,
} from "./fixture.js";

const missing = sshdTestsCannotRun();
const STRANDED = /self-signed certificate|certificate chain|not signed by|ERR_WRONG_CA|token/i;

/** The Host CA keys the daemon's ssh_known_hosts trusts. */
const knownHostCas = (dest: string) => readFileSync(join(dest, "ssh_known_hosts"), "utf8").split("\n").filter((l) => l.startsWith("@cert-authority ")).length;

describe("--type=all stepped by hand as fast as mezctl allows, with a daemon on default intervals and a node", () => {
  let work: string;
  let auth: AuthProcess;
  let node: RotationNode;
  let agent: RotationAgent;
  let loop: LoginLoop;

  before(async () => {
    if (missing) return;
    work = mkdtempSync(join(tmpdir(), "mezite-fast-rotation-"));
    auth = await startAuth();
    writeFileSync(join(work, "role.yaml"), SEED_ROLE);
    await mezctlOk(auth, "create", "-f", join(work, "role.yaml"));
    node = await startRotationNode(auth, work, auth.addr, auth.addr);
    agent = await startRotationAgent(auth, work, auth.addr, []); // default --ca-check-interval (45s)
    loop = await startLoginLoop(agent, node);
  });

  after(async () => {
    await loop?.stop();
    killDaemons();
    await node?.stop();
    await auth?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("every step is refused with one line or safe; daemon and node end on the new keys without a new token; no login fails", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const started = Date.now();
    const oldKeys = (await caStatus(auth)).map((c) => c.keys[0]!.ssh_fingerprint);
    for (const phase of ["init", "update_clients", "update_servers", "standby"]) {
      loop.phase = `all ${phase}`;
      const t0 = Date.now();
      const refusals = await stepWhenAllowed(auth, ["--type=all", "--manual", `--phase=${phase}`], 150_000);
      report(`all -> ${phase}: taken ${Date.now() - t0} ms after the first try, ${refusals.length} refusals${refusals.length ? `, e.g. "${refusals.at(-1)}"` : ""}`);
    }
    const [user, host] = await caStatus(auth);
    const newKeys = [user!.keys[0]!.ssh_fingerprint, host!.keys[0]!.ssh_fingerprint];
    assert.notDeepEqual(newKeys, oldKeys);
    loop.phase = "all standby (done)";
    const { ms } = await until("daemon and node on the new keys", 90_000, async () => {
      const onNew =
        signingCa(join(agent.dest, "ssh_cert")) === newKeys[0] &&
        knownHostCas(agent.dest) === 1 &&
        signingCa(join(node.dir, "ssh_host_ed25519_key-cert.pub")) === newKeys[1];
      // A manual step's renewals are spread over a few seconds (SPEC §20): the node may renew for
      // standby's trust a moment after the daemon did.
      return onNew && (await caStatus(auth)).every((c) => c.behind.count === 0) ? true : undefined;
    });
    report(`daemon and node on the new keys ${ms} ms after standby; the whole rotation took ${Date.now() - started} ms`);
    const status = await caStatus(auth);
    assert.deepEqual(status.map((c) => c.behind.count), [0, 0], "nobody behind at the end");
    await until("two more logins on the new keys", 10_000, async () => (loop.attempts >= 2 ? true : undefined));
    await loop.stop();
    report(`logins: ${loop.attempts}, failed: ${loop.failures.length}`);
    assert.deepEqual(loop.failures, []);
    assert.equal(agent.daemon.count(JOINED), 1, "the daemon never joined again");
    const daemonErrors = agent.daemon.output().split("\n").filter((l) => /"level":"(warn|error)"/.test(l));
    assert.deepEqual(daemonErrors.filter((l) => STRANDED.test(l)), [], "the daemon never failed to verify the service");
    const nodeErrors = node.output().split("\n").filter((l) => /"level":"(warn|error)"/.test(l));
    assert.deepEqual(nodeErrors.filter((l) => STRANDED.test(l)), [], "the node agent never failed to verify the service");
  });
});

describe("a daemon waiting out an automatic rotation's renewal spread (issue: it slept through later manual steps)", () => {
  let auth: AuthProcess;
  let work: string;
  let agent: RotationAgent;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), "mezite-spread-"));
    auth = await startAuth();
    writeFileSync(join(work, "role.yaml"), SEED_ROLE);
    await mezctlOk(auth, "create", "-f", join(work, "role.yaml"));
    agent = await startRotationAgent(auth, work, auth.addr, ["--ca-check-interval=1s"]);
  });

  after(async () => {
    killDaemons();
    await auth?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("automatic rotation, rollback, then manual steps as fast as mezctl allows: the daemon renews at each at once and ends on the new keys", async () => {
    // 6 h: phases of 2 h, renewals spread over 30 min.
    await mezctlOk(auth, "ca", "rotate", "--type=host", "--grace-period=6h");
    await agent.daemon.waitFor(/"msg":"CA rotation phase changed; renewing","ca_state":"[0-9a-f]+","within_ms":1800000/);
    await stepWhenAllowed(auth, ["--type=host", "--phase=rollback"], 10_000);
    await stepWhenAllowed(auth, ["--type=host", "--manual", "--phase=standby"], 10_000);
    const timings: string[] = [];
    for (const phase of ["init", "update_clients", "update_servers", "standby"]) {
      const t0 = Date.now();
      const refusals = await stepWhenAllowed(auth, ["--type=host", "--manual", `--phase=${phase}`], 30_000);
      timings.push(`${phase}: ${Date.now() - t0} ms, ${refusals.length} refusals`);
    }
    report(`manual host steps after the automatic rotation's rollback: ${timings.join("; ")}`);
    // In step with standby: the service issued it certificates and trust of the new key alone.
    const { ms } = await until("the daemon on the new Host CA key alone", 15_000, async () =>
      knownHostCas(agent.dest) === 1 && (await caStatus(auth)).every((c) => c.behind.count === 0) ? true : undefined,
    );
    report(`daemon in step with the finished rotation ${ms} ms after standby`);
    assert.equal(agent.daemon.count(JOINED), 1, "no new token needed");
    assert.doesNotMatch(agent.daemon.output(), /self-signed certificate|issue failed/);
  });
});
