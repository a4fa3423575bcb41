/**
 * Trust boundaries (SPEC §13) against the real auth service: node names claimed once, node
 * tokens that replace a machine, `nodes rm`, certificate kinds each from their own CA and on their
 * own calls, admin certificates that expire and can be revoked, the cluster name kept in the
 * backend, and what callers that are not admins are told when the service fails.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { Code } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { AdminService, TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import { JoinService, type NodeCredentials } from "../../src/api/gen/mezite/v1/join_pb.js";
import { NodeService } from "../../src/api/gen/mezite/v1/node_pb.js";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { connect, type ClientTls } from "../../src/api/client.js";
import { openCaStore } from "../../src/auth/cas.js";
import { openBackend } from "../../src/backend/open.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic, formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { generateP256, issueClientCertificate, parseCertificatePem, privateKeyToPem, publicKeyToDer, type CertKind } from "../../src/ca/x509.js";
import { buildRenewRequest, generateIssueKeys } from "../../src/identity/protocol.js";
import { buildJoinNodeRequest, generateNodeKeys, verifyJoinNodeReply, type NodeKeys } from "../../src/node/protocol.js";
import { MEZD, SEED_ROLE, mezctl, mezctlOk, principalsMezd, run, startAuth, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { HOUR_MS, addIdentity, adminApi, auditEvents, createRole, join as joinAgent, pending, refused, renew, renewRaw, type Held } from "./client.js";

let auth: AuthProcess;
let agent: Held;

before(async () => {
  auth = await startAuth();
  await createRole(auth, SEED_ROLE);
  agent = await joinAgent(auth.addr, await addIdentity(auth, "trusty", ["ci-deployer"]));
});
after(async () => auth?.stop());

/** A node token as mezctl makes it; returns the token. */
async function nodeToken(labels: Record<string, string>, replaces = ""): Promise<string> {
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  const verifier = create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey, ttlMs: BigInt(HOUR_MS) });
  await adminApi(auth).addToken({ type: "node", labels, token: verifier, replaces });
  return token;
}

interface JoinedNode {
  keys: NodeKeys;
  creds: NodeCredentials;
  tls: ClientTls;
}

async function joinNode(token: string, hostname: string, principals: string[] = [], keys = generateNodeKeys()): Promise<JoinedNode> {
  const { request, macKey } = buildJoinNodeRequest(Buffer.from(token, "hex"), hostname, principals, keys);
  const reply = await connect(JoinService, auth.addr, {}).joinNode(request);
  const creds = verifyJoinNodeReply(request, reply, macKey, keys, Date.now());
  return { keys, creds, tls: { certPem: creds.tlsCertificatePem, keyPem: privateKeyToPem(keys.tls), caPem: creds.tlsCaPem } };
}

const nodeApi = (n: JoinedNode) => connect(NodeService, auth.addr, n.tls);
const heartbeat = (n: JoinedNode) => nodeApi(n).heartbeat({ address: "10.0.0.9:22" });
const renewHost = (n: JoinedNode) => nodeApi(n).renewHostCertificate({ hostPublicKey: formatAuthorizedKey(n.keys.host), tlsPublicKey: publicKeyToDer(n.keys.tls) });

async function listed(name: string) {
  return (await adminApi(auth).listNodes({})).nodes.find((n) => n.name === name);
}

