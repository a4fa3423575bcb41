/**
 * Identity daemons on change streams (SPEC §20), with the real pieces: `bin/mezd auth start`,
 * `bin/mezd identity start` on default intervals (a CA check every 45 s, renewal every 20 min),
 * `bin/mezctl`. A manual rotation step reaches the daemon within 5 s and its renewal follows within
 * the manual step's spread; a lock of its identity ends it within seconds, not at its next renewal.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { SEED_ROLE, mezctlOk, startAuth, type AuthProcess } from "../harness/auth.js";
import { JOINED, RENEWED, addIdentity, killDaemons, startAuthWithRole, startDaemon } from "./fixture.js";

let dir: string;
let auth: AuthProcess;
const STREAM_UP = /"msg":"change stream up"/;

describe("identity daemons on change streams", () => {
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mezite-id-watch-"));
    auth = await startAuthWithRole(dir);
  });
  after(async () => {
    killDaemons();
    await auth?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a manual phase change reaches a daemon within 5 s (checks every 45 s), its renewal within the step's spread; a lock ends it at once", async () => {
    const token = await addIdentity(auth, "streamer");
    const d = startDaemon(auth.addr, join(dir, "out"), [`--token=${token}`]);
    await d.waitFor(JOINED);
    await d.waitFor(STREAM_UP);

    const stepped = Date.now();
    await mezctlOk(auth, "ca", "rotate", "--type=user", "--manual", "--phase=init");
    await d.waitFor(/"msg":"CA rotation phase changed; renewing"/, 1, 5_000);
    const heardMs = Date.now() - stepped; // from before mezctl ran
    const spread = /"msg":"CA rotation phase changed; renewing".*"within_ms":(\d+)/.exec(d.output());
    assert.ok(spread && Number(spread[1]) >= 5_000 && Number(spread[1]) <= 10_000, `a manual step is spread over a few seconds: ${spread?.[0]}`);
    await d.waitFor(RENEWED, 1, 15_000);
    process.stdout.write(`# phase change heard after ${heardMs} ms, renewed after ${Date.now() - stepped} ms (spread ${spread![1]} ms)\n`);

    await mezctlOk(auth, "agent-identities", "lock", "streamer", "--reason=test");
    const locked = Date.now();
    const code = await Promise.race([d.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 10_000))]);
    assert.equal(code, 3, `the locked daemon ends (exit 3) within 10 s, not at its next renewal:\n${d.output()}`);
    assert.match(d.output(), /locked/);
    process.stdout.write(`# lock ended the daemon after ${Date.now() - locked} ms\n`);
  });
});

describe("a service that refuses change streams (--max-change-streams=0)", () => {
  test("the daemon asks every --ca-check-interval instead, and still follows a phase change", async () => {
    const refusing = await startAuth({ extraArgs: ["--max-change-streams=0"] });
    const work = mkdtempSync(join(tmpdir(), "mezite-id-refused-"));
    try {
      writeFileSync(join(work, "role.yaml"), SEED_ROLE);
      await mezctlOk(refusing, "create", "-f", join(work, "role.yaml"));
      const token = await addIdentity(refusing, "poller");
      const d = startDaemon(refusing.addr, join(work, "out"), [`--token=${token}`, "--ca-check-interval=2s"]);
      await d.waitFor(JOINED);
      await d.waitFor(/"msg":"change stream refused; asking every --ca-check-interval meanwhile"/);
      await mezctlOk(refusing, "ca", "rotate", "--type=user", "--manual", "--phase=init");
      await d.waitFor(/"msg":"CA rotation phase changed; renewing"/, 1, 10_000);
      await d.waitFor(RENEWED, 1, 20_000);
      assert.doesNotMatch(d.output(), /"msg":"change stream up"/);
      d.proc.kill("SIGTERM");
      assert.equal(await d.exited, 0);
    } finally {
      await refusing.stop();
      rmSync(work, { recursive: true, force: true });
    }
  });
});
