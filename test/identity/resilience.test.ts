/**
 * Crashes and outages: the daemon killed right after it sent a renewal, the auth service killed
 * in the middle of one, and the auth service gone for longer than a renewal interval. None of it
 * may lock the instance (a replayed request is answered with the same certificates), and the
 * daemon keeps its outputs and recovers on its own.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, watch } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { AuthProcess } from "../harness/auth.js";
import { JOINED, RENEWED, addIdentity, audit, killDaemons, logLines, oneShot, quickAudit, quickStatus, readState, startAuthWithRole, startDaemon, status } from "./fixture.js";

let tmp: string;
let auth: AuthProcess;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "mezite-identity-resilience-"));
  auth = await startAuthWithRole(tmp);
});

after(async () => {
  killDaemons();
  await auth.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const PENDING = "pending_renewal.json";
const RENEW_AUDIT = /"type":"agent_identity\.renew"[^\n]*"success":true|"success":true[^\n]*"type":"agent_identity\.renew"/g;

/** Resolves when `name` appears in `dir` (created or renamed into place). */
function appears(dir: string, name: string): { done: Promise<void>; close(): void } {
  let close = () => {};
  const done = new Promise<void>((res) => {
    const w = watch(dir, (_event, file) => {
      if (file === name && existsSync(join(dir, name))) res();
    });
    close = () => w.close();
  });
  return { done, close };
}

/** Resolves when the auth service has logged `n` successful renewals in all. */
function renewalsLogged(n: number): Promise<void> {
  const proc = auth.proc;
  return new Promise((res) => {
    const check = () => {
      if ((auth.output().match(RENEW_AUDIT)?.length ?? 0) < n) return;
      proc.stdout!.off("data", check);
      proc.stderr!.off("data", check);
      res();
    };
    // Listeners added after the harness's own, so auth.output() already holds the new data.
    proc.stdout!.on("data", check);
    proc.stderr!.on("data", check);
    check();
  });
}

const serial = (dest: string) => readFileSync(join(dest, "cert_serial"), "utf8").trim();