describe("node names", () => {
  test("a staging token cannot take a production node's name or principal, by CLI or API", async () => {
    await joinNode(await nodeToken({ env: "production" }), "prod-db", ["db.internal.example"]);
    const staging = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=staging"));
    // What a new user tried: a second machine joining under the production node's name.
    const cli = await run(MEZD, ["node", "join", `--auth-server=${auth.addr}`, `--token=${staging}`, "--hostname=prod-db", `--ssh-dir=${join(auth.dataDir, "stolen")}`, `--mezd-path=${principalsMezd()}`]);
    assert.equal(cli.code, 1, cli.stderr);
    assert.match(cli.stderr, /"prod-db" already belongs to node "prod-db".*--replace=prod-db/);
    assert.equal(cli.stderr.trim().split("\n").length, 1, "one line");
    // Its extra principal, in another case, is taken too; and the refused token stays unused.
    await refused(joinNode(staging, "staging-01", ["DB.internal.example"]), "ERR_ALREADY_EXISTS");
    await joinNode(staging, "staging-01");
    const prod = await listed("prod-db");
    assert.deepEqual(prod?.labels, { env: "production" }, "the production node keeps its labels");
    const refusals = (await auditEvents(auth, { type: "node.join" })).filter((e) => !e.success);
    assert.ok(refusals.some((e) => e.identity === "prod-db" && e.error === "ERR_ALREADY_EXISTS" && e.detail.includes("env=staging")), "the refusal is audited with the labels it tried");
  });

  test("host principals are DNS names or IP addresses, nothing else", async () => {
    const token = await nodeToken({ env: "dev" });
    for (const [host, principals] of [["*", []], ["web..01", []], ["-web", []], ["web-02", ["*"]], ["web-02", ["*.example.com"]], ["web-02", ["a b"]], ["web-02", [`${"a".repeat(64)}.com`]]] as const) {
      const r = await refused(joinNode(token, host, [...principals]), "ERR_USAGE");
      assert.match(r.message, /is not a DNS name or an IP address/);
    }
    await joinNode(token, "web-02", ["10.1.2.3", "fe80::1", "web-02.example.com"]);
  });

  test("renewals and heartbeats change no name, labels, principals or host key", async () => {
    const n = await joinNode(await nodeToken({ env: "qa" }), "qa-01");
    await heartbeat(n);
    await renewHost(n);
    const other = generateNodeKeys();
    await refused(nodeApi(n).renewHostCertificate({ hostPublicKey: formatAuthorizedKey(other.host), tlsPublicKey: publicKeyToDer(n.keys.tls) }), "ERR_NOT_AUTHORIZED");
    const ls = await listed("qa-01");
    assert.deepEqual([ls?.labels, ls?.principals, ls?.address], [{ env: "qa" }, [], "10.0.0.9:22"]);
  });

  test("--replace=NAME: the new machine takes the name over and the old one is dead", async () => {
    const old = await joinNode(await nodeToken({ env: "prod" }), "web-old", ["web.example.com"]);
    const out = await mezctlOk(auth, "tokens", "add", "--type=node", "--labels=env=prod", "--replace=web-old");
    assert.match(out, /--hostname=web-old/);
    await refused(joinNode(tokenFrom(out), "web-other"), "ERR_USAGE");
    const fresh = await joinNode(tokenFrom(out), "web-old", ["web.example.com"]);
    assert.notEqual(fresh.creds.hostCertificate, old.creds.hostCertificate);
    await refused(heartbeat(old), "ERR_NOT_AUTHORIZED");
    await refused(renewHost(old), "ERR_NOT_AUTHORIZED");
    await heartbeat(fresh);
    agent = await renew(auth.addr, agent);
    assert.ok(agent.certs.revokedHostKeys.includes(formatAuthorizedKey(old.keys.host)), "agents learn the old host key is revoked");
    const missing = await mezctl(auth, "tokens", "add", "--type=node", "--replace=no-such-node");
    assert.match(missing.stderr, /node "no-such-node" not found/);
  });

  test("nodes rm: no more renewals or heartbeats, gone from ls, its host key revoked for agents", async () => {
    const n = await joinNode(await nodeToken({ env: "staging" }), "gone-01", ["gone.example.com"]);
    assert.equal((await mezctlOk(auth, "nodes", "rm", "gone-01")).trim(), `Node "gone-01" removed; agents list its host key as @revoked from their next renewal.`);
    assert.equal(await listed("gone-01"), undefined);
    await refused(heartbeat(n), "ERR_NOT_AUTHORIZED");
    await refused(renewHost(n), "ERR_NOT_AUTHORIZED");
    await refused(nodeApi(n).getRevocations({}), "ERR_NOT_AUTHORIZED");
    agent = await renew(auth.addr, agent);
    assert.ok(agent.certs.revokedHostKeys.includes(formatAuthorizedKey(n.keys.host)));
    // Its names are free again for a new node.
    await joinNode(await nodeToken({ env: "staging" }), "gone-01", ["gone.example.com"]);
    const rm = (await auditEvents(auth, { type: "node.delete" })).find((e) => e.identity === "gone-01");
    assert.match(rm?.actor ?? "", /^admin \(serial [0-9a-f]+\)$/);
    assert.equal(rm?.remoteAddr, "127.0.0.1");
  });
});

