/**
 * Listings at fleet size (SPEC §20): `agent-identities ls`, `nodes ls` and `audit ls` page and
 * filter on the server and print page by page, through the real `bin/mezctl` against the real
 * auth service; and, in-process, that the first page of identities is sent before the whole set
 * is read.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import Database from "better-sqlite3";
import { parse as parseYaml } from "yaml";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { readAdminIdentity } from "../../src/api/admin-identity.js";
import { AdminService, TokenVerifierSchema } from "../../src/api/gen/mezite/v1/admin_pb.js";
import type { AgentIdentityStatus } from "../../src/api/gen/mezite/v1/common_pb.js";
import { roleToProto } from "../../src/api/roles.js";
import type { BriefStatus } from "../../src/api/brief-page.js";
import { addAgentIdentity, getAgentIdentity, listAgentIdentities, listBriefStatuses } from "../../src/auth/admin/identities.js";
import { createRole as createRoleIn } from "../../src/auth/admin/roles.js";
import type { AdminCaller } from "../../src/auth/context.js";
import { keys, type NodeRecord } from "../../src/auth/records.js";
import type { Backend } from "../../src/backend/backend.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { deriveTokenSecrets, generateToken } from "../../src/ca/jointoken.js";
import { ed25519RawPublic } from "../../src/ca/sshkey.js";
import { parseRoleYaml } from "../../src/rbac/role.js";
import { MEZCTL, SEED_ROLE, mezctl, mezctlOk, startAuth, type AuthProcess } from "../harness/auth.js";
import { unitAuthContext } from "../harness/auth-context.js";
import { addIdentity, adminApi, createRole, join as joinWith, refused } from "../auth/client.js";

let auth: AuthProcess;
let dataDir: string;
/** More than the service's first page of 500 (read identity by identity), so listings cross to the rest. */
const FLEET = 520;
const svc = (i: number) => `svc-${String(i).padStart(4, "0")}`;
/** Every third identity also has the monitor role. */
const hasMonitor = (i: number) => i % 3 === 0;
const NODES = 1_100;
const node = (i: number) => `node-${String(i).padStart(4, "0")}`;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "mezite-listings-"));
  auth = await startAuth({ dataDir });
  await createRole(auth, SEED_ROLE);
  await createRole(auth, SEED_ROLE.replace("name: ci-deployer", "name: monitor"));
  const tokens = new Map<string, string>();
  for (let i = 0; i < FLEET; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, FLEET - i) }, async (_, k) => {
        const n = i + k;
        tokens.set(svc(n), await addIdentity(auth, svc(n), hasMonitor(n) ? ["ci-deployer", "monitor"] : ["ci-deployer"]));
      }),
    );
  }
  for (let i = 0; i < 10; i++) await addIdentity(auth, `web-${i}`, ["ci-deployer"]);
  // One active identity on the first page (read identity by identity), one far past it (read
  // from the pass over every instance), and one locked there too.
  for (const n of [svc(1), svc(507), svc(508)]) await joinWith(auth.addr, tokens.get(n)!);
  await mezctlOk(auth, "agent-identities", "lock", svc(508));

  // Nodes: records as a join writes them, put straight into the service's SQLite file while it is
  // stopped (joining 1,100 real nodes would take minutes; listing reads only these fields).
  await auth.stop();
  const db = new Database(join(auth.dataDir, "mezite.db"));
  const put = db.prepare("INSERT INTO items (key, value, revision, expires) VALUES (?, ?, ?, NULL)");
  db.transaction(() => {
    for (let i = 0; i < NODES; i++) {
      const r: NodeRecord = { id: randomUUID(), name: node(i), labels: { env: i % 2 ? "staging" : "production" }, principals: [], hostKey: "", address: `10.0.${i >> 8}.${i & 255}:22`, lastHeartbeat: 0, hostCertExpires: 0, joined: 0 } as NodeRecord;
      put.run(keys.node(r.name), JSON.stringify(r), randomUUID());
    }
  })();
  db.close();
  await auth.restart();
});

