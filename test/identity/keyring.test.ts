/**
 * The agent's keyring: a renewal swaps key and certificate together; the replaced pair may still
 * sign (a client listed it a moment before the swap) until its certificate expires, and is never
 * listed again. Without that grace, test/identity/race.test.ts saw 8 of 126 agent logins fail
 * ("agent refused operation") with a renewal every 2 s.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { test } from "node:test";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { AgentKeyring } from "../../src/identity/agent.js";

const ca = generateKeyPairSync("ed25519").privateKey;

function pair(validBeforeSec: number) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const blob = signSshCertificate({ type: "user", publicKey, serial: 1n, keyId: "agent-identity/k", principals: ["deploy"], validAfter: 0, validBefore: validBeforeSec }, ca);
  return { key: privateKey, keyBlob: sshPublicKeyBlob(publicKey), certBlob: blob, certLine: formatSshCertificate(blob) };
}

test("keyring: lists the current pair only; the previous one signs until its certificate expires", () => {
  let now = 1_000_000_000_000;
  const ring = new AgentKeyring(() => now);
  assert.ok(ring.empty);
  assert.deepEqual(ring.identities(), []);

  const a = pair(now / 1000 + 60);
  ring.set(a.key, a.certLine, "k");
  assert.deepEqual(ring.identities().map((i) => i.blob), [a.certBlob, a.keyBlob]);
  assert.equal(ring.keyFor(a.certBlob), a.key);
  assert.equal(ring.keyFor(a.keyBlob), a.key);

  const b = pair(now / 1000 + 120);
  ring.set(b.key, b.certLine, "k");
  assert.deepEqual(ring.identities().map((i) => i.blob), [b.certBlob, b.keyBlob], "only the new pair is listed");
  assert.equal(ring.keyFor(b.certBlob), b.key);
  assert.equal(ring.keyFor(a.certBlob), a.key, "the replaced pair still signs while its certificate is valid");

  now += 61_000;
  assert.equal(ring.keyFor(a.certBlob), undefined, "not after its certificate expired");
  assert.equal(ring.keyFor(a.keyBlob), undefined);
  assert.equal(ring.keyFor(b.keyBlob), b.key);

  const c = pair(now / 1000 + 120);
  ring.set(c.key, c.certLine, "k");
  now -= 61_000; // even were a's certificate valid again, two renewals back is gone
  assert.equal(ring.keyFor(a.certBlob), undefined, "only one pair back is kept");
  assert.equal(ring.keyFor(b.certBlob), b.key);
  assert.equal(ring.keyFor(generateKeyPairSync("ed25519").publicKey.export({ format: "der", type: "spki" })), undefined);
});
