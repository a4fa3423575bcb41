/**
 * High availability (issue 6): two real auth services on one real PostgreSQL. Every atomic
 * guarantee — one join per token, one increment per generation, retries answered the same —
 * must hold across them, and either must serve what the other created.
 */
import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { startPostgres, type PostgresServer } from "../harness/postgres.js";
import { missingComponent, PG_BIN_DIR, SSH_KEYGEN_PATH } from "../harness/require.js";
import { joinNode, revoked, startNodeAgent, waitFor } from "../harness/node-agent.js";
import { MEZD, mezctl, mezctlOk, run, SEED_ROLE_PATH, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { startProxy, type Proxy } from "../harness/proxy.js";
import { freePort } from "../harness/net.js";
import { adminApi, join as joinAuth, outcome, pending, renew, tally, type Held } from "../auth/client.js";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";
import { generateIssueKeys, publicKeysOf } from "../../src/identity/protocol.js";
import { quickStatus, startDaemon } from "../identity/fixture.js";

describe("two auth services on one PostgreSQL", { concurrency: false }, () => {
  let pg: PostgresServer | undefined;
  let a: AuthProcess;
  let b: AuthProcess;
  let proxy: Proxy;
  let bDiag: number;
  const tmp = mkdtempSync(join(tmpdir(), "mezite-ha-"));

  before(async () => {
    if (PG_BIN_DIR === undefined) return;
    pg = await startPostgres();
    a = await startAuth({ backend: pg.url });
    // The second service shares the database; it needs the first one's cluster key to unseal the CAs.
    const bDir = join(tmp, "b");
    mkdirSync(bDir, { mode: 0o700 });
    copyFileSync(join(a.dataDir, "cluster.key"), join(bDir, "cluster.key"));
    bDiag = await freePort();
    b = await startAuth({ backend: pg.url, dataDir: bDir, extraArgs: [`--diag-addr=127.0.0.1:${bDiag}`] });
    proxy = await startProxy(() => [a.port, b.port]);
    await mezctlOk(a, "create", "-f", SEED_ROLE_PATH);
  });

  after(async () => {
    await proxy?.stop();
    await a?.stop();
    await b?.stop();
    await pg?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  const requirePg = (t: TestContext) => {
    if (PG_BIN_DIR === undefined) {
      missingComponent(t, "PostgreSQL server", "apt-get install postgresql");
      return false;
    }
    return true;
  };

  const addIdentity = async (name: string) => tokenFrom(await mezctlOk(a, "agent-identities", "add", `--name=${name}`, "--roles=ci-deployer"));

  test("the second service refuses to start without the cluster key, with a clear message", async (t) => {
    if (!requirePg(t)) return;
    const dir = join(tmp, "nokey");
    const r = await run(MEZD, ["auth", "start", `--data-dir=${dir}`, "--listen=127.0.0.1:0", `--backend=${pg!.url}`], { timeoutMs: 20_000 });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cluster\.key is missing: copy it from the auth service that created the cluster/);
    assert.equal(r.stderr.trim().split("\n").length, 1, "one line");
  });

  test("create on one service, use on the other: roles, identities, tokens, locks, audit", async (t) => {
    if (!requirePg(t)) return;
    const viaB = (...args: string[]) => mezctlOk(a, `--auth-server=${b.addr}`, ...args);
    assert.match(await viaB("get", "roles"), /ci-deployer/);
    const token = await addIdentity("ha-visible");
    assert.match(await viaB("agent-identities", "ls"), /ha-visible/);
    const held = await joinAuth(b.addr, token);
    assert.equal(held.certs.principals.join(","), "deploy");
    await mezctlOk(b, `--identity=${a.identityPath}`, "agent-identities", "lock", "ha-visible", "--reason=ha test");
    const locks = JSON.parse(await mezctlOk(a, "locks", "ls", "--format=json")) as { target: string }[];
    assert.ok(locks.some((l) => l.target === "ha-visible"), "a lock made through B is seen through A");
    const r = await outcome(renew(a.addr, held));
    assert.notEqual(r, "ok");
    assert.equal(r !== "ok" && r.code, "ERR_LOCKED");
    await viaB("agent-identities", "unlock", "ha-visible");
    await renew(a.addr, held);
    const audit = JSON.parse(await viaB("audit", "ls", "--format=json", "--since=10m")) as { type: string; identity: string }[];
    for (const type of ["agent_identity.create", "agent_identity.join", "lock.create", "lock.delete", "agent_identity.renew"]) {
      assert.ok(audit.some((e) => e.type === type && e.identity === "ha-visible"), `audit through B has ${type}`);
    }
    const tokens = JSON.parse(await viaB("tokens", "ls", "--format=json")) as { agent_identity: string; used: boolean }[];
    assert.ok(tokens.some((x) => x.agent_identity === "ha-visible" && x.used));
  });

  test("a lock made through one service reaches the KRL of a node agent streaming from the other within seconds", async (t) => {
    if (!requirePg(t)) return;
    if (SSH_KEYGEN_PATH === undefined) return missingComponent(t, "ssh-keygen", "apt-get install openssh-client");
    const held = await joinAuth(b.addr, await addIdentity("ha-krl"));
    const certPath = join(tmp, "ha-krl-cert.pub");
    writeFileSync(certPath, `${held.certs.sshCertificate}\n`);
    const dir = await joinNode(a, "ha-node", join(tmp, "ha-node"), b.addr);
    // Polls every 10 minutes: only B's change stream can bring the lock in time.
    const node = startNodeAgent(b.addr, dir, 10 * 60_000);
    t.after(() => node.stop());
    await waitFor("the node agent's stream from B is up", () => /"change stream up"/.test(node.log()));
    assert.equal(revoked(dir, certPath), false);
    const t0 = Date.now();
    await mezctlOk(a, "agent-identities", "lock", "ha-krl", "--reason=ha test");
    // B learns of A's lock only through the database (its revocation state's change mark).
    await waitFor("B's node agent revokes the certificate", () => revoked(dir, certPath), 10_000);
    process.stdout.write(`# lock through A -> in the KRL of B's node agent after ${Date.now() - t0} ms\n`);
  });

  test("a node removed through one service hears it on its stream from the other within seconds, and its agent stops", async (t) => {
    if (!requirePg(t)) return;
    const dir = await joinNode(a, "ha-removed", join(tmp, "ha-removed"), b.addr);
    // Polls and heartbeats every 10 minutes: only B's change stream can bring the removal in time.
    const node = startNodeAgent(b.addr, dir, 10 * 60_000);
    t.after(() => node.stop());
    await waitFor("the node agent's stream from B is up", () => /"change stream up"/.test(node.log()));
    const t0 = Date.now();
    await mezctlOk(a, "nodes", "rm", "ha-removed");
    await waitFor("B's node agent stops: removed", () => /run failed: .*"ha-removed" was removed or replaced/.test(node.log()), 10_000);
    process.stdout.write(`# node removed through A -> its agent streaming from B stopped after ${Date.now() - t0} ms\n`);
  });

  test("one token, 50 concurrent joins spread over both services: exactly one succeeds", async (t) => {
    if (!requirePg(t)) return;
    const token = await addIdentity("ha-join-race");
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => outcome(joinAuth(i % 2 ? a.addr : b.addr, token))));
    assert.deepEqual(tally(results), { ok: 1, ERR_TOKEN_USED: 49 });
  });

  test("20 concurrent renewals of one generation over both: one increments, the rest lock the clone", async (t) => {
    if (!requirePg(t)) return;
    const held = await joinAuth(a.addr, await addIdentity("ha-clone"));
    const other = await joinAuth(b.addr, tokenFrom(await mezctlOk(a, "agent-identities", "add-token", "ha-clone")));
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => outcome(renew(i % 2 ? a.addr : b.addr, held))));
    // Requests that arrive after the clone lock exists are refused by the lock itself, and so may
    // the one whose generation swap won: its look at the locks after committing (the race check of
    // revocations.ts) can already find the clone lock a loser made, and its certificate is in the
    // KRL either way (an instance lock revokes the instance's certificates).
    const counts = tally(results);
    assert.ok((counts["ok"] ?? 0) <= 1, JSON.stringify(counts));
    assert.ok((counts["ERR_GENERATION_MISMATCH"] ?? 0) >= 1, JSON.stringify(counts));
    assert.equal((counts["ok"] ?? 0) + (counts["ERR_GENERATION_MISMATCH"] ?? 0) + (counts["ERR_LOCKED"] ?? 0), 20, JSON.stringify(counts));
    const status = JSON.parse(await mezctlOk(a, "agent-identities", "status", "ha-clone", "--format=json")) as { instances: { id: string; locked: boolean; generation: number }[] };
    const inst = status.instances.find((i) => i.id === held.certs.instanceId)!;
    assert.equal(inst.locked, true);
    assert.equal(inst.generation, 2);
    const renewedOther = await renew(a.addr, other);
    assert.equal(renewedOther.certs.generation, 2n, "the other instance keeps renewing");
  });

  test("the same request retried is answered with the same certificates by either service", async (t) => {
    if (!requirePg(t)) return;
    const held = await joinAuth(a.addr, await addIdentity("ha-retry"));
    const p = pending();
    const first = await renew(a.addr, held, p);
    const again = await renew(b.addr, held, p);
    assert.equal(again.certs.serial, first.certs.serial);
    assert.equal(again.certs.sshCertificate, first.certs.sshCertificate);
    assert.equal(again.certs.generation, 2n);
    const concurrent = await Promise.all(Array.from({ length: 10 }, (_, i) => renew(i % 2 ? a.addr : b.addr, held, p)));
    assert.ok(concurrent.every((c) => c.certs.serial === first.certs.serial));
  });

  test("/metrics counts the statements a service sends PostgreSQL: a renewal's transaction is four", async (t) => {
    if (!requirePg(t)) return;
    const held = await joinAuth(a.addr, await addIdentity("ha-metrics"));
    const statements = async () => {
      const text = await (await fetch(`http://127.0.0.1:${bDiag}/metrics`)).text();
      return Object.fromEntries([...text.matchAll(/^mezite_backend_queries_total\{statement="([^"]+)"\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
    };
    const before = await statements();
    await renew(b.addr, held);
    const after = await statements();
    const sent = (name: string) => (after[name] ?? 0) - (before[name] ?? 0);
    // The generation's swap, then the certificate, the reply and the audit event in one statement,
    // commit together.
    assert.deepEqual([sent("BEGIN"), sent("cas"), sent("putMany"), sent("put"), sent("COMMIT")], [1, 1, 1, 0, 1], JSON.stringify({ before, after }));
    assert.ok(sent("get") >= 2, JSON.stringify({ before, after }));
  });

  test("killing one service mid-load: renewals go on through the other, no lock, no loss", async (t) => {
    if (!requirePg(t)) return;
    const holders: Held[] = [];
    for (let i = 0; i < 4; i++) holders.push(await joinAuth(proxy.addr, await addIdentity(`ha-load-${i}`)));
    let killed = false;
    const loops = holders.map(async (h0, i) => {
      let h = h0;
      let failures = 0;
      for (let round = 0; round < 12; round++) {
        if (i === 0 && round === 4 && !killed) {
          killed = true;
          await a.kill9();
        }
        const p = pending(); // saved before sending, as the daemon does
        for (;;) {
          const r = await outcome(renew(proxy.addr, h, p).then((n) => (h = n)));
          if (r === "ok") break;
          assert.equal(r.code, "", `only transport failures while a service dies, got ${r.code} ${r.message}`);
          if (++failures > 20) assert.fail(`too many failures: ${r.message}`);
        }
      }
      return h;
    });
    const finals = await Promise.all(loops).finally(() => a.restart());
    for (const h of finals) assert.equal(h.certs.generation, 13n, "12 renewals after the join, none lost");
    const ls = JSON.parse(await mezctlOk(b, `--identity=${a.identityPath}`, `--auth-server=${b.addr}`, "agent-identities", "ls", "--format=json")) as { name: string; locked: boolean; instances: { locked: boolean }[] }[];
    for (const s of ls.filter((x) => x.name.startsWith("ha-load-"))) assert.ok(!s.locked && s.instances.every((i) => !i.locked), `${s.name} is not locked`);
  });

  test("real daemons behind one address renew through the survivor when a service is killed", async (t) => {
    if (!requirePg(t)) return;
    const daemons = [];
    for (let i = 0; i < 2; i++) {
      const token = await addIdentity(`ha-daemon-${i}`);
      const d = startDaemon(proxy.addr, join(tmp, `daemon-${i}`), ["--cert-ttl=1m", "--renewal-interval=10s"], { MEZITE_TOKEN: token });
      daemons.push(d);
    }
    try {
      for (const d of daemons) await d.waitFor(/"msg":"agent identity joined"/, 1, 20_000);
      await b.kill9();
      // SIGHUP renews at once: every renewal now has to go through A.
      for (const d of daemons) d.proc.kill("SIGHUP");
      for (const d of daemons) await d.waitFor(/"msg":"agent identity renewed"/, 1, 20_000);
      await b.restart();
      await a.kill9();
      for (const d of daemons) d.proc.kill("SIGHUP");
      for (const d of daemons) await d.waitFor(/"msg":"agent identity renewed"/, 2, 20_000);
      for (let i = 0; i < daemons.length; i++) {
        const s = await quickStatus(b, `ha-daemon-${i}`);
        assert.equal(s.generation, 3, "join + two renewals, each through the surviving service");
        assert.ok(!s.locked && s.instances.every((x) => !x.locked));
      }
    } finally {
      for (const d of daemons) await d.stop();
      await a.restart();
    }
  });

  test("a PostgreSQL restart during load: calls fail cleanly while it is down and succeed after", async (t) => {
    if (!requirePg(t)) return;
    let h = await joinAuth(a.addr, await addIdentity("ha-pg-restart"));
    h = await renew(b.addr, h);
    await pg!.restart(async () => {
      const down = await outcome(renew(a.addr, h));
      assert.notEqual(down, "ok");
      assert.equal(down !== "ok" && down.grpc, Code.Unavailable, "the database being down is Unavailable, not a crash");
      const admin = await mezctl(a, "agent-identities", "ls");
      assert.equal(admin.code, 1);
      assert.equal(admin.stderr.trim().split("\n").length, 1, `one line: ${admin.stderr}`);
    });
    // The failed renewal above was never committed: the same generation renews on either service.
    for (let i = 0; i < 20; i++) {
      const r = await outcome(renew(i % 2 ? a.addr : b.addr, h).then((n) => (h = n)));
      if (r === "ok") break;
      await new Promise((res) => setTimeout(res, 250));
    }
    assert.equal(h.certs.generation, 3n);
    h = await renew(b.addr, h);
    assert.equal(h.certs.generation, 4n);
  });

  test("one cluster name for every service: another --cluster-name refuses to start, none takes the stored one", async (t) => {
    if (!requirePg(t)) return;
    const dir = join(tmp, "named");
    mkdirSync(dir, { mode: 0o700 });
    copyFileSync(join(a.dataDir, "cluster.key"), join(dir, "cluster.key"));
    const other = await run(MEZD, ["auth", "start", `--data-dir=${dir}`, "--listen=127.0.0.1:0", `--backend=${pg!.url}`, "--cluster-name=other-host.example"], { timeoutMs: 20_000 });
    assert.equal(other.code, 2, other.stderr);
    assert.match(other.stderr, /--cluster-name=other-host\.example does not match this backend's cluster "test\.mezite"/);
    const c = await startAuth({ backend: pg!.url, dataDir: dir, clusterName: null });
    try {
      const info = JSON.parse(await mezctlOk(c, "status", "--format=json")) as { cluster_name: string };
      assert.equal(info.cluster_name, "test.mezite", "a service on a host with another name uses the stored cluster name");
    } finally {
      await c.stop();
    }
  });

  test("an ID token joins once across both services: 20 concurrent joins, 10 through each, one succeeds", async (t) => {
    if (!requirePg(t)) return;
    await addIdentity("ha-ci");
    const { privateKey, publicKey } = await generateKeyPair("ES256");
    const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "ha" }] });
    const doc = { kind: "join_token", metadata: { name: "ha-ci" }, spec: { agent_identity: "ha-ci", join_method: "oidc", oidc: { issuer: "https://ci.invalid", static_jwks: jwks, allow: [{ sub: "pipeline" }] } } };
    await adminApi(a).createJoinToken({ documentJson: JSON.stringify(doc), force: false });
    const iat = Math.floor(Date.now() / 1000);
    const jwt = await new SignJWT({ iss: "https://ci.invalid", aud: "test.mezite", sub: "pipeline", iat, exp: iat + 300, jti: "ha-1" }).setProtectedHeader({ alg: "ES256", kid: "ha" }).sign(privateKey);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        outcome(connect(JoinService, (i % 2 ? a : b).addr, {}).joinWithIdToken({ joinToken: "ha-ci", idToken: jwt, ...publicKeysOf(generateIssueKeys()), requestedTtlMs: 3_600_000n })),
      ),
    );
    assert.deepEqual(tally(results), { ok: 1, ERR_TOKEN_USED: 19 });
  });
});