after(async () => {
  await auth?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** A text table's rows: the header and its dashes dropped, cells split on the two-space gaps. */
function rows(text: string): string[][] {
  return text.trimEnd().split("\n").slice(2).map((l) => l.split(/ {2,}/));
}

test("agent-identities ls: every identity once in name order, the table's status the same as the full document's, past the first page too", async () => {
  const [text, docs, yaml] = await Promise.all([
    mezctlOk(auth, "agent-identities", "ls"),
    mezctlOk(auth, "agent-identities", "ls", "--format=json").then((s) => JSON.parse(s) as { name: string; status: string; instances: unknown[] }[]),
    mezctlOk(auth, "agent-identities", "ls", "--format=yaml").then((s) => parseYaml(s) as { name: string }[]),
  ]);
  const expected = [...Array.from({ length: FLEET }, (_, i) => svc(i)), ...Array.from({ length: 10 }, (_, i) => `web-${i}`)];
  const table = rows(text);
  assert.deepEqual(table.map((r) => r[0]), expected);
  assert.deepEqual(docs.map((d) => d.name), expected);
  assert.deepEqual(yaml.map((d) => d.name), expected);
  // The table comes from brief statuses; the documents carry every instance.
  assert.deepEqual(table.map((r) => r[2]), docs.map((d) => d.status));
  const status = new Map(docs.map((d) => [d.name, d.status]));
  assert.deepEqual([svc(0), svc(1), svc(507), svc(508)].map((n) => status.get(n)), ["awaiting join", "active", "active", "locked"]);
  assert.equal(docs.find((d) => d.name === svc(507))!.instances.length, 1, "documents keep the instances");
});

test("brief statuses reach every protocol the admin API speaks: gRPC, Connect in binary, and Connect and gRPC-Web in JSON", async () => {
  const id = readAdminIdentity(auth.identityPath);
  const options = { baseUrl: `https://${auth.addr}`, nodeOptions: { cert: id.cert_pem, key: id.key_pem, ca: id.ca_pem } };
  const list = async (client: Client<typeof AdminService>) => {
    const all: AgentIdentityStatus[] = [];
    for await (const page of client.listAgentIdentities({ brief: true, namePrefix: "svc-05" })) all.push(...page.identities);
    return all.map(({ name, roles, locked, state, generation, lastSeen, certExpires }) => ({ name, roles, locked, state, generation, lastSeen, certExpires }));
  };
  const viaGrpc = await list(adminApi(auth));
  assert.deepEqual(viaGrpc.map((s) => s.name), Array.from({ length: 20 }, (_, i) => svc(500 + i)));
  assert.equal(viaGrpc.find((s) => s.name === svc(508))?.state, "locked");
  assert.ok(viaGrpc.find((s) => s.name === svc(507))!.generation > 0n);
  for (const transport of [
    createConnectTransport({ ...options, httpVersion: "2", useBinaryFormat: true }),
    createConnectTransport({ ...options, httpVersion: "2", useBinaryFormat: false }),
    createGrpcWebTransport({ ...options, httpVersion: "2", useBinaryFormat: false }),
  ]) {
    assert.deepEqual(await list(createClient(AdminService, transport)), viaGrpc);
  }
});

test("agent-identities ls filters on the service: --prefix, --role and --limit, alone and together", async () => {
  const names = async (...args: string[]) => rows(await mezctlOk(auth, "agent-identities", "ls", ...args)).map((r) => r[0]);
  assert.deepEqual(await names("--prefix=web-"), Array.from({ length: 10 }, (_, i) => `web-${i}`));
  const monitors = Array.from({ length: FLEET }, (_, i) => i).filter(hasMonitor).map(svc);
  assert.deepEqual(await names("--role=monitor"), monitors);
  assert.deepEqual(await names("--limit=3"), [svc(0), svc(1), svc(2)]);
  assert.deepEqual(await names("--prefix=svc-04", "--role=monitor", "--limit=4"), ["svc-0402", "svc-0405", "svc-0408", "svc-0411"]);
  assert.deepEqual(await names("--limit=501"), Array.from({ length: 501 }, (_, i) => svc(i)), "a limit past the first page");
  assert.equal(await mezctlOk(auth, "agent-identities", "ls", "--prefix=nobody-"), "NAME  ROLES  STATUS  GENERATION  LAST SEEN  CERT EXPIRES\n");
  for (const [args, message] of [
    [["--limit=ten"], /--limit must be a whole number/],
    [["--prefix=../x"], /cannot begin an agent identity name/],
  ] as const) {
    const r = await mezctl(auth, "agent-identities", "ls", ...args);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
    assert.equal(r.stdout, "");
  }
});

test("a listing into a reader that stops early (| head) ends quietly, and its first bytes are the first page", async () => {
  const p = spawn(MEZCTL, [`--identity=${auth.identityPath}`, "agent-identities", "ls", "--format=json"], { stdio: ["ignore", "pipe", "pipe"] });
  let first = "";
  let stderr = "";
  p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  p.stdout.once("data", (d: Buffer) => {
    first = d.toString();
    p.stdout.destroy(); // what head does after its lines: ~200 KB of JSON are still to come
  });
  const code = await new Promise<number | null>((res) => p.on("exit", res));
  assert.match(first, /^\[\n {2}\{\n {4}"name": "svc-0000"/);
  assert.equal(stderr, "", "no EPIPE stack");
  assert.equal(code, 0);
});

test("nodes ls: pages of the service's in name order, filtered by --labels and --prefix, cut by --limit", async () => {
  const names = async (...args: string[]) => rows(await mezctlOk(auth, "nodes", "ls", ...args)).map((r) => r[0]);
  const all = Array.from({ length: NODES }, (_, i) => node(i));
  assert.deepEqual(await names(), all);
  assert.deepEqual(await names("--labels=env=staging"), all.filter((_, i) => i % 2));
  assert.deepEqual(await names("--prefix=node-10"), all.slice(1000, 1100));
  assert.deepEqual(await names("--limit=501", "--labels=env=production"), all.filter((_, i) => i % 2 === 0).slice(0, 501));
  const docs = JSON.parse(await mezctlOk(auth, "nodes", "ls", "--format=json", "--prefix=node-000")) as { name: string; labels: Record<string, string>; address: string }[];
  assert.deepEqual(docs.map((d) => [d.name, d.labels["env"], d.address]), all.slice(0, 10).map((n, i) => [n, i % 2 ? "staging" : "production", `10.0.0.${i}:22`]));

  const api = adminApi(auth);
  const old = await api.listNodes({});
  assert.equal(old.nodes.length, NODES, "a client before paging (page_size 0) still gets every node in one reply");
  assert.equal(old.nextPageToken, "");
  const paged = await api.listNodes({ pageSize: 2, pageToken: node(1097) });
  assert.deepEqual([paged.nodes.map((n) => n.name), paged.nextPageToken], [[node(1098), node(1099)], ""], "no next page after the last");
  await refused(api.listNodes({ pageSize: 1001 }), "ERR_USAGE");
  await refused(api.listNodes({ pageSize: 10, pageToken: "a/../../identities/x" }), "ERR_USAGE");
});

test("audit ls --limit: the newest events, oldest first, the same as the tail of the whole window", async () => {
  const json = async (...args: string[]) => JSON.parse(await mezctlOk(auth, "audit", "ls", "--since=1h", "--format=json", ...args)) as { time: string; type: string; identity: string }[];
  const all = await json("--limit=0", "--type=agent_identity");
  assert.ok(all.length > FLEET, `${all.length} events`);
  assert.deepEqual(await json("--limit=7", "--type=agent_identity"), all.slice(-7));
  assert.deepEqual((await json("--limit=2", "--type=lock")).map((e) => [e.type, e.identity]), [["lock.create", svc(508)]]);
});

const BY: AdminCaller = { remoteAddr: "127.0.0.1", cert: undefined, audit: { actor: "test", remote_addr: "127.0.0.1" } };

test("the first page of identities is sent before any pass over every instance or token; the rest is the same as read one by one", async () => {
  const unitDir = mkdtempSync(join(tmpdir(), "mezite-listing-"));
  const memory = new MemoryBackend();
  const scans: string[] = [];
  // Logs reads of a whole kind (the bulk passes); an identity's own instances are under a longer prefix.
  const backend = new Proxy(memory, {
    get(target, prop) {
      const v = Reflect.get(target, prop) as unknown;
      if (prop !== "range" || typeof v !== "function") return typeof v === "function" ? v.bind(target) : v;
      return (prefix: string, opts?: unknown) => {
        if (prefix === keys.instances || prefix === keys.tokens) scans.push(prefix);
        return (v as Backend["range"]).call(target, prefix, opts as never);
      };
    },
  }) as Backend;
  try {
    const ctx = await unitAuthContext({ backend, dataDir: unitDir, clusterName: "unit.mezite", now: Date.now });
    await createRoleIn(ctx, BY, roleToProto(parseRoleYaml(SEED_ROLE)), false);
    for (let i = 0; i < 7; i++) {
      const s = deriveTokenSecrets(Buffer.from(generateToken(), "hex"));
      await addAgentIdentity(ctx, BY, `unit-${i}`, ["ci-deployer"], create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey }));
    }
    const pages = listAgentIdentities(ctx, { pageSize: 3 });
    const first = await pages.next();
    assert.deepEqual(first.value?.map((s: AgentIdentityStatus) => s.name), ["unit-0", "unit-1", "unit-2"]);
    assert.deepEqual(scans, [], "the first page waited for nothing but its own identities");
    const listed: AgentIdentityStatus[] = [...first.value!];
    for await (const page of pages) listed.push(...page);
    assert.deepEqual(new Set(scans), new Set([keys.instances, keys.tokens]), "the rest came from one pass over each");
    assert.deepEqual(listed, await Promise.all(listed.map((s) => getAgentIdentity(ctx, s.name))));
    const brief: BriefStatus[] = [];
    for await (const page of listBriefStatuses(ctx, { pageSize: 3 })) brief.push(...page);
    assert.deepEqual(
      brief,
      listed.map(({ name, roles, locked, state, generation, lastSeen, certExpires }) => ({ name, roles, locked, state, generation, lastSeen, certExpires })),
      "brief statuses are the whole ones' summaries",
    );
  } finally {
    await memory.close();
    rmSync(unitDir, { recursive: true, force: true });
  }
});
