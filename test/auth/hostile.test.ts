/**
 * Slow and hostile clients (SPEC §13) against the real auth service: a connection that sends
 * nothing, a TLS session that never speaks HTTP/2, and half a request are each closed within
 * 10 s while the service keeps serving; connections and streams are capped, and connections
 * without a client certificate cannot crowd out those with one; a flood of joins
 * with unknown token ids is audited as one event, not one write each; audit ls has a real limit.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as pathJoin } from "node:path";
import { connect as h2connect } from "node:http2";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { after, before, test } from "node:test";
import { JoinService } from "../../src/api/gen/mezite/v1/join_pb.js";
import { connect } from "../../src/api/client.js";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { buildJoinRequest, generateIssueKeys } from "../../src/identity/protocol.js";
import { SEED_ROLE, mezctl, startAuth, type AuthProcess } from "../harness/auth.js";
import { freePort } from "../harness/net.js";
import { HOUR_MS, addIdentity, adminApi, auditEvents, createRole, join, outcome, renew, tally } from "./client.js";

/** The service's deadline is 10 s; allow for a loaded machine. */
const CLOSED_WITHIN_MS = 12_000;

let auth: AuthProcess;
// Its own data dir: the flood test restarts the service and reads what it kept.
const dataDir = mkdtempSync(pathJoin(tmpdir(), "mezite-hostile-"));
before(async () => {
  auth = await startAuth({ dataDir });
  await createRole(auth, SEED_ROLE);
});
after(async () => {
  await auth?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** Milliseconds until the socket closes, or Infinity if it is still open after `limitMs`. */
function closedAfter(socket: Socket | TLSSocket, limitMs: number): Promise<number> {
  const start = Date.now();
  return new Promise((resolve) => {
    const timer = setTimeout(() => (socket.destroy(), resolve(Infinity)), limitMs);
    socket.on("error", () => {});
    socket.resume(); // a paused socket would never see the service's end
    socket.once("close", () => (clearTimeout(timer), resolve(Date.now() - start)));
  });
}

/** The service's open connections (from its /metrics), with a verified client certificate and without. */
async function openConnections(diagPort: number): Promise<{ verified: number; unverified: number }> {
  const metrics = await (await fetch(`http://127.0.0.1:${diagPort}/metrics`)).text();
  const count = (verified: boolean) => Number(new RegExp(`^mezite_auth_connections\\{verified="${verified}"\\} (\\d+)$`, "m").exec(metrics)?.[1]);
  return { verified: count(true), unverified: count(false) };
}

const tlsTo = (port: number) => tlsConnect({ host: "127.0.0.1", port, ALPNProtocols: ["h2"], rejectUnauthorized: false });

test("silent connections, a TLS session without HTTP/2 and half a request are closed within 10 s; the service keeps serving", async () => {
  const [silent, quietTls, halfRequest] = await Promise.all([
    closedAfter(netConnect(auth.port, "127.0.0.1"), CLOSED_WITHIN_MS + 5_000),
    (async () => {
      const s = tlsTo(auth.port);
      await once(s, "secureConnect");
      return closedAfter(s, CLOSED_WITHIN_MS + 5_000);
    })(),
    (async () => {
      const session = h2connect(`https://127.0.0.1:${auth.port}`, { rejectUnauthorized: false });
      session.on("error", () => {});
      const stream = session.request({ ":method": "POST", ":path": `/${JoinService.typeName}/Join`, "content-type": "application/grpc" });
      stream.on("error", () => {});
      stream.write(Buffer.from([0, 0, 0, 1, 0])); // a frame header promising 256 bytes, then nothing
      const start = Date.now();
      const end = await Promise.race([once(stream, "close").then(() => Date.now() - start), new Promise<number>((r) => setTimeout(() => r(Infinity), CLOSED_WITHIN_MS + 5_000))]);
      session.destroy();
      return end;
    })(),
    // Meanwhile a real join goes through.
    join(auth.addr, await addIdentity(auth, "meanwhile", ["ci-deployer"])),
  ]);
  assert.ok(silent <= CLOSED_WITHIN_MS, `a connection that sent nothing was open for ${silent} ms`);
  assert.ok(quietTls <= CLOSED_WITHIN_MS, `a TLS session that sent no HTTP/2 was open for ${quietTls} ms`);
  assert.ok(halfRequest <= CLOSED_WITHIN_MS, `half a request held its stream for ${halfRequest} ms`);
  process.stdout.write(`# closed after: silent ${silent} ms, TLS without HTTP/2 ${quietTls} ms, half request ${halfRequest} ms\n`);
});

test("connections beyond --max-connections are closed at once; streams per connection are capped", async () => {
  const diagPort = await freePort();
  const capped = await startAuth({ extraArgs: ["--max-connections=6", `--diag-addr=127.0.0.1:${diagPort}`] });
  after(() => capped.stop());
  // Held with a client certificate: connections without one would give way to the seventh.
  const id = readAdminIdentity(capped.identityPath);
  const held = await Promise.all(
    Array.from({ length: 6 }, async () => {
      const s = h2connect(`https://127.0.0.1:${capped.port}`, { rejectUnauthorized: false, cert: id.cert_pem, key: id.key_pem });
      s.on("error", () => {});
      await once(s, "remoteSettings"); // the service has seen the certificate (TLS 1.3: after the client's secureConnect)
      return s;
    }),
  );
  try {
    const extra = tlsTo(capped.port);
    const closed = await closedAfter(extra, 3_000);
    assert.ok(closed < 3_000, "the seventh connection was served");
  } finally {
    for (const s of held) s.destroy();
  }
  // The service sees the six go (a fixed wait was not enough on a loaded machine).
  for (let i = 0; i < 100 && (await openConnections(diagPort)).verified !== 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal((await openConnections(diagPort)).verified, 0, "the six held connections closed");
  const session = h2connect(`https://127.0.0.1:${capped.port}`, { rejectUnauthorized: false });
  session.on("error", () => {});
  await once(session, "remoteSettings");
  assert.equal(session.remoteSettings.maxConcurrentStreams, 64);
  session.destroy();
});

test("connections beyond --max-connections-per-source from one address are closed at once; other sources are still served", async () => {
  const capped = await startAuth({ extraArgs: ["--max-connections-per-source=4"] });
  after(() => capped.stop());
  const from = (localAddress: string) => tlsConnect({ socket: netConnect({ host: "127.0.0.1", port: capped.port, localAddress }), ALPNProtocols: ["h2"], rejectUnauthorized: false });
  const handshake = async (s: TLSSocket) => {
    s.on("error", () => {});
    await once(s, "secureConnect");
    return s;
  };
  const held = await Promise.all(Array.from({ length: 4 }, () => handshake(from("127.0.0.1"))));
  const others: TLSSocket[] = [];
  try {
    const closed = await closedAfter(from("127.0.0.1"), 3_000);
    assert.ok(closed < 3_000, "a fifth connection from 127.0.0.1 was served");
    // Another source (127.0.0.2 is loopback too) is not held back by the first one's cap: three
    // TLS connections and an HTTP/2 session that the service answers.
    others.push(...(await Promise.all(Array.from({ length: 3 }, () => handshake(from("127.0.0.2"))))));
    const session = h2connect(`https://127.0.0.1:${capped.port}`, { createConnection: () => from("127.0.0.2") });
    session.on("error", () => {});
    await once(session, "remoteSettings");
    assert.equal(session.remoteSettings.maxConcurrentStreams, 64);
    session.destroy();
  } finally {
    for (const s of [...held, ...others]) s.destroy();
  }
  // Once the first source's connections are gone, it is served again.
  const again = await (async () => {
    for (let i = 0; i < 100; i++) {
      const s = from("127.0.0.1");
      const ok = await Promise.race([once(s, "secureConnect").then(() => true), once(s, "close").then(() => false)]).catch(() => false);
      s.destroy();
      if (ok) return true;
      await new Promise((r) => setTimeout(r, 100)); // the service has not seen the four go yet
    }
    return false;
  })();
  assert.ok(again, "127.0.0.1 was still refused after its connections closed");
});

test("connections kept open by many sources without a certificate cannot keep a renewal, an admin call or a join out", async () => {
  // The service is full of sources that answer its idle timeout with a cheap request (a GET that
  // gets a 404) every 2 s and reconnect when closed; each source fills its --max-connections-per-source.
  const diagPort = await freePort();
  const capped = await startAuth({ extraArgs: ["--max-connections=21", "--max-connections-per-source=3", `--diag-addr=127.0.0.1:${diagPort}`] });
  after(() => capped.stop());
  await createRole(capped, SEED_ROLE);
  const held = await join(capped.addr, await addIdentity(capped, "renewer", ["ci-deployer"]));
  const connections = () => openConnections(diagPort);
  // client.ts's sessions of the calls above go after 5 s idle: until then they hold slots.
  for (let i = 0; i < 100 && Object.values(await connections()).some((n) => n !== 0); i++) await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await connections(), { verified: 0, unverified: 0 }, "the setup's connections closed");
  let stopping = false;
  const answered = new Set<ReturnType<typeof h2connect>>(); // holders open and answered
  const sessions = new Set<ReturnType<typeof h2connect>>();
  const hold = (localAddress: string): void => {
    if (stopping) return;
    const session = h2connect(`https://127.0.0.1:${capped.port}`, {
      createConnection: () => tlsConnect({ socket: netConnect({ host: "127.0.0.1", port: capped.port, localAddress }), ALPNProtocols: ["h2"], rejectUnauthorized: false }),
    });
    sessions.add(session);
    session.on("error", () => {});
    const ask = () => {
      if (session.closed || session.destroyed) return;
      const req = session.request({ ":method": "GET", ":path": "/" });
      req.on("error", () => {});
      req.on("response", (h) => h[":status"] === 404 && answered.add(session));
      req.resume();
    };
    ask();
    const timer = setInterval(ask, 2_000);
    session.once("close", () => {
      clearInterval(timer);
      sessions.delete(session);
      answered.delete(session);
      setTimeout(() => hold(localAddress), 100);
    });
  };
  for (let host = 2; host <= 8; host++) for (let i = 0; i < 3; i++) hold(`127.0.0.${host}`);
  try {
    for (let i = 0; i < 100 && answered.size < 21; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(answered.size, 21, "every holder is served: the service is full");
    assert.deepEqual(await connections(), { verified: 0, unverified: 21 });
    const [renewed, admin, named] = await Promise.all([
      outcome(renew(capped.addr, held)),
      outcome(adminApi(capped).getCaStatus({})),
      outcome(connect(JoinService, capped.addr, {}).getClusterName({})),
    ]);
    assert.deepEqual({ renewed, admin, named }, { renewed: "ok", admin: "ok", named: "ok" });
  } finally {
    stopping = true;
    for (const s of sessions) s.destroy();
  }
});

test("a flood of joins with unknown token ids is one audit event, not one write each", async () => {
  const results: Awaited<ReturnType<typeof outcome>>[] = [];
  for (let round = 0; round < 20; round++) {
    results.push(
      ...(await Promise.all(
        Array.from({ length: 5 }, () => {
          const { request } = buildJoinRequest(randomBytes(32), generateIssueKeys(), HOUR_MS);
          return outcome(connect(JoinService, auth.addr, {}).join(request));
        }),
      )),
    );
  }
  assert.deepEqual(tally(results), { ERR_TOKEN_UNKNOWN: 100 });
  await auth.stop(); // a stop writes the pending summary
  await auth.restart();
  const events = await auditEvents(auth);
  const joins = events.filter((e) => e.type === "agent_identity.join" && !e.success);
  assert.deepEqual(joins, [], "no event per refused join");
  const summary = events.filter((e) => e.type === "join.refused_unknown_tokens");
  assert.equal(summary.length, 1);
  assert.match(summary[0]!.detail, /^100 joins with unknown token ids from 127\.0\.0\.1 \(100\)$/);
});

test("audit ls --limit gives the newest events; too large a limit is refused", async () => {
  const listed = await mezctl(auth, "audit", "ls", "--since=1h", "--limit=0", "--format=json");
  assert.equal(listed.code, 0, listed.stderr);
  const all = JSON.parse(listed.stdout) as { time: string; type: string }[];
  assert.ok(all.length >= 4, `${all.length} events`);
  const three = JSON.parse((await mezctl(auth, "audit", "ls", "--since=1h", "--limit=3", "--format=json")).stdout);
  assert.deepEqual(three, all.slice(-3));
  const tooMany = await mezctl(auth, "audit", "ls", "--limit=100001");
  assert.equal(tooMany.code, 2, tooMany.stderr);
  assert.match(tooMany.stderr, /at most 100000/);
});
