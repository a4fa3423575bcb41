/**
 * The agent's keyring: a renewal swaps key and certificate together; the replaced pair may still
 * sign (a client listed it a moment before the swap) for at most 2 minutes and never past its
 * certificate, and is never listed again. Without that grace, test/identity/race.test.ts saw 8 of
 * 126 agent logins fail ("agent refused operation") with a renewal every 2 s. No grace when the
 * principals shrank, nothing at all after a lock (SPEC §16). The clock is injected: no sleeps.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { test } from "node:test";
import { formatSshCertificate, signSshCertificate } from "../../src/ca/sshcert.js";
import { sshPublicKeyBlob } from "../../src/ca/sshkey.js";
import { AgentKeyring, REPLACED_PAIR_GRACE_MS } from "../../src/identity/agent.js";

const ca = generateKeyPairSync("ed25519").privateKey;

function pair(validBeforeSec: number, principals = ["deploy"]) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const blob = signSshCertificate({ type: "user", publicKey, serial: 1n, keyId: "agent-identity/k", principals, validAfter: 0, validBefore: validBeforeSec }, ca);
  return { key: privateKey, keyBlob: sshPublicKeyBlob(publicKey), certBlob: blob, certLine: formatSshCertificate(blob) };
}

test("keyring: lists the current pair only; the previous one signs until its certificate expires if that is sooner than 2 minutes", () => {
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

test("keyring: the replaced pair signs for 2 minutes after the swap at most, though its certificate is valid for longer", () => {
  let now = 1_000_000_000_000;
  const ring = new AgentKeyring(() => now);
  assert.equal(REPLACED_PAIR_GRACE_MS, 120_000);
  const a = pair(now / 1000 + 3600);
  ring.set(a.key, a.certLine, "k");
  now += 30 * 60_000; // the swap comes long after a was set: the 2 minutes run from the swap
  const b = pair(now / 1000 + 3600);
  ring.set(b.key, b.certLine, "k");
  now += REPLACED_PAIR_GRACE_MS - 1;
  assert.equal(ring.keyFor(a.certBlob), a.key, "within 2 minutes of the swap");
  assert.equal(ring.keyFor(a.keyBlob), a.key);
  now += 1;
  assert.equal(ring.keyFor(a.certBlob), undefined, "2 minutes after the swap, with an hour left on its certificate");
  assert.equal(ring.keyFor(a.keyBlob), undefined);
  assert.equal(ring.keyFor(b.certBlob), b.key, "the current pair is not affected");
});

test("keyring: no grace when the new certificate lost a principal; a kept or a larger set keeps it", () => {
  const now = 1_000_000_000_000;
  const ring = new AgentKeyring(() => now);
  const a = pair(now / 1000 + 3600, ["deploy", "backup"]);
  ring.set(a.key, a.certLine, "k");
  const b = pair(now / 1000 + 3600, ["backup", "deploy", "web"]);
  ring.set(b.key, b.certLine, "k");
  assert.equal(ring.keyFor(a.certBlob), a.key, "a superset, in another order: the replaced pair signs");
  const c = pair(now / 1000 + 3600, ["backup", "deploy", "web"]);
  ring.set(c.key, c.certLine, "k");
  assert.equal(ring.keyFor(b.certBlob), b.key, "the same set: the replaced pair signs");
  const d = pair(now / 1000 + 3600, ["deploy", "web"]);
  ring.set(d.key, d.certLine, "k");
  assert.equal(ring.keyFor(c.certBlob), undefined, "backup is gone: the pair that could still log in as backup does not sign");
  assert.equal(ring.keyFor(c.keyBlob), undefined);
  assert.equal(ring.keyFor(b.certBlob), undefined);
  assert.equal(ring.keyFor(d.certBlob), d.key);
  assert.deepEqual(ring.identities().map((i) => i.blob), [d.certBlob, d.keyBlob]);
});

test("keyring: after a lock (revoke) nothing signs or lists, and a later pair does not bring the old ones back", () => {
  const now = 1_000_000_000_000;
  const ring = new AgentKeyring(() => now);
  const a = pair(now / 1000 + 3600);
  const b = pair(now / 1000 + 3600);
  ring.set(a.key, a.certLine, "k");
  ring.set(b.key, b.certLine, "k");
  assert.equal(ring.keyFor(a.certBlob), a.key);
  ring.revoke();
  assert.ok(ring.empty);
  assert.deepEqual(ring.identities(), []);
  for (const blob of [a.certBlob, a.keyBlob, b.certBlob, b.keyBlob]) assert.equal(ring.keyFor(blob), undefined);
  // A join after the identity was deleted and added again: the deleted one's pairs stay gone.
  const c = pair(now / 1000 + 3600);
  ring.set(c.key, c.certLine, "k");
  assert.equal(ring.keyFor(c.certBlob), c.key);
  assert.equal(ring.keyFor(b.certBlob), undefined);
  assert.equal(ring.keyFor(a.certBlob), undefined);
});
