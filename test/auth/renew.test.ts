/**
 * Renewal (SPEC §5, §6 "Generations") through the real service over mTLS: generations count up,
 * a retried request gets its one answer, a cloned state locks only its own instance, nothing but
 * a renewal certificate from the cluster's CA renews, and `rm` of an identity ends everything of it.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { createCaCertificate, generateP256, issueClientCertificate, parseCertificatePem, privateKeyToPem } from "../../src/ca/x509.js";
import { buildRenewRequest } from "../../src/identity/protocol.js";
import { SEED_ROLE, mezctlOk, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { addIdentity, addToken, auditEvents, createRole, join, outcome, pending, refused, renew, renewRaw, statusOf, tally, type Held } from "./client.js";

let auth: AuthProcess;
let first: Held; // instance 1 of "renewer"
let second: Held; // instance 2 of "renewer", joined with add-token

async function json<T = any>(...args: string[]): Promise<T> {
  return JSON.parse(await mezctlOk(auth, ...args, "--format=json")) as T;
}

before(async () => {
  auth = await startAuth();
  await createRole(auth, SEED_ROLE);
  first = await join(auth.addr, await addIdentity(auth, "renewer", ["ci-deployer"]));
});
after(() => auth?.stop());

test("renewal with the renewal certificate increments the generation", async () => {
  assert.equal(first.certs.generation, 1n);
  const next = await renew(auth.addr, first);
  assert.equal(next.certs.generation, 2n);
  assert.equal(parseCertificatePem(next.certs.renewalCertificatePem).generation, 2n, "the new renewal certificate carries it");
  assert.equal(next.certs.instanceId, first.certs.instanceId);
  assert.notEqual(next.certs.serial, first.certs.serial);
  const s = await statusOf(auth, "renewer");
  assert.deepEqual(s.instances.map((i) => [i.id, i.generation]), [[first.certs.instanceId, 2n]]);
  first = next;
});

test("the same renewal sent 20 times at once: one answer for all, generation + 1, nothing locked", async () => {
  const p = pending();
  const replies = await Promise.all(Array.from({ length: 20 }, () => renew(auth.addr, first, p)));
  const shape = (h: Held) => [h.certs.sshCertificate, h.certs.x509CertificatePem, h.certs.renewalCertificatePem, h.certs.serial, h.certs.generation];
  for (const r of replies) assert.deepEqual(shape(r), shape(replies[0]!));
  assert.equal(replies[0]!.certs.generation, 3n);
  // A retry long after (the reply was lost on the way) still gets that same answer.
  assert.deepEqual(shape(await renew(auth.addr, first, p)), shape(replies[0]!));

  const [status, locks] = await Promise.all([json("agent-identities", "status", "renewer"), json("locks", "ls")]);
  assert.equal(status.locked, false);
  assert.deepEqual(status.instances.map((i: any) => [i.generation, i.locked]), [[3, false]]);
  assert.deepEqual(locks, []);
  first = replies[0]!;
});

test("20 different renewals presenting one generation: one wins, 19 ERR_GENERATION_MISMATCH, only that instance locked", async () => {
  second = await join(auth.addr, tokenFrom(await mezctlOk(auth, "agent-identities", "add-token", "renewer")));
  const attempts = Array.from({ length: 20 }, () => renew(auth.addr, first));
  const results = await Promise.all(attempts.map(outcome));
  assert.deepEqual(tally(results), { ok: 1, ERR_GENERATION_MISMATCH: 19 });
  const winner = await attempts[results.indexOf("ok")]!;
  assert.equal(winner.certs.generation, 4n);

  const [status, locks] = await Promise.all([json("agent-identities", "status", "renewer"), json<any[]>("locks", "ls")]);
  assert.equal(status.locked, false, "the identity itself is not locked");
  const byId = Object.fromEntries(status.instances.map((i: any) => [i.id, [i.generation, i.locked]]));
  assert.deepEqual(byId, { [first.certs.instanceId]: [4, true], [second.certs.instanceId]: [1, false] });
  assert.deepEqual(locks.map((l) => [l.target_kind, l.target]), [["instance", first.certs.instanceId]]);
  // Which of the two holders is the thief is unknown: the winner's new certificate is stopped too.
  await refused(renew(auth.addr, winner), "ERR_LOCKED", Code.PermissionDenied);

  // The other instance of the same identity keeps renewing.
  second = await renew(auth.addr, second);
  second = await renew(auth.addr, second);
  assert.equal(second.certs.generation, 3n);
  const mismatches = await auditEvents(auth, { type: "agent_identity.generation_mismatch" });
  assert.ok(mismatches.length > 0 && mismatches.every((e) => e.instance === first.certs.instanceId && !e.success));
});

test("output certificates, other CAs' certificates, the admin's and none at all cannot renew", async () => {
  const request = () => buildRenewRequest(pending().requestId, pending().keys, 3_600_000);
  const output = { certPem: second.certs.x509CertificatePem, keyPem: privateKeyToPem(second.keys.x509), caPem: second.certs.tlsCaPem };
  await refused(renewRaw(auth.addr, output, request()), "ERR_NOT_AUTHORIZED", Code.Unauthenticated);

  // A look-alike renewal certificate (same names, ids, generation) from a CA the cluster never made.
  const ca = generateP256();
  const now = Date.now();
  const caCertPem = await createCaCertificate({ commonName: "test.mezite user CA", organization: "test.mezite", keys: ca, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) });
  const mine = generateP256();
  const forged = await issueClientCertificate({
    caCertPem,
    caKey: ca.privateKey,
    publicKey: mine.publicKey,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3_600_000),
    commonName: "renewer",
    organization: "test.mezite",
    kind: "renewal",
    identityId: second.certs.identityId,
    instanceId: second.certs.instanceId,
    generation: second.certs.generation,
  });
  const foreign = { certPem: forged, keyPem: privateKeyToPem(mine.privateKey), caPem: second.certs.tlsCaPem };
  await refused(renewRaw(auth.addr, foreign, request()), "ERR_NOT_AUTHORIZED", Code.Unauthenticated);

  const admin = readAdminIdentity(auth.identityPath);
  await refused(renewRaw(auth.addr, { certPem: admin.cert_pem, keyPem: admin.key_pem, caPem: admin.ca_pem }, request()), "ERR_NOT_AUTHORIZED", Code.Unauthenticated);
  await refused(renewRaw(auth.addr, { caPem: second.certs.tlsCaPem }, request()), "ERR_NOT_AUTHORIZED", Code.Unauthenticated);

  // None of that touched the instance: it renews from where it was.
  second = await renew(auth.addr, second);
  assert.equal(second.certs.generation, 4n);
});

test("rm of an identity: unused tokens and renewals stop; the same name re-added is a new identity", async () => {
  const old = await join(auth.addr, await addIdentity(auth, "doomed", ["ci-deployer"]));
  const unused = await addToken(auth, "doomed");
  await mezctlOk(auth, "agent-identities", "rm", "doomed");

  await refused(join(auth.addr, unused), "ERR_TOKEN_UNKNOWN", Code.PermissionDenied);
  await refused(renew(auth.addr, old), "ERR_IDENTITY_DELETED", Code.PermissionDenied);

  const again = await join(auth.addr, await addIdentity(auth, "doomed", ["ci-deployer"]));
  assert.notEqual(again.certs.identityId, old.certs.identityId, "a new id");
  assert.equal((await statusOf(auth, "doomed")).id, again.certs.identityId);
  await refused(renew(auth.addr, old), "ERR_IDENTITY_DELETED", Code.PermissionDenied);
  assert.equal((await renew(auth.addr, again)).certs.generation, 2n);
});
