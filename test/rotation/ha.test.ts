/**
 * CA rotation with two auth services on one PostgreSQL (SPEC §15): the daemon renews through
 * one, the node through the other, and the phases of a User and a Host CA rotation are driven
 * through either in turn. A login over ssh once a second never fails; both services end on the
 * new keys, mezctl keeps working against each with its own admin.identity.
 */
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { SEED_ROLE, mezctlOk, startAuth, type AuthProcess } from "../harness/auth.js";
import { startPostgres, type PostgresServer } from "../harness/postgres.js";
import { PG_BIN_DIR, missingComponent, sshdTestsCannotRun } from "../harness/require.js";
import { killDaemons, seedSsh } from "../identity/fixture.js";
import {
  AS_NODE, LoginLoop, caStatus, keepAside, loginWith, manualStep, report, signingCa, startRotationAgent, startRotationNode, until,
  type RotationBed,
} from "./fixture.js";

const missing = sshdTestsCannotRun() ?? (PG_BIN_DIR === undefined ? (["PostgreSQL server", "apt-get install postgresql"] as [string, string]) : undefined);
let work: string;
let pg: PostgresServer | undefined;
let a: AuthProcess;
let b: AuthProcess;
let bed: RotationBed;

describe("CA rotation on two auth services sharing PostgreSQL", () => {
  before(async () => {
    if (missing) return; // each test says so (missingComponent): loudly, and as a failure under CI
    work = mkdtempSync(join(tmpdir(), "mezite-rotation-ha-"));
    pg = await startPostgres();
    a = await startAuth({ backend: pg.url });
    const bDir = join(work, "b");
    mkdirSync(bDir, { mode: 0o700 });
    copyFileSync(join(a.dataDir, "cluster.key"), join(bDir, "cluster.key"));
    b = await startAuth({ backend: pg.url, dataDir: bDir });
    writeFileSync(join(work, "role.yaml"), SEED_ROLE);
    await mezctlOk(a, "create", "-f", join(work, "role.yaml"));
    const node = await startRotationNode(a, work, b.addr, b.addr);
    const agent = await startRotationAgent(a, work, a.addr);
    await until("a first login", 15_000, async () => ((await seedSsh(agent.dest, node.sshd.port, "deploy", AS_NODE)).code === 0 ? true : undefined));
    bed = { agent, node, loop: new LoginLoop(agent.dest, node.sshd.port) };
    bed.loop.start();
  });

  after(async () => {
    await bed?.loop.stop();
    killDaemons();
    await bed?.node.stop();
    await a?.stop();
    await b?.stop();
    await pg?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("user then host rotation, phases driven through either service: no failed login, both services end on the new keys", async (t) => {
    if (missing) return missingComponent(t, ...missing);
    const kept = keepAside(bed.agent.dest, join(work, "kept"));
    const oldUser = signingCa(join(bed.agent.dest, "ssh_cert"));
    const via = [a, b, a, b];
    const phases = ["init", "update_clients", "update_servers", "standby"];
    for (const [i, phase] of phases.entries()) await manualStep(bed, via[i]!, "user", phase);
    for (const [i, phase] of phases.entries()) await manualStep(bed, via[3 - i]!, "host", phase);

    // Both services see the same CAs, and each one's admin.identity (rewritten on every phase) still works against it.
    const [fromA, fromB] = [await caStatus(a), await caStatus(b)];
    assert.deepEqual(fromA, fromB);
    for (const ca of fromA) {
      assert.equal(ca.phase, "standby");
      assert.deepEqual(ca.keys.map((k) => [k.signing, k.holders]), [[true, 1]], `${ca.type} CA: one key, held by the agent or the node`);
    }
    assert.notEqual(signingCa(join(bed.agent.dest, "ssh_cert")), oldUser);
    const { ms } = await until("the old User CA's certificate refused", 10_000, async () => ((await loginWith(kept, bed.agent.dest, bed.node.sshd.port)).code !== 0 ? true : undefined));
    report(`old User CA certificate refused within ${ms} ms of probing`);
    report(`logins: ${bed.loop.attempts}, failed: ${bed.loop.failures.length}`);
    assert.deepEqual(bed.loop.failures, []);
    assert.ok(bed.loop.attempts >= 25, `the loop ran ${bed.loop.attempts} logins`);
  });
});
