/**
 * A real man in the middle on an unpinned first join (SPEC §4): a TLS server with its own key
 * stands between `mezd identity start` / `mezd node join` and the auth service, forwards each
 * Join and JoinNode, and alters one field of the reply. Every alteration of every field the
 * reply carries (taken from the message schema, so a field added later is covered too) must be
 * refused by the join MAC, with nothing written. The untouched relay joins, so the proxy works.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createSecureServer, type Http2SecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { clone, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ConnectRouter } from "@connectrpc/connect";
import { connect } from "../../src/api/client.js";
import { IssuedCertificatesSchema } from "../../src/api/gen/mezite/v1/common_pb.js";
import { JoinService, NodeCredentialsSchema, type JoinNodeResponse, type JoinResponse } from "../../src/api/gen/mezite/v1/join_pb.js";
import { createCaCertificate, generateP256, privateKeyToPem } from "../../src/ca/x509.js";
import { formatAuthorizedKey } from "../../src/ca/sshkey.js";
import { generateKeyPairSync } from "node:crypto";
import { MEZD, mezctlOk, principalsMezd, run, tokenFrom, type AuthProcess } from "../harness/auth.js";
import { addIdentity, oneShot, startAuthWithRole } from "./fixture.js";

type Alter<T> = { name: string; alter: (m: T) => void };

const ATTACKER_KEY = formatAuthorizedKey(generateKeyPairSync("ed25519").publicKey);

/** One alteration per field of the schema: a changed scalar, an extra list item, an extra map entry. */
function everyField<D extends DescMessage>(schema: D): Alter<MessageShape<D>>[] {
  return schema.fields.map((f) => ({
    name: f.name,
    alter: (m: MessageShape<D>) => {
      const rec = m as unknown as Record<string, unknown>;
      const v = rec[f.localName];
      if (f.fieldKind === "list") rec[f.localName] = [...(v as string[]), (v as string[])[0] ?? ATTACKER_KEY];
      else if (f.fieldKind === "map") rec[f.localName] = { ...(v as Record<string, string>), extra: "1" };
      else if (typeof v === "string") rec[f.localName] = `${v}x`;
      else if (typeof v === "bigint") rec[f.localName] = v + 1n;
      else throw new Error(`no alteration for field ${f.name}`);
    },
  }));
}

/** The relay: forwards to the real service (not verifying it, as the victim does not) and alters. */
class Mitm {
  agentAlter: ((m: MessageShape<typeof IssuedCertificatesSchema>) => void) | undefined;
  nodeAlter: ((m: MessageShape<typeof NodeCredentialsSchema>) => void) | undefined;
  relayed = 0;
  private server!: Http2SecureServer;
  addr = "";