describe("host-key revocation", () => {
  test("a removed or replaced node cannot cut its own @revoked record short with a heartbeat", async () => {
    const agentKnows = async (n: JoinedNode) => {
      agent = await renew(auth.addr, agent);
      return agent.certs.revokedHostKeys.includes(formatAuthorizedKey(n.keys.host));
    };
    // What a compromised node would say: its host certificate expired a minute ago.
    const pastExpiry = BigInt(Date.now() - 60_000);
    const removed = await joinNode(await nodeToken({ env: "lab" }), "lab-rm");
    await renewHost(removed);
    await nodeApi(removed).heartbeat({ address: "10.0.0.9:22", hostCertExpires: pastExpiry });
    await adminApi(auth).deleteNode({ name: "lab-rm" });
    assert.ok(await agentKnows(removed), "nodes rm: the host key stays revoked until the service's own certificates expire");

    const old = await joinNode(await nodeToken({ env: "lab" }), "lab-old");
    await nodeApi(old).heartbeat({ address: "10.0.0.9:22", hostCertExpires: pastExpiry });
    await joinNode(await nodeToken({ env: "lab" }, "lab-old"), "lab-old");
    assert.ok(await agentKnows(old), "--replace: the same");
  });
});

describe("what nodes send is shown, never obeyed", () => {
  test("a heartbeat address is host:port or refused (INVALID_ARGUMENT, nothing stored)", async () => {
    const n = await joinNode(await nodeToken({ env: "lab" }), "lab-addr");
    for (const ok of ["10.0.0.9:22", "web-01.example.com:2222", "[fe80::1]:22", "localhost:65535"]) {
      await nodeApi(n).heartbeat({ address: ok });
      assert.equal((await listed("lab-addr"))?.address, ok);
    }
    const forged = "10.0.0.9:22\x1b[2J\x1b[H\nprod-db  env=production  10.6.6.6:22";
    for (const bad of [forged, "10.0.0.9:22\x1b[31m", "10.0.0.9", "10.0.0.9:0", "10.0.0.9:65536", "10.0.0.9:+22", "fe80::1:22", "[10.0.0.9]:22", "a b:22", "*.example.com:22", "1.2.3:22", `${"a".repeat(300)}:22`]) {
      const r = await refused(nodeApi(n).heartbeat({ address: bad }), "ERR_USAGE", Code.InvalidArgument);
      assert.match(r.message, /^invalid request: address must be host:port/);
      assert.doesNotMatch(r.message, /[\x00-\x1f]|6\.6\.6/, "the refusal does not echo what was sent");
    }
    assert.equal((await listed("lab-addr"))?.address, "localhost:65535", "a refused heartbeat changes nothing");
  });

  test("labels, addresses and claims stored with control characters are shown escaped in text", async () => {
    const n = await joinNode(await nodeToken({ env: "lab" }), "lab-esc");
    await heartbeat(n);
    const victim = await joinAgent(auth.addr, await addIdentity(auth, "escaped", ["ci-deployer"]));
    // What a compromised node, a bad backup or a past bug could have left in the store.
    const db = new Database(join(auth.dataDir, "mezite.db"));
    const edit = (key: string, change: (v: Record<string, unknown>) => void) => {
      const row = db.prepare("SELECT value FROM items WHERE key = ?").get(key) as { value: string };
      const v = JSON.parse(row.value) as Record<string, unknown>;
      change(v);
      assert.equal(db.prepare("UPDATE items SET value = ? WHERE key = ?").run(JSON.stringify(v), key).changes, 1);
    };
    edit("/nodes/lab-esc", (v) => {
      v["labels"] = { env: "lab\x1b[2J\nfake-node  env=prod" };
      v["address"] = "10.0.0.9:22\x1b]0;owned\x07\u202e";
    });
    edit(`/instances/${victim.certs.identityId}/${victim.certs.instanceId}`, (v) => {
      v["joinMethod"] = "github";
      v["claims"] = { repository: "acme/app\x1b[1A\r" };
    });
    db.close();

    const ls = await mezctlOk(auth, "nodes", "ls");
    assert.doesNotMatch(ls, /[\x00-\x09\x0b-\x1f\x7f\u202e]/, "no raw control character reaches the terminal");
    const row = ls.split("\n").find((l) => l.startsWith("lab-esc"));
    assert.ok(row, ls);
    assert.ok(row.includes("env=lab\\x1b[2J\\x0afake-node  env=prod"), row);
    assert.ok(row.includes("10.0.0.9:22\\x1b]0;owned\\x07\\u{202e}"), row);
    assert.ok(!ls.split("\n").some((l) => l.startsWith("fake-node")), "no forged row");
    const json = JSON.parse(await mezctlOk(auth, "--format=json", "nodes", "ls")) as { name: string; labels: Record<string, string> }[];
    assert.equal(json.find((x) => x.name === "lab-esc")?.labels["env"], "lab\x1b[2J\nfake-node  env=prod", "JSON keeps the value (escaped by JSON itself)");

    const status = await mezctlOk(auth, "agent-identities", "status", "escaped");
    assert.doesNotMatch(status, /[\x00-\x09\x0b-\x1f\x7f]/);
    assert.match(status, /joined by github: repository=acme\/app\\x1b\[1A\\x0d\n/);
  });
});

describe("certificate kinds", () => {
  /** A certificate of `kind` that this cluster's `ca` really signed: the test unseals the CAs from the data dir. */
  async function forged(kind: CertKind, ca: "user" | "host", ttlMs = HOUR_MS): Promise<ClientTls> {
    const backend = await openBackend("sqlite", auth.dataDir);
    try {
      const { cas } = await openCaStore(backend, auth.dataDir, "test.mezite", Date.now());
      const keys = generateP256();
      const certPem = await issueClientCertificate({
        caCertPem: cas[ca].x509CertPem,
        caKey: cas[ca].x509Key,
        publicKey: keys.publicKey,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + ttlMs),
        commonName: "admin",
        kind,
        identityId: agent.certs.identityId,
        instanceId: agent.certs.instanceId,
        generation: agent.certs.generation,
      });
      return { certPem, keyPem: privateKeyToPem(keys.privateKey), caPem: cas.host.x509CertPem };
    } finally {
      await backend.close();
    }
  }

  test("each kind works only on its own calls", async () => {
    const output: ClientTls = { certPem: agent.certs.x509CertificatePem, keyPem: privateKeyToPem(agent.keys.x509), caPem: agent.certs.tlsCaPem };
    const renewal: ClientTls = { certPem: agent.certs.renewalCertificatePem, keyPem: privateKeyToPem(agent.keys.renewal), caPem: agent.certs.tlsCaPem };
    const id = readAdminIdentity(auth.identityPath);
    const adminTls: ClientTls = { certPem: id.cert_pem, keyPem: id.key_pem, caPem: id.ca_pem };
    const node = await joinNode(await nodeToken({ env: "kinds" }), "kinds-01");
    const request = buildRenewRequest(pending().requestId, generateIssueKeys(), HOUR_MS);
    for (const [what, tls] of [["output", output], ["renewal", renewal], ["node", node.tls]] as const) {
      await refused(connect(AdminService, auth.addr, tls).listRoles({}), "ERR_NOT_AUTHORIZED", Code.Unauthenticated).catch((e: Error) => assert.fail(`${what}: ${e.message}`));
    }
    for (const tls of [output, node.tls, adminTls]) await refused(renewRaw(auth.addr, tls, request), "ERR_NOT_AUTHORIZED");
    for (const tls of [output, renewal, adminTls]) {
      await refused(connect(NodeService, auth.addr, tls).heartbeat({}), "ERR_NOT_AUTHORIZED");
      await refused(connect(NodeService, auth.addr, tls).renewHostCertificate({ hostPublicKey: formatAuthorizedKey(node.keys.host), tlsPublicKey: publicKeyToDer(node.keys.tls) }), "ERR_NOT_AUTHORIZED");
    }
  });

  test("a kind signed by the other CA is refused", async () => {
    await refused(connect(AdminService, auth.addr, await forged("admin", "host")).listRoles({}), "ERR_NOT_AUTHORIZED");
    await refused(renewRaw(auth.addr, await forged("renewal", "host"), buildRenewRequest(pending().requestId, generateIssueKeys(), HOUR_MS)), "ERR_NOT_AUTHORIZED");
    await refused(connect(NodeService, auth.addr, await forged("node", "user")).getRevocations({}), "ERR_NOT_AUTHORIZED");
    // The control: the same certificate from the right CA is taken.
    await connect(AdminService, auth.addr, await forged("admin", "user")).listRoles({});
  });

  test("a certificate that expires while its HTTP/2 connection stays open is refused on that connection", async () => {
    const tls = await forged("admin", "user", 4_000);
    const validTo = Date.parse(new X509Certificate(tls.certPem!).validTo);
    const session = http2.connect(`https://${auth.addr}`, { cert: tls.certPem, key: tls.keyPem, ca: tls.caPem, minVersion: "TLSv1.3" });
    session.on("error", () => {});
    try {
      /** ListRoles over this one session, as a gRPC client sends it: the grpc-status and Mezite's error code. */
      const listRoles = () =>
        new Promise<{ status: string; code: string }>((resolve, reject) => {
          const req = session.request({ ":method": "POST", ":path": "/mezite.v1.AdminService/ListRoles", "content-type": "application/grpc", te: "trailers" });
          const seen: Record<string, string> = {};
          const note = (h: http2.IncomingHttpHeaders) => {
            for (const k of ["grpc-status", "mezite-error-code"]) if (typeof h[k] === "string") seen[k] = h[k] as string;
          };
          req.on("response", note);
          req.on("trailers", note);
          req.on("data", () => {});
          req.on("error", reject);
          req.on("close", () => resolve({ status: seen["grpc-status"] ?? "none", code: seen["mezite-error-code"] ?? "" }));
          req.end(Buffer.alloc(5)); // one uncompressed, empty message
        });
      assert.deepEqual(await listRoles(), { status: "0", code: "" }, "the certificate works while it is valid");
      // Wait (on the clock, not a fixed sleep) until it has expired; the connection stays open.
      while (Date.now() <= validTo + 1_000) await new Promise((r) => setTimeout(r, 200));
      assert.ok(!session.closed && !session.destroyed, "still the same connection");
      assert.deepEqual(await listRoles(), { status: String(Code.Unauthenticated), code: "ERR_NOT_AUTHORIZED" });
      assert.ok(!session.destroyed, "refused on that same connection");
    } finally {
      session.destroy();
    }
  });

  test("admin certificates live 12 hours, admin calls are audited with who and from where, and revoke-certs ends old ones", async () => {
    const before = readAdminIdentity(auth.identityPath);
    const cert = parseCertificatePem(before.cert_pem);
    assert.ok(cert.notAfter.getTime() - Date.now() <= 12 * HOUR_MS && cert.notAfter.getTime() - Date.now() > 11 * HOUR_MS, `admin certificate valid until ${cert.notAfter.toISOString()}`);
    await mezctlOk(auth, "locks", "add", "--login=nobody-at-all", "--reason=audit test");
    const lock = (await auditEvents(auth, { type: "lock.create" })).at(-1)!;
    assert.equal(lock.actor, `admin (serial ${cert.serial})`);
    assert.equal(lock.remoteAddr, "127.0.0.1");

    const copy = join(auth.dataDir, "copied-admin.identity");
    writeFileSync(copy, readFileSync(auth.identityPath), { mode: 0o600 });
    const out = await mezctlOk(auth, "admin", "revoke-certs");
    assert.match(out, /^Admin certificates issued before \S+ are revoked\./);
    const stolen = await mezctl({ identityPath: copy }, "get", "roles");
    assert.equal(stolen.code, 3, stolen.stderr);
    assert.match(stolen.stderr, /this admin certificate was revoked/);
    assert.notEqual(readAdminIdentity(auth.identityPath).cert_pem, before.cert_pem, "the service wrote a new admin.identity");
    await mezctlOk(auth, "get", "roles");
    const revoked = (await auditEvents(auth, { type: "admin.revoke_certificates" })).at(-1)!;
    assert.equal(revoked.actor, `admin (serial ${cert.serial})`);
  });
});