describe("crashes and outages", { concurrency: true }, () => {
  // These kill, freeze and restart the shared auth service: one at a time.
  describe("with the shared auth service", { concurrency: 1 }, () => {
    test("SIGKILL right after a renewal was sent never locks the instance; a saved request is replayed with the same certificates", async () => {
      const dest = join(tmp, "crash");
      const storage = join(dest, ".mezite");
      assert.equal((await oneShot(auth.addr, dest, [`--token=${await addIdentity(auth, "crashy")}`])).code, 0);

      let killed = 0;
      let lostReplies = 0;
      let replaysChecked = 0;
      for (let round = 0; round < 8; round++) {
        const localGen = Number(readState(storage).generation);
        const renewsBefore = auth.output().match(RENEW_AUDIT)?.length ?? 0;
        // Even rounds: kill as soon as the request is saved (before, during or just after the
        // call, by a random margin). Odd rounds: kill the moment the server has committed the
        // renewal, so its reply is lost.
        const trigger = round % 2 === 0 ? appears(storage, PENDING) : { done: renewalsLogged(renewsBefore + 1), close() {} };
        const daemon = startDaemon(auth.addr, dest, ["--one-shot"]);
        const outcome = await Promise.race([trigger.done.then(() => "trigger" as const), daemon.exited.then(() => "exited" as const)]);
        trigger.close();
        if (outcome === "trigger") {
          if (round % 2 === 0) await new Promise((r) => setTimeout(r, Math.random() * 60));
          daemon.proc.kill("SIGKILL");
        }
        const code = await daemon.exited;
        assert.ok(code === 0 || code === 137, `round ${round}: exit ${code}\n${daemon.output()}`);
        if (code === 137) killed++;

        const server = await quickStatus(auth, "crashy");
        assert.equal(server.locked, false, `round ${round}: locked`);
        const afterGen = Number(readState(storage).generation);
        if (code !== 137 || afterGen !== localGen || server.generation === localGen) continue;
        // The server moved on but the daemon never saw the reply: the next run must replay it.
        lostReplies++;
        assert.equal(server.generation, localGen + 1);
        assert.ok(existsSync(join(storage, PENDING)), "the request in flight is still saved");
        const issuedSerial = (await quickAudit(auth, "agent_identity.renew")).filter((e) => e.identity === "crashy" && e.success).at(-1)!.serial;
        const replay = await oneShot(auth.addr, dest);
        assert.equal(replay.code, 0, replay.stderr);
        assert.equal(serial(dest), issuedSerial, "the replay is answered with the certificates already issued");
        assert.equal(Number(readState(storage).generation), localGen + 1);
        assert.equal((await quickStatus(auth, "crashy")).generation, localGen + 1, "a replay does not issue again");
        assert.ok(!existsSync(join(storage, PENDING)));
        replaysChecked++;
      }
      process.stderr.write(`# 8 crash rounds: ${killed} SIGKILLs, ${lostReplies} lost replies replayed\n`);
      assert.ok(killed >= 4, `only ${killed} rounds killed the daemon in flight`);
      assert.ok(replaysChecked >= 1, "no round lost a reply: the replay path went untested");

      const final = await oneShot(auth.addr, dest);
      assert.equal(final.code, 0, final.stderr);
      const s = await status(auth, "crashy");
      assert.equal(s.locked, false);
      assert.equal(s.generation, Number(readState(storage).generation));
      assert.deepEqual((await audit(auth, "agent_identity.generation_mismatch")).filter((e) => e.identity === "crashy"), []);
    });

    test("the auth service killed in the middle of renewals: the daemon goes on, never locked", async () => {
      const dest = join(tmp, "auth-crash");
      const daemon = startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"], { MEZITE_TOKEN: await addIdentity(auth, "survivor") });
      await daemon.waitFor(JOINED);
      for (let round = 0; round < 3; round++) {
        const renewed = daemon.count(RENEWED);
        const renewsBefore = auth.output().match(RENEW_AUDIT)?.length ?? 0;
        // Round 0: kill as the request is saved; then as the server commits it.
        const trigger = round === 0 ? appears(join(dest, ".mezite"), PENDING) : { done: renewalsLogged(renewsBefore + 1), close() {} };
        daemon.proc.kill("SIGHUP");
        await trigger.done;
        trigger.close();
        await auth.kill9();
        await auth.restart();
        await daemon.waitFor(RENEWED, renewed + 1, 20_000);
        assert.equal((await quickStatus(auth, "survivor")).locked, false, `round ${round}`);
      }
      assert.equal(daemon.proc.exitCode, null, daemon.output());
      const s = await status(auth, "survivor");
      assert.equal(s.generation, Number(readState(join(dest, ".mezite")).generation));
      assert.equal(await daemon.stop(), 0);
    });

    test("before the first issue /readyz is 503, and a stop while joining exits 0 with nothing written", async () => {
      const dest = join(tmp, "never-joined");
      // A port with nothing on it: the join keeps failing.
      const daemon = startDaemon("127.0.0.1:1", dest, ["--diag-addr=127.0.0.1:0"], { MEZITE_TOKEN: "ab".repeat(32) });
      await daemon.waitFor(/"msg":"issue failed; retrying"/);
      const diagPort = Number(/"addr":"127\.0\.0\.1:(\d+)"/.exec(daemon.output())![1]);
      const ready = await fetch(`http://127.0.0.1:${diagPort}/readyz`);
      assert.equal(ready.status, 503);
      assert.match(await ready.text(), /no certificates issued yet/);
      assert.equal(await daemon.stop(), 0, daemon.output());
      assert.ok(!existsSync(join(dest, "ssh_cert")));
    });

    test("SIGTERM while a renewal hangs on a frozen auth service stops at once with exit 0", async () => {
      const dest = join(tmp, "frozen");
      const daemon = startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=50s"], { MEZITE_TOKEN: await addIdentity(auth, "frozen") });
      await daemon.waitFor(JOINED);
      const saved = appears(join(dest, ".mezite"), PENDING);
      auth.proc.kill("SIGSTOP");
      try {
        daemon.proc.kill("SIGHUP");
        await saved.done;
        saved.close();
        await new Promise((r) => setTimeout(r, 200)); // let the call reach the frozen service
        const t0 = performance.now();
        assert.equal(await daemon.stop("SIGTERM"), 0, daemon.output());
        assert.ok(performance.now() - t0 < 2_000);
      } finally {
        auth.proc.kill("SIGCONT");
      }
      // The request it did not see answered is replayed by the next run, without a lock.
      assert.ok(existsSync(join(dest, ".mezite", PENDING)));
      const r = await oneShot(auth.addr, dest);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await quickStatus(auth, "frozen")).locked, false);
    });
  });

  test("the auth service down for longer than a renewal interval: outputs kept, backoff logged, recovery on its own", async (t) => {
    // Its own auth service: this one is down for a long while, the others' tests go on meanwhile.
    const auth = await startAuthWithRole(mkdtempSync(join(tmp, "outage-")));
    t.after(() => auth.stop());
    const dest = join(tmp, "outage");
    const daemon = startDaemon(auth.addr, dest, ["--cert-ttl=1m", "--renewal-interval=10s", "--diag-addr=127.0.0.1:0"], { MEZITE_TOKEN: await addIdentity(auth, "patient") });
    await daemon.waitFor(JOINED);
    const diagPort = Number(/"addr":"127\.0\.0\.1:(\d+)"/.exec(daemon.output())![1]);
    const before = serial(dest);
    const certBefore = readFileSync(join(dest, "ssh_cert"), "utf8");

    await auth.kill9();
    const downAt = performance.now();
    daemon.proc.kill("SIGHUP"); // the first failed renewal now, so the outage spans more than an interval of them
    await daemon.waitFor(/"msg":"issue failed; retrying"/, 3, 20_000);
    // The outage itself is the point here: it must outlast one renewal interval (10 s).
    await new Promise((r) => setTimeout(r, Math.max(0, 10_500 - (performance.now() - downAt))));
    assert.equal(serial(dest), before, "the outputs stay while the service is away");
    assert.equal(readFileSync(join(dest, "ssh_cert"), "utf8"), certBefore);
    assert.equal((await fetch(`http://127.0.0.1:${diagPort}/readyz`)).status, 200, "the outputs are still valid");

    const retries = logLines(daemon.output()).filter((l) => l["msg"] === "issue failed; retrying");
    assert.ok(retries.every((l) => l["code"] === "ERR_UNREACHABLE"), JSON.stringify(retries));
    assert.deepEqual(retries.map((l) => l["attempt"]), retries.map((_, i) => i + 1));
    // Exponential with full jitter, capped at half the interval.
    for (const [i, l] of retries.entries()) assert.ok((l["retry_in_ms"] as number) <= Math.min(1_000 * 2 ** i, 5_000) + 250, JSON.stringify(l));

    const renewed = daemon.count(RENEWED);
    await auth.restart();
    const upAt = performance.now();
    await daemon.waitFor(RENEWED, renewed + 1, 15_000);
    process.stderr.write(`# outage ${Math.round(upAt - downAt)} ms, ${retries.length} retries; renewed ${Math.round(performance.now() - upAt)} ms after the service came back\n`);
    assert.notEqual(serial(dest), before);
    assert.equal((await status(auth, "patient")).locked, false);
    assert.equal(await daemon.stop(), 0);
  });
});
