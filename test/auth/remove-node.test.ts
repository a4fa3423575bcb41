/**
 * `nodes rm` racing the node's own heartbeat (a compare-and-swap on its record every 30 s): the
 * removal goes through on a second try, and never ends failed with the live node's host key
 * revoked. In-process on the memory backend, the heartbeat made to land between the read and the
 * delete.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { removeNode } from "../../src/auth/admin/nodes.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { encode, keys, type NodeRecord } from "../../src/auth/records.js";
import type { Backend } from "../../src/backend/backend.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { unitAuthContext } from "../harness/auth-context.js";

const dir = mkdtempSync(join(tmpdir(), "mezite-remove-node-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };

/** A backend whose next `beats` deletes of the node's record each find a heartbeat landed first. */
function racingHeartbeats(memory: MemoryBackend, name: string, beats: number): Backend {
  return new Proxy(memory, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (prop !== "deleteIf") return typeof v === "function" ? v.bind(target) : v;
      return async (key: string, revision: string) => {
        if (key === keys.node(name) && beats-- > 0) {
          const item = (await target.get(key))!;
          const node = JSON.parse(item.value) as NodeRecord;
          await target.compareAndSwap(key, item.revision, encode({ ...node, lastHeartbeat: node.lastHeartbeat + 30_000 }));
        }
        return target.deleteIf(key, revision);
      };
    },
  }) as Backend;
}

async function setUp(beats: number) {
  const memory = new MemoryBackend();
  const ctx = await unitAuthContext({ backend: racingHeartbeats(memory, "web-1", beats), dataDir: mkdtempSync(join(dir, "data-")), clusterName: "test.mezite", now: Date.now });
  const node: NodeRecord = { id: randomUUID(), name: "web-1", labels: {}, principals: [], hostKey: "ssh-ed25519 AAAA-host-key", address: "10.0.0.1:22", lastHeartbeat: Date.now(), hostCertExpires: Date.now() + 3_600_000, joined: Date.now() };
  await memory.put(keys.node(node.name), encode(node));
  return { ctx, memory, node };
}

test("nodes rm racing a heartbeat: removed on the second try, its host key revoked", async () => {
  const { ctx, memory, node } = await setUp(1);
  await removeNode(ctx, BY, "web-1");
  assert.equal(await memory.get(keys.node("web-1")), undefined);
  assert.equal((await memory.get(keys.revokedHostKey(node.id)))?.value, node.hostKey);
  await memory.close();
});

test("nodes rm that keeps losing to heartbeats fails with a clear error", async () => {
  const { ctx, memory } = await setUp(100);
  await assert.rejects(removeNode(ctx, BY, "web-1"), /node "web-1" changed while being removed/);
  assert.ok(await memory.get(keys.node("web-1")), "the node is still there");
  await memory.close();
});