describe("what callers are told", () => {
  test("a broken record: a daemon hears a generic, non-final storage error; the log has the detail", async () => {
    const victim = await joinAgent(auth.addr, await addIdentity(auth, "corrupted", ["ci-deployer"]));
    const db = new Database(join(auth.dataDir, "mezite.db"));
    const key = `/instances/${victim.certs.identityId}/${victim.certs.instanceId}`;
    assert.equal(db.prepare("UPDATE items SET value = '{not json' WHERE key = ?").run(key).changes, 1);
    db.close();
    const r = await refused(renew(auth.addr, victim), "ERR_STORAGE", Code.Unavailable);
    assert.doesNotMatch(r.message, /instances|mezite\.db|\/tmp|JSON|at /);
    const ref = /reference ([0-9a-f]{8})/.exec(r.message)?.[1];
    assert.ok(ref, r.message);
    assert.match(auth.output(), new RegExp(`"ref":"${ref}".*stored record /instances/`));
    // An admin asking about the same identity hears the detail.
    const status = await mezctl(auth, "agent-identities", "status", "corrupted");
    assert.match(status.stderr, /stored record \/instances\/.* is not valid JSON/);
  });
});

describe("the cluster name", () => {
  test("is stored by the first start; another --cluster-name refuses to start; none uses the stored one", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "mezite-cluster-"));
    try {
      const first = await startAuth({ dataDir, clusterName: "alpha.example" });
      await first.stop();
      await assert.rejects(startAuth({ dataDir, clusterName: "beta.example" }), /exited with 2:[\s\S]*--cluster-name=beta\.example does not match this backend's cluster "alpha\.example"/);
      const again = await startAuth({ dataDir, clusterName: null });
      assert.equal((await adminApi(again).getClusterInfo({})).clusterName, "alpha.example");
      const spiffe = (await joinAgent(again.addr, await addIdentity(again, "named", ["ci-deployer"]).catch(async () => {
        await createRole(again, SEED_ROLE);
        return addIdentity(again, "named", ["ci-deployer"]);
      }))).certs.x509CertificatePem;
      assert.equal(parseCertificatePem(spiffe).spiffeId, "spiffe://alpha.example/agent-identity/named");
      await again.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
    await assert.rejects(startAuth({ clusterName: "Bad Name!" }), /exited with 2:[\s\S]*is not a valid cluster name/);
  });

  test("a backend with CAs but no stored name takes the name its CAs were made with, not the host name", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "mezite-cluster-unstored-"));
    try {
      const first = await startAuth({ dataDir, clusterName: "gamma.example" });
      await first.stop();
      // A backend from before the name was stored: CAs, no /cluster/name.
      const db = new Database(join(dataDir, "mezite.db"));
      assert.equal(db.prepare("DELETE FROM items WHERE key = '/cluster/name'").run().changes, 1);
      db.close();
      const again = await startAuth({ dataDir, clusterName: null });
      try {
        assert.equal((await adminApi(again).getClusterInfo({})).clusterName, "gamma.example");
      } finally {
        await again.stop();
      }
      await assert.rejects(startAuth({ dataDir, clusterName: "delta.example" }), /exited with 2:[\s\S]*does not match this backend's cluster "gamma\.example"/);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe("CA keys", () => {
  test("a public key swapped into the stored CA is not what nodes and agents trust; a swapped CA certificate stops the service", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "mezite-ca-swap-"));
    try {
      const first = await startAuth({ dataDir });
      await createRole(first, SEED_ROLE);
      const real = (await joinAgent(first.addr, await addIdentity(first, "before-swap", ["ci-deployer"]))).certs.userCaSshKeys;
      const token = await addIdentity(first, "after-swap", ["ci-deployer"]);
      await first.stop();
      const db = new Database(join(dataDir, "mezite.db"));
      const row = db.prepare("SELECT value FROM items WHERE key = '/cas/user'").get() as { value: string };
      const stored = JSON.parse(row.value) as { ssh_public: string; x509_cert_pem: string };
      const attacker = formatAuthorizedKey(generateNodeKeys().host, "test.mezite user CA");
      db.prepare("UPDATE items SET value = ? WHERE key = '/cas/user'").run(JSON.stringify({ ...stored, ssh_public: attacker }));
      const again = await startAuth({ dataDir });
      const told = (await joinAgent(again.addr, token)).certs.userCaSshKeys;
      assert.deepEqual(told, real, "agents and nodes are told the key the CA really signs with");
      await again.stop();
      const hostCa = (JSON.parse((db.prepare("SELECT value FROM items WHERE key = '/cas/host'").get() as { value: string }).value) as { x509_cert_pem: string }).x509_cert_pem;
      db.prepare("UPDATE items SET value = ? WHERE key = '/cas/user'").run(JSON.stringify({ ...stored, x509_cert_pem: hostCa }));
      db.close();
      await assert.rejects(startAuth({ dataDir }), /exited with 2:[\s\S]*the stored User CA certificate does not hold the CA's sealed key/);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