  async start(upstream: string): Promise<void> {
    const real = connect(JoinService, upstream, {});
    const keys = generateP256();
    const now = Date.now();
    const cert = await createCaCertificate({ commonName: "not the auth service", keys, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) });
    const routes = (router: ConnectRouter) =>
      router.service(JoinService, {
        join: async (req) => {
          const reply: JoinResponse = await real.join(req);
          this.relayed++;
          if (this.agentAlter && reply.certificates) {
            reply.certificates = clone(IssuedCertificatesSchema, reply.certificates);
            this.agentAlter(reply.certificates);
          }
          return reply;
        },
        joinNode: async (req) => {
          const reply: JoinNodeResponse = await real.joinNode(req);
          this.relayed++;
          if (this.nodeAlter && reply.credentials) {
            reply.credentials = clone(NodeCredentialsSchema, reply.credentials);
            this.nodeAlter(reply.credentials);
          }
          return reply;
        },
      });
    this.server = createSecureServer({ key: privateKeyToPem(keys.privateKey), cert, allowHTTP1: false }, connectNodeAdapter({ routes }));
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.addr = `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

const MAC_REFUSED = /does not prove knowledge of the token/;

describe("a man in the middle on an unpinned first join", () => {
  let tmp: string;
  let auth: AuthProcess;
  const mitm = new Mitm();
  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), "mezite-mitm-"));
    auth = await startAuthWithRole(tmp);
    await mitm.start(auth.addr);
  });
  after(async () => {
    await mitm.stop();
    await auth?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  let agentRuns = 0;
  async function agentJoin(alter: Alter<MessageShape<typeof IssuedCertificatesSchema>> | undefined) {
    const name = `mitm-${agentRuns++}`;
    const token = await addIdentity(auth, name);
    const dest = join(tmp, name);
    mitm.agentAlter = alter?.alter;
    const before = mitm.relayed;
    const r = await oneShot(mitm.addr, dest, [], { MEZITE_TOKEN: token });
    assert.equal(mitm.relayed, before + 1, `${alter?.name ?? "relay"}: the join went through the man in the middle`);
    return { r, dest };
  }

  test("the untouched relay joins (so the alterations below reach the daemon)", async () => {
    const { r, dest } = await agentJoin(undefined);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(dest, "ssh_known_hosts")));
  });

  const agentCases: Alter<MessageShape<typeof IssuedCertificatesSchema>>[] = [
    ...everyField(IssuedCertificatesSchema),
    // The review's attack: a second line in ssh_known_hosts that trusts the attacker for every host.
    { name: "revoked_host_keys carrying an @cert-authority line", alter: (c) => void c.revokedHostKeys.push(`${ATTACKER_KEY}\n@cert-authority * ${ATTACKER_KEY}`) },
    { name: "host_ca_ssh_keys replaced by the attacker's", alter: (c) => void (c.hostCaSshKeys = [ATTACKER_KEY]) },
    { name: "a login smuggled into a principal", alter: (c) => void (c.principals = [`${c.principals[0]},root`]) },
  ];
  test(`mezd identity start refuses each of ${agentCases.length} altered join replies and writes nothing`, async () => {
    for (const c of agentCases) {
      const { r, dest } = await agentJoin(c);
      assert.notEqual(r.code, 0, `${c.name}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, MAC_REFUSED, c.name);
      const written = existsSync(dest) ? readdirSync(dest).filter((f) => f !== ".mezite") : [];
      assert.deepEqual(written, [], `${c.name}: nothing is written`);
    }
  });

  let nodeRuns = 0;
  async function nodeJoin(alter: Alter<MessageShape<typeof NodeCredentialsSchema>> | undefined, labels = "env=prod,tier=db") {
    const name = `mitm-node-${nodeRuns++}`;
    const token = tokenFrom(await mezctlOk(auth, "tokens", "add", "--type=node", `--labels=${labels}`));
    const dir = join(tmp, name);
    mitm.nodeAlter = alter?.alter;
    const r = await run(MEZD, ["node", "join", `--auth-server=${mitm.addr}`, `--hostname=${name}`, `--ssh-dir=${dir}`, `--mezd-path=${principalsMezd()}`], { env: { MEZITE_TOKEN: token } });
    return { r, dir };
  }

  test("the untouched relay joins a node", async () => {
    const { r, dir } = await nodeJoin(undefined);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(dir, "user_ca.pub")));
  });

  const nodeCases: Alter<MessageShape<typeof NodeCredentialsSchema>>[] = [
    ...everyField(NodeCredentialsSchema),
    // The review's attack: {env: prod, tier: db} MAC'd like {env: "prod,tier=db"} under v1.
    { name: "labels joined into one value", alter: (c) => void (c.labels = { env: "prod,tier=db" }) },
    { name: "a label dropped", alter: (c) => void delete c.labels["tier"] },
    { name: "user_ca_ssh_keys with the attacker's added", alter: (c) => void c.userCaSshKeys.push(ATTACKER_KEY) },
  ];
  test(`mezd node join refuses each of ${nodeCases.length} altered join replies and writes no key`, async () => {
    for (const c of nodeCases) {
      const { r, dir } = await nodeJoin(c);
      assert.notEqual(r.code, 0, `${c.name}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, MAC_REFUSED, c.name);
      assert.ok(!existsSync(join(dir, "user_ca.pub")), `${c.name}: no user_ca.pub written`);
    }
  });
});
