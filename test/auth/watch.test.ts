/**
 * The service's change-stream hub (SPEC §20) without the RPC layer: the real WatchHub and
 * Revocations on an in-memory backend with a frozen clock, read as nodes' and daemons' streams
 * read them.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { addLock } from "../../src/auth/admin/locks.js";
import { caState } from "../../src/auth/cas.js";
import type { AdminCaller, Caller } from "../../src/auth/context.js";
import { Revocations } from "../../src/auth/revocations.js";
import { rotate } from "../../src/auth/rotation.js";
import { WatchHub, type WatchLimits } from "../../src/auth/watch.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { parseCertificatePem } from "../../src/ca/x509.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-watch-hub-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };
let clock = Date.UTC(2026, 10, 28, 12);

/** A hub, and streams of each kind opened on it the way the RPC handlers open them. */
async function hubWithStreams(limits?: WatchLimits) {
  const now = () => clock;
  const ctx = await unitAuthContext({ backend: new MemoryBackend({ now, sweepIntervalMs: 0 }), dataDir: mkdtempSync(join(dir, "data-")), clusterName: "test.mezite", now });
  const hub = new WatchHub(ctx, new Revocations(ctx, { monotonic: now }), ctx.log, limits);
  // A stream lives as long as its caller's certificate: the Host CA's own is long-lived enough.
  const caller: Caller = { remoteAddr: "127.0.0.1", cert: parseCertificatePem(ctx.cas.host.current.x509CertPem) };
  const streams = <E>(watch: (signal: AbortSignal) => AsyncGenerator<E>) => () => {
    const ac = new AbortController();
    return { close: () => ac.abort(), events: watch(ac.signal) };
  };
  return {
    ctx,
    hub,
    node: streams((signal) => hub.watchNode(caller, undefined, "", signal)),
    /** A node stream from another address, with the same certificate. */
    nodeFrom: (remoteAddr: string) => streams((signal) => hub.watchNode({ ...caller, remoteAddr }, undefined, "", signal))(),
    daemon: streams((signal) => hub.watchDaemon(caller, undefined, signal)),
  };
}

/**
 * Opens a stream after the last one before it closed and the state changed meanwhile (`change`):
 * it starts with the new state, and the next check pushes it nothing more.
 */
async function firstStateOnce<E>(hub: WatchHub, open: () => { close: () => void; events: AsyncGenerator<E> }, change: () => Promise<void>): Promise<E | undefined> {
  const a = open();
  assert.ok((await a.events.next()).value, "a stream starts with the state now");
  await hub.check();
  a.close();
  assert.equal((await a.events.next()).done, true);
  assert.deepEqual(hub.size, { nodes: 0, daemons: 0 });

  await change();
  clock += 1_000; // past the revocation state's cache
  const b = open();
  const { value: first } = await b.events.next();
  const second = b.events.next();
  await hub.check();
  await new Promise<void>((resolve) => setImmediate(resolve));
  b.close();
  assert.equal((await second).done, true, "the next check pushes nothing: the stream holds this state already");
  return first;
}

test("a node stream opened after every other one closed gets its first state once, not again at the next check", async () => {
  const { ctx, hub, node } = await hubWithStreams();
  const first = await firstStateOnce(hub, node, async () => void (await addLock(ctx, BY, "login", "deploy", "", 0)));
  assert.deepEqual(first?.revocations?.lockedLogins, ["deploy"]);
});

test("a daemon stream opened after every other one closed gets its first CA state once, not again at the next check", async () => {
  const { ctx, hub, daemon } = await hubWithStreams();
  const before = ctx.cas.user.phase;
  const first = await firstStateOnce(hub, daemon, async () => void (await rotate(ctx, { kinds: ["user"], phase: "init", graceMs: 0, actor: "test", remoteAddr: "" })));
  assert.deepEqual([before, ctx.cas.user.phase], ["standby", "init"]);
  assert.equal(first?.caState, caState(ctx.cas), "the daemon starts with the CA state after the phase change");
});

test("the per-source stream cap counts an IPv6 /64 as one source, as the connection cap does", async () => {
  const { hub, nodeFrom } = await hubWithStreams({ maxStreams: 10, maxPerSource: 2 });
  const refused = async (addr: string) => {
    const s = nodeFrom(addr);
    try {
      await s.events.next();
      return false;
    } catch (e) {
      assert.match((e as Error).message, /most change streams from one address/);
      return true;
    }
  };
  assert.equal(await refused("2001:db8::1"), false);
  assert.equal(await refused("2001:db8::2"), false);
  // Another address of the same /64 is the same host as far as the cap can tell.
  assert.equal(await refused("2001:db8::3"), true);
  assert.equal(await refused("2001:db8:0:0:ffff::9"), true);
  assert.equal(await refused("2001:db8:0:1::1"), false, "the next /64 is another source");
  assert.equal(await refused("198.51.100.7"), false);
  assert.equal(await refused("::ffff:198.51.100.7"), false, "an IPv4-mapped address is its IPv4 address: its second stream");
  assert.equal(await refused("198.51.100.7"), true);
  hub.stop();
});
