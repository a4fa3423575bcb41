import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes, verify } from "node:crypto";
import { test } from "node:test";
import {
  AGENT, AgentFrameReader, FAILURE_REPLY, MAX_AGENT_MESSAGE, ed25519SignatureBlob, encodeIdentitiesAnswer, encodeRequestIdentities, encodeSignRequest,
  encodeSignResponse, frame, parseAgentRequest, parseIdentitiesAnswer, parseSignResponse,
} from "../../src/ca/sshagent.js";
import { sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { SshReader } from "../../src/ca/sshwire.js";
import { isMeziteError } from "../../src/lib/errors.js";

test("framing: whole frames out of any chunking, pending bytes held, a length over the cap refused", () => {
  const msgs = [encodeRequestIdentities(), encodeSignRequest(randomBytes(51), randomBytes(300), 2), frame(Buffer.of(AGENT.LOCK))];
  const stream = Buffer.concat(msgs);
  for (const size of [1, 3, 7, 64, stream.length]) {
    const r = new AgentFrameReader();
    const out: Buffer[] = [];
    for (let i = 0; i < stream.length; i += size) out.push(...r.push(stream.subarray(i, i + size)));
    assert.deepEqual(out, msgs.map((m) => m.subarray(4)), `chunks of ${size}`);
    assert.equal(r.pending, 0);
  }
  const r = new AgentFrameReader();
  assert.deepEqual(r.push(Buffer.of(0, 0, 0, 5, 11)), []);
  assert.equal(r.pending, 5);
  const over = Buffer.alloc(4);
  over.writeUInt32BE(MAX_AGENT_MESSAGE + 1);
  assert.throws(() => new AgentFrameReader().push(over), (e) => isMeziteError(e, "ERR_MALFORMED_KEY") && /over the 262144-byte limit/.test(e.message));
  over.writeUInt32BE(MAX_AGENT_MESSAGE);
  assert.deepEqual(new AgentFrameReader().push(over), [], "exactly the cap is a frame to wait for");
});

test("requests: list and sign parse; anything else is unsupported; malformed ones throw", () => {
  assert.deepEqual(parseAgentRequest(encodeRequestIdentities().subarray(4)), { kind: "list" });
  const blob = randomBytes(51);
  const data = randomBytes(32);
  assert.deepEqual(parseAgentRequest(encodeSignRequest(blob, data, 4).subarray(4)), { kind: "sign", keyBlob: blob, data, flags: 4 });
  for (const t of [AGENT.ADD_IDENTITY, AGENT.REMOVE_ALL_IDENTITIES, AGENT.LOCK, AGENT.EXTENSION, 0, 255]) {
    assert.deepEqual(parseAgentRequest(Buffer.of(t, 1, 2)), { kind: "unsupported", type: t });
  }
  const bad = [Buffer.alloc(0), Buffer.of(AGENT.REQUEST_IDENTITIES, 0), Buffer.of(AGENT.SIGN_REQUEST), encodeSignRequest(blob, data).subarray(4, -1), Buffer.concat([encodeSignRequest(blob, data).subarray(4), Buffer.of(0)])];
  for (const b of bad) assert.throws(() => parseAgentRequest(b), (e) => isMeziteError(e, "ERR_MALFORMED_KEY"), b.toString("hex"));
});

test("replies: identities and signatures round-trip; an Ed25519 signature blob verifies; FAILURE is one byte", () => {
  const ids = [{ blob: randomBytes(100), comment: "mezite agent-identity/x (certificate)" }, { blob: randomBytes(51), comment: "mezite agent-identity/x" }];
  const answer = encodeIdentitiesAnswer(ids);
  assert.equal(answer.readUInt32BE(0), answer.length - 4);
  assert.deepEqual(parseIdentitiesAnswer(answer.subarray(4)), ids);
  assert.deepEqual(parseIdentitiesAnswer(encodeIdentitiesAnswer([]).subarray(4)), []);

  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const data = randomBytes(77);
  const sig = ed25519SignatureBlob(privateKey, data);
  const r = new SshReader(sig, "ERR_MALFORMED_KEY", "signature");
  assert.equal(r.text(), "ssh-ed25519");
  const raw = r.string();
  assert.equal(raw.length, 64);
  r.end();
  assert.ok(verify(null, data, publicKey, raw));
  assert.deepEqual(parseSignResponse(encodeSignResponse(sig).subarray(4)), sig);
  assert.deepEqual(FAILURE_REPLY, Buffer.of(0, 0, 0, 1, AGENT.FAILURE));
  assert.throws(() => parseSignResponse(FAILURE_REPLY.subarray(4)), /expected SIGN_RESPONSE/);
  assert.ok(sshPublicKeyBlob(publicKey).length === 51);
});

test("framing: a frame at the cap sent a byte at a time is one frame, joined once", () => {
  const body = Buffer.concat([Buffer.of(AGENT.EXTENSION), randomBytes(MAX_AGENT_MESSAGE - 1)]);
  const bytes = frame(body);
  const r = new AgentFrameReader();
  const t0 = performance.now();
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i++) out.push(...r.push(bytes.subarray(i, i + 1)));
  const ms = performance.now() - t0;
  assert.equal(out.length, 1);
  assert.ok(out[0]!.equals(body));
  // Joining per byte would copy 256 KiB x 256 Ki times (~34 GB): minutes, not milliseconds.
  assert.ok(ms < 5_000, `${Math.round(ms)} ms for one dribbled frame`);
});

test("framing: next cuts one frame at a time; bytes waiting past a whole frame and one read are refused", () => {
  const r = new AgentFrameReader();
  r.append(Buffer.concat([encodeRequestIdentities(), frame(Buffer.of(AGENT.LOCK)), Buffer.of(0, 0)]));
  assert.deepEqual(r.next(), Buffer.of(AGENT.REQUEST_IDENTITIES));
  assert.equal(r.pending, 7, "the rest waits uncut");
  assert.deepEqual(r.next(), Buffer.of(AGENT.LOCK));
  assert.equal(r.next(), undefined);
  assert.equal(r.pending, 2);

  // A throttled connection stops taking frames: what it may hold is bounded, not what it is sent.
  const held = new AgentFrameReader();
  const list = encodeRequestIdentities();
  const limit = 4 + MAX_AGENT_MESSAGE + 64 * 1024;
  const many = Buffer.concat(Array.from({ length: Math.floor(limit / list.length) }, () => list));
  held.append(many);
  held.append(Buffer.alloc(limit - many.length));
  assert.equal(held.pending, limit);
  assert.throws(() => held.append(Buffer.of(0)), (e) => isMeziteError(e, "ERR_MALFORMED_KEY") && /bytes of requests waiting, over the 327684-byte limit/.test(e.message));
  assert.deepEqual(held.next(), list.subarray(4), "what it holds is still there to answer");
});
