/**
 * A daemon offline through a whole User CA rotation (issue 24): its renewal certificate is of a
 * key no longer trusted. It is told so, and what to do, instead of "this call needs the daemon's
 * renewal certificate"; status shows the instance as stale; the refusal is audited.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { mezctlOk } from "../harness/auth.js";
import { addIdentity, identityTestbed, oneShot } from "../identity/fixture.js";

const bed = identityTestbed("stale");

test("an instance offline through a User CA rotation is refused with what to do, shown stale, and audited", async () => {
  const token = await addIdentity(bed.auth, "sleeper");
  const dest = join(bed.tmp, "sleeper");
  const joined = await oneShot(bed.auth.addr, dest, [], { MEZITE_TOKEN: token });
  assert.equal(joined.code, 0, joined.stderr);
  // Stepped by hand while it sleeps: past it (it is behind) only with --force.
  for (const phase of ["init", "update_clients", "update_servers", "standby"]) {
    await mezctlOk(bed.auth, "ca", "rotate", "--type=user", "--manual", `--phase=${phase}`, "--force");
  }
  const woke = await oneShot(bed.auth.addr, dest);
  assert.equal(woke.code, 3, woke.stderr);
  const line = woke.stderr.split("\n").filter((l) => l.startsWith("mezd:"));
  assert.equal(line.length, 1, woke.stderr);
  assert.match(line[0]!, /^mezd: agent identity "sleeper" instance [0-9a-f]{8} was offline through a CA rotation: its certificates are of a retired User CA key and cannot renew; ask an admin for a new token \(mezctl agent-identities add-token sleeper\) and join again/);
  const status = JSON.parse(await mezctlOk(bed.auth, "agent-identities", "status", "sleeper", "--format=json")) as { instances: { stale: boolean }[] };
  assert.deepEqual(status.instances.map((i) => i.stale), [true]);
  assert.match(await mezctlOk(bed.auth, "agent-identities", "status", "sleeper"), /STALE \(certificates of a retired User CA key: add-token\)/);
  const events = JSON.parse(await mezctlOk(bed.auth, "audit", "ls", "--type=agent_identity.renew", "--format=json")) as { identity: string; success: boolean; error: string }[];
  assert.ok(events.some((e) => e.identity === "sleeper" && !e.success && e.error === "ERR_NOT_AUTHORIZED"), JSON.stringify(events));
  // A new token joins again; the new instance is not stale.
  const again = await oneShot(bed.auth.addr, join(bed.tmp, "sleeper-2"), [], { MEZITE_TOKEN: (await mezctlOk(bed.auth, "agent-identities", "add-token", "sleeper")).match(/^Token: ([0-9a-f]{64})$/m)![1]! });
  assert.equal(again.code, 0, again.stderr);
});
