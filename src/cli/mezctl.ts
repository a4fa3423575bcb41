/** mezctl: the admin CLI (SPEC §3). Talks to the auth service's admin API over mTLS. */
import { installLightHeaders } from "../lib/headers.js";
import { Command, Option } from "commander";
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { AdminService, TokenVerifierSchema } from "../api/gen/mezite/v1/admin_pb.js";
import { readBriefPages } from "../api/brief-page.js";
import { connectTransport } from "../api/client.js";
import { fromConnectError } from "../api/errors.js";
import { readAdminIdentity } from "../api/admin-identity.js";
import { roleFromProto, roleToProto } from "../api/roles.js";
import { deriveTokenSecrets, generateToken } from "../ca/jointoken.js";
import { ed25519RawPublic } from "../ca/sshkey.js";
import { formatDuration, parseDuration } from "../lib/duration.js";
import { MeziteError } from "../lib/errors.js";
import { newSecret, secretDigest } from "../lib/dashboard-secret.js";
import { roleFromDocument, roleToDocument } from "../rbac/role.js";
import { isKind, parseYamlText } from "../lib/yaml-text.js";
import { escapeText } from "../lib/escape.js";
import { endQuietlyOnClosedPipe, fail, routeCommanderErrors } from "./exit.js";
import { ListingWriter, parseFormat, printDocument, relTime, table, type Format } from "./output.js";
import * as view from "./views.js";
import { SAFE_PHASE_MS, STEPS } from "../auth/rotation.js";
import { versionLine } from "../lib/version.js";
import { identityStartHint } from "../lib/hints.js";

const DEFAULT_IDENTITY = "/var/lib/mezite/admin.identity";

// Before connect builds its first request: Node's own Headers would load undici (~30 ms, 7 MB).
installLightHeaders();

const program = new Command("mezctl")
  .description("Mezite admin CLI: roles, agent identities, tokens, locks, nodes, audit")
  .version(versionLine("mezctl"), "--version", "print the version and commit")
  .option("--identity <file>", `admin identity file (default: $MEZITE_IDENTITY or ${DEFAULT_IDENTITY})`)
  .option("--auth-server <host:port>", "override the auth address in the identity file")
  .addOption(new Option("--format <format>", "output format: text, json or yaml").default("text"))
  .option("--debug", "print stack traces with errors")
  .enablePositionalOptions(false)
  // Every subcommand's --help lists --format, --identity and --auth-server too.
  .configureHelp({ showGlobalOptions: true })
  .exitOverride();

/**
 * A flag the command cannot do without. Checked in the action rather than by commander's
 * requiredOption, which reports a missing flag before an unknown one: `--tpye=node` would say
 * "--type not specified" instead of "did you mean --type?".
 */
function required(value: string | undefined, flag: string, what: string): string {
  if (value === undefined || value === "") throw new MeziteError("ERR_USAGE", `${flag} is required: ${what}`);
  return value;
}

function globals() {
  const o = program.opts<{ identity?: string; authServer?: string; format: string }>();
  return { identityPath: o.identity ?? process.env["MEZITE_IDENTITY"] ?? DEFAULT_IDENTITY, authServer: o.authServer, format: parseFormat(o.format) };
}

interface Admin {
  client: Client<typeof AdminService>;
  transport: Transport;
  addr: string;
  format: Format;
}

function admin(): Admin {
  const g = globals();
  const id = readAdminIdentity(g.identityPath);
  const addr = g.authServer ?? id.auth_server;
  const transport = connectTransport(addr, { certPem: id.cert_pem, keyPem: id.key_pem, caPem: id.ca_pem });
  return { client: createClient(AdminService, transport), transport, addr, format: g.format };
}

/** Runs one admin call, turning transport and server errors into one-line MeziteErrors. */
async function call<T>(a: Admin, fn: (c: Client<typeof AdminService>) => Promise<T>): Promise<T> {
  try {
    return await fn(a.client);
  } catch (e) {
    throw fromConnectError(e, a.addr);
  }
}

function out(a: Admin, doc: unknown, text: () => string): void {
  if (a.format === "text") process.stdout.write(text());
  else printDocument(a.format, doc);
}

/** A listing's pages, printed as they arrive (SPEC §20). */
async function printListing<T>(a: Admin, headers: string[], row: (x: T) => string[], doc: (x: T) => unknown, pages: (c: Client<typeof AdminService>) => AsyncIterable<T[]>): Promise<void> {
  const w = new ListingWriter(a.format, headers, row, doc);
  await call(a, async (c) => {
    for await (const page of pages(c)) w.page(page);
  });
  w.end();
}

/** Nodes asked for per call: a page the service reads in a few milliseconds. */
const NODE_PAGE = 500;

/** A count for the service (a protobuf uint32). */
function countOption(s: string, flag: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || n > 0xffffffff) throw new MeziteError("ERR_USAGE", `${flag} must be a whole number (0 for all)`);
  return n;
}

function ttlOption(s: string | undefined, flag: string): number {
  if (s === undefined) return 0;
  try {
    return parseDuration(s);
  } catch {
    throw new MeziteError("ERR_USAGE", `${flag}: "${s}" is not a duration such as 30m or 1h`);
  }
}

function newToken(ttlMs: number) {
  const token = generateToken();
  const s = deriveTokenSecrets(Buffer.from(token, "hex"));
  const verifier = create(TokenVerifierSchema, { tokenId: s.tokenId, verifyKey: ed25519RawPublic(s.verifyKey), macKey: s.macKey, ttlMs: BigInt(ttlMs) });
  return { token, verifier };
}

async function joinAddr(a: Admin): Promise<string> {
  const info = await call(a, (c) => c.getClusterInfo({}));
  return info.publicAddrs[0] ?? a.addr;
}

function splitResource(ref: string): [string, string] {
  const i = ref.indexOf("/");
  if (i < 0) return [ref, ""];
  return [ref.slice(0, i), ref.slice(i + 1)];
}

// ---- roles: create -f, get, rm

program
  .command("create")
  .description("create a resource from a YAML file: a role, or a join_token (joins with a CI platform's ID token)")
  .option("-f, --file <file>", "resource YAML file (required)")
  .option("--force", "overwrite an existing resource of that name", false)
  .action(async (o: { file?: string; force: boolean }) => {
    const file = required(o.file, "-f FILE", "the resource's YAML file");
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      throw new MeziteError("ERR_USAGE", `cannot read ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
    const doc = parseYamlText(text, file, "ERR_USAGE");
    if (documentKind(doc, file) === "join_token") return createJoinToken(doc, o.force);
    const role = roleFromDocument(doc);
    const a = admin();
    const res = await call(a, (c) => c.createRole({ role: roleToProto(role), force: o.force }));
    out(a, { kind: "role", name: role.role, replaced: res.replaced }, () => `role "${role.role}" ${res.replaced ? "updated" : "created"}\n`);
  });

const CREATABLE = ["role", "join_token"] as const;

/** What `create -f` makes of a document: its `kind`, in any case; anything else is refused, listing the kinds. */
function documentKind(doc: unknown, file: string): (typeof CREATABLE)[number] {
  const kind = typeof doc === "object" && doc !== null && !Array.isArray(doc) ? (doc as { kind?: unknown }).kind : undefined;
  const found = CREATABLE.find((k) => isKind(kind, k));
  if (found) return found;
  const got = kind === undefined ? "has no kind" : `has kind ${escapeText(JSON.stringify(kind).slice(0, 40))}`;
  throw new MeziteError("ERR_USAGE", `${file} ${got}: create -f takes kind: role or kind: join_token`);
}

/** Every pin a pinned join must accept now (an older service names only ca_pin). */
const pinsOf = (info: { caPin: string; caPins: string[] }): string[] => (info.caPins.length > 0 ? info.caPins : [info.caPin]);

async function createJoinToken(doc: unknown, force: boolean): Promise<void> {
  const a = admin();
  const res = await call(a, (c) => c.createJoinToken({ documentJson: JSON.stringify(doc), force }));
  const jt = res.joinToken!;
  const info = await call(a, (c) => c.getClusterInfo({}));
  const addr = info.publicAddrs[0] ?? a.addr;
  const hint = `mezd identity start --auth-server=${addr} --join-method=${jt.joinMethod} --token=${jt.name} --ca-pin=${pinsOf(info).join(",")} --destination-dir=/tmp/mezite-certs --one-shot`;
  out(a, { kind: "join_token", name: jt.name, replaced: res.replaced, join_method: jt.joinMethod, agent_identity: jt.agentIdentity, audience: info.clusterName, hint }, () =>
    [
      `join_token "${jt.name}" ${res.replaced ? "updated" : "created"} (${jt.joinMethod}, for agent identity "${jt.agentIdentity}").`,
      ``,
      `Join from a ${jt.joinMethod === "github" ? "GitHub Actions job (permissions: id-token: write)" : jt.joinMethod === "gitlab" ? `GitLab job (id_tokens: MEZITE_ID_TOKEN: aud: ${info.clusterName})` : `workload whose ID token has audience ${info.clusterName}`} with:`,
      hint,
      ``,
    ].join("\n"),
  );
}

program
  .command("get")
  .description("show resources: `get roles`, `get role/NAME`, `get join_tokens`, `get join_token/NAME`")
  .argument("<resource>", "roles | role/NAME | join_tokens | join_token/NAME")
  .action(async (ref: string) => {
    const [kind, name] = splitResource(ref);
    const a = admin();
    if (kind === "join_tokens" || kind === "join_token") {
      const all = (await call(a, (c) => c.listJoinTokens({}))).joinTokens;
      if (!name) {
        out(a, all.map((t) => JSON.parse(t.documentJson) as unknown), () =>
          table(["NAME", "AGENT IDENTITY", "METHOD", "ISSUER", "CREATED"], all.map((t) => [t.name, t.agentIdentity, t.joinMethod, t.issuer, relTime(t.created)])),
        );
        return;
      }
      const one = all.find((t) => t.name === name);
      if (!one) throw new MeziteError("ERR_NOT_FOUND", `join_token "${name}" not found`);
      printDocument(a.format === "json" ? "json" : "yaml", JSON.parse(one.documentJson));
    } else if ((kind === "roles" || kind === "role") && !name) {
      const roles = (await call(a, (c) => c.listRoles({}))).roles.map(roleFromProto);
      out(a, roles.map(roleToDocument), () =>
        table(["NAME", "LOGINS", "DENY", "MAX TTL", "DESCRIPTION"], roles.map((r) => [r.role, r.allow.logins.join(","), r.deny.logins.join(","), r.maxSessionTtlMs ? formatDuration(r.maxSessionTtlMs) : "-", r.description])),
      );
    } else if (kind === "role" || kind === "roles") {
      const res = await call(a, (c) => c.getRole({ name }));
      const doc = roleToDocument(roleFromProto(res.role!));
      if (a.format === "json") printDocument("json", doc);
      else printDocument("yaml", doc);
    } else {
      throw new MeziteError("ERR_USAGE", `unknown resource "${ref}": use roles, role/NAME, join_tokens or join_token/NAME`);
    }
  });

program
  .command("rm")
  .description("remove a resource: `rm role/NAME` or `rm join_token/NAME`")
  .argument("<resource>", "role/NAME | join_token/NAME")
  .action(async (ref: string) => {
    const [kind, name] = splitResource(ref);
    if (kind === "join_token" && name) {
      const a = admin();
      await call(a, (c) => c.deleteJoinToken({ name }));
      out(a, { removed: `join_token/${name}` }, () => `join_token "${name}" removed\n`);
      return;
    }
    if (kind !== "role" || !name) throw new MeziteError("ERR_USAGE", `unknown resource "${ref}": use role/NAME or join_token/NAME`);
    const a = admin();
    await call(a, (c) => c.deleteRole({ name }));
    out(a, { removed: `role/${name}` }, () => `role "${name}" removed\n`);
  });

program
  .command("status")
  .description("the cluster: its name (the audience of ID tokens) and the CA pin daemons check")
  .action(async () => {
    const a = admin();
    const info = await call(a, (c) => c.getClusterInfo({}));
    const pins = pinsOf(info);
    out(a, { cluster_name: info.clusterName, ca_pin: info.caPin, ca_pins: pins, auth_servers: info.publicAddrs }, () =>
      [
        `Cluster:     ${info.clusterName}`,
        pins.length > 1 ? `CA pins:     ${pins.join(",")} (a Host CA rotation: pinned joins give them all until it ends)` : `CA pin:      ${info.caPin}`,
        `Auth server: ${info.publicAddrs.join(", ")}`,
        ``,
      ].join("\n"),
    );
  });

program
  .command("dashboard")
  .description("print a one-time sign-in link for the web dashboard (works once, within 5 minutes)")
  .action(async () => {
    // The secret is made here and only its hash is sent: the service never holds a usable link.
    const secret = newSecret();
    const a = admin();
    const res = await call(a, (c) => c.createDashboardSignIn({ secretHash: secretDigest(secret)! }));
    const url = `${res.webUrl}/signin/${secret}`;
    const expires = new Date(Number(res.expires)).toISOString();
    out(a, { url, expires }, () => `${url}\n\nOpen it in a browser: it signs in once, until ${expires}, for a 12-hour session.\n`);
  });

// ---- agent identities

const ai = program.command("agent-identities").alias("agent-identity").description("manage agent identities");

ai.command("add")
  .description("create an agent identity and print its one-time join token")
  .option("--name <name>", "identity name ([a-z0-9][a-z0-9._-]{0,62}) (required)")
  .option("--roles <roles>", "comma-separated role names (required)")
  .option("--token-ttl <duration>", "how long the join token stays valid", "1h")
  .action(async (opts: { name?: string; roles?: string; tokenTtl: string }) => {
    const o = { ...opts, name: required(opts.name, "--name", "the identity's name"), roles: required(opts.roles, "--roles", "its roles, comma-separated") };
    const { token, verifier } = newToken(ttlOption(o.tokenTtl, "--token-ttl"));
    const a = admin();
    const roles = [...new Set(o.roles.split(",").map((r) => r.trim()).filter(Boolean))];
    const res = await call(a, (c) => c.addAgentIdentity({ name: o.name, roles, token: verifier }));
    const addr = await joinAddr(a);
    out(
      a,
      { name: o.name, id: res.identity?.id, roles, token, token_expires: new Date(Number(res.token?.expires ?? 0n)).toISOString(), auth_server: addr },
      () =>
        [
          `Agent identity "${o.name}" created.`,
          `Roles: [${roles.join(", ")}]`,
          `Token: ${token}`,
          ``,
          `Start the agent identity daemon with:`,
          ...identityStartHint(addr, o.name),
          ``,
          `This token can only be used once.`,
          ``,
        ].join("\n"),
    );
  });

ai.command("add-token")
  .description("issue another one-time join token for an existing identity (a new instance)")
  .argument("<name>")
  .option("--token-ttl <duration>", "how long the join token stays valid", "1h")
  .action(async (name: string, o: { tokenTtl: string }) => {
    const { token, verifier } = newToken(ttlOption(o.tokenTtl, "--token-ttl"));
    const a = admin();
    const res = await call(a, (c) => c.addToken({ type: "agent_identity", agentIdentity: name, token: verifier }));
    const addr = await joinAddr(a);
    out(a, { name, token, token_expires: new Date(Number(res.token?.expires ?? 0n)).toISOString(), auth_server: addr }, () =>
      [`Token: ${token}`, ``, ...identityStartHint(addr, name), ``, `This token can only be used once.`, ``].join("\n"),
    );
  });

ai.command("ls")
  .description("list agent identities in name order, printed page by page as the service reads them")
  .option("--prefix <prefix>", "only names that start with this")
  .option("--role <role>", "only identities with this role")
  .option("--limit <n>", "at most this many (the first in name order); 0 for all", "0")
  .action(async (o: { prefix?: string; role?: string; limit: string }) => {
    const a = admin();
    const limit = countOption(o.limit, "--limit");
    const request = { namePrefix: o.prefix ?? "", role: o.role ?? "", limit };
    // The table needs only what brief statuses carry; documents carry everything.
    if (a.format === "text") await printListing(a, view.IDENTITY_HEADERS, view.identityRow, () => ({}), () => readBriefPages(a.transport, request));
    else
      await printListing(a, view.IDENTITY_HEADERS, view.identityRow, view.identityDoc, async function* (c) {
        for await (const page of c.listAgentIdentities(request)) yield page.identities;
      });
  });

ai.command("status")
  .description("show an agent identity: roles, generation, instances, locks, principals")
  .argument("<name>")
  .action(async (name: string) => {
    const a = admin();
    const s = (await call(a, (c) => c.getAgentIdentity({ name }))).identity!;
    out(a, view.identityDoc(s), () => view.identityText(s));
  });

ai.command("rm")
  .description("delete an agent identity: its tokens, instances and certificates stop working at once")
  .argument("<name>")
  .action(async (name: string) => {
    const a = admin();
    await call(a, (c) => c.deleteAgentIdentity({ name }));
    out(a, { removed: name }, () => `Agent identity "${name}" removed.\n`);
  });

ai.command("rm-instance")
  .description("end one instance of an agent identity")
  .argument("<name>")
  .argument("<instance-id>")
  .action(async (name: string, id: string) => {
    const a = admin();
    await call(a, (c) => c.removeInstance({ name, instanceId: id }));
    out(a, { removed: id }, () => `Instance ${id} of "${name}" removed.\n`);
  });

ai.command("lock")
  .description("lock an agent identity: renewals and joins stop at once, SSH logins within seconds")
  .argument("<name>")
  .option("--reason <text>", "why", "")
  .option("--ttl <duration>", "lock expires after this long (default: until unlocked)")
  .action(async (name: string, o: { reason: string; ttl?: string }) => lockCmd("agent_identity", name, o));

ai.command("unlock")
  .description("remove every lock on an agent identity")
  .argument("<name>")
  .action(async (name: string) => {
    const a = admin();
    const res = await call(a, (c) => c.deleteLock({ id: `agent_identity:${name}` }));
    out(a, { removed: res.removed }, () => `Agent identity "${name}" unlocked (${res.removed} lock${res.removed === 1 ? "" : "s"} removed).\n`);
  });

// ---- locks

async function lockCmd(kind: string, target: string, o: { reason: string; ttl?: string }) {
  const a = admin();
  const res = await call(a, (c) => c.createLock({ targetKind: kind, target, reason: o.reason, ttlMs: BigInt(ttlOption(o.ttl, "--ttl")) }));
  out(a, view.lockDoc(res.lock!), () => `Lock ${res.lock!.id} created on ${kind.replace("_", " ")} ${target}.\n`);
}

const locks = program.command("locks").description("manage locks");
locks
  .command("add")
  .description("lock an agent identity, an instance, a role or a login")
  .option("--agent-identity <name>")
  .option("--instance <id>")
  .option("--role <name>")
  .option("--login <login>")
  .option("--reason <text>", "why", "")
  .option("--ttl <duration>", "lock expires after this long (default: until removed)")
  .action(async (o: { agentIdentity?: string; instance?: string; role?: string; login?: string; reason: string; ttl?: string }) => {
    const targets = ([["agent_identity", o.agentIdentity], ["instance", o.instance], ["role", o.role], ["login", o.login]] as const).filter(([, v]) => v !== undefined);
    if (targets.length !== 1) throw new MeziteError("ERR_USAGE", "give exactly one of --agent-identity, --instance, --role, --login");
    await lockCmd(targets[0]![0], targets[0]![1]!, o);
  });
locks
  .command("ls")
  .description("list active locks")
  .action(async () => {
    const a = admin();
    const list = (await call(a, (c) => c.listLocks({}))).locks;
    out(a, list.map(view.lockDoc), () => table(["ID", "TARGET", "REASON", "EXPIRES"], list.map((l) => [l.id, `${l.targetKind}=${l.target}`, l.reason, l.expires ? relTime(l.expires) : "never"])));
  });
locks
  .command("rm")
  .description("remove a lock")
  .argument("<id>")
  .action(async (id: string) => {
    const a = admin();
    await call(a, (c) => c.deleteLock({ id }));
    out(a, { removed: id }, () => `Lock ${id} removed.\n`);
  });

// ---- tokens

function parseLabels(s: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i <= 0) throw new MeziteError("ERR_USAGE", `--labels: "${part}" is not key=value`);
    labels[part.slice(0, i)] = part.slice(i + 1);
  }
  return labels;
}

const tokens = program.command("tokens").description("manage join tokens");
tokens
  .command("add")
  .description("create a one-time node join token")
  .option("--type <type>", "node: agent identity tokens come from agent-identities add and add-token", "node")
  .option("--labels <k=v,...>", "the node's labels", "")
  .option("--replace <name>", "the token may take over this node's name and principals (a replacement machine)")
  .option("--ttl <duration>", "how long the token stays valid", "1h")
  .action(async (o: { type: string; labels: string; replace?: string; ttl: string }) => {
    if (o.type !== "node") throw new MeziteError("ERR_USAGE", `--type must be node (agent identity tokens come from agent-identities add / add-token)`);
    const { token, verifier } = newToken(ttlOption(o.ttl, "--ttl"));
    const a = admin();
    const labels = parseLabels(o.labels);
    const res = await call(a, (c) => c.addToken({ type: "node", labels, token: verifier, replaces: o.replace ?? "" }));
    const addr = await joinAddr(a);
    const doc = { token, id: res.token?.id, labels, ...(o.replace ? { replaces: o.replace } : {}), expires: new Date(Number(res.token?.expires ?? 0n)).toISOString(), auth_server: addr };
    out(a, doc, () =>
      [
        `Token: ${token}`,
        ``,
        o.replace ? `Join the machine that replaces node "${o.replace}" with:` : `Join a node with:`,
        `mezd node join --auth-server=${addr} --token-file=/etc/mezite/node.token --hostname=${o.replace ?? "<name>"} --ssh-dir=/etc/mezite/ssh`,
        ``,
        `This token can only be used once.`,
        ``,
      ].join("\n"),
    );
  });
tokens
  .command("ls")
  .description("list join tokens (never the secret)")
  .action(async () => {
    const a = admin();
    const list = (await call(a, (c) => c.listTokens({}))).tokens;
    out(a, list.map(view.tokenDoc), () =>
      table(["ID", "TYPE", "FOR", "STATE", "EXPIRES"], list.map((t) => [t.id.slice(0, 16), t.type, t.agentIdentity || view.labelsText(t.labels) + (t.replaces ? ` (replaces ${t.replaces})` : ""), t.used ? "used" : Number(t.expires) < Date.now() ? "expired" : "unused", relTime(t.expires)])),
    );
  });
tokens
  .command("rm")
  .description("delete a join token by id (or a unique prefix of 8+ characters)")
  .argument("<id>")
  .action(async (id: string) => {
    const a = admin();
    await call(a, (c) => c.deleteToken({ id }));
    out(a, { removed: id }, () => `Token ${id} removed.\n`);
  });

// ---- nodes, audit

const nodes = program.command("nodes").description("nodes");
nodes
  .command("rm")
  .description("remove a node: it can no longer renew or heartbeat, and agents treat its host key as revoked")
  .argument("<name>")
  .action(async (name: string) => {
    const a = admin();
    await call(a, (c) => c.deleteNode({ name }));
    out(a, { removed: name }, () => `Node "${name}" removed; agents list its host key as @revoked from their next renewal.\n`);
  });
nodes
  .command("ls")
  .description("list nodes in name order, printed page by page as the service reads them")
  .option("--prefix <prefix>", "only names that start with this")
  .option("--labels <k=v,...>", "only nodes with all of these labels")
  .option("--limit <n>", "at most this many (the first in name order); 0 for all", "0")
  .action(async (o: { prefix?: string; labels?: string; limit: string }) => {
    const a = admin();
    const labels = parseLabels(o.labels ?? "");
    const limit = countOption(o.limit, "--limit") || Infinity;
    await printListing(a, view.NODE_HEADERS, view.nodeRow, view.nodeDoc, async function* (c) {
      let seen = 0;
      for (let pageToken = ""; ; ) {
        const res = await c.listNodes({ pageSize: NODE_PAGE, pageToken, namePrefix: o.prefix ?? "", labels });
        const page = res.nodes.slice(0, limit - seen);
        seen += page.length;
        yield page;
        pageToken = res.nextPageToken;
        if (!pageToken || seen >= limit) return;
      }
    });
  });

program
  .command("audit")
  .description("audit events")
  .command("ls")
  .description("list audit events")
  .option("--since <duration>", "how far back", "1h")
  .option("--type <type>", "only this event type (or prefix, e.g. agent_identity)")
  .option("--limit <n>", "at most this many (the newest); 0 for all", "1000")
  .action(async (o: { since: string; type?: string; limit: string }) => {
    const a = admin();
    const since = Date.now() - ttlOption(o.since, "--since");
    const limit = countOption(o.limit, "--limit");
    await printListing(a, view.AUDIT_HEADERS, view.auditRow, view.auditDoc, async function* (c) {
      for await (const page of c.listAudit({ since: BigInt(since), type: o.type ?? "", limit })) yield page.events;
    });
  });

program
  .command("admin")
  .description("the admin certificates in admin.identity files")
  .command("revoke-certs")
  .description("revoke every admin certificate issued until now (a leaked admin.identity); auth services write new ones into their data dirs")
  .action(async () => {
    const a = admin();
    const res = await call(a, (c) => c.revokeAdminCertificates({}));
    const before = new Date(Number(res.revokedBefore)).toISOString();
    out(a, { revoked_before: before }, () =>
      `Admin certificates issued before ${before} are revoked. The auth service that took this call has written a new admin.identity into its data dir; others do within a minute.\n`,
    );
  });

// ---- certificates (SPEC §19): from an sshd log line back to the run

program
  .command("certs")
  .description("certificates the cluster issued")
  .command("show")
  .description("who a certificate was issued to: identity, instance, roles, principals, validity and the join's CI claims (serial as sshd logs it)")
  .argument("<serial>", "the SSH certificate's serial, decimal: sshd logs \"ID agent-identity/NAME (serial N)\"")
  .action(async (serial: string) => {
    const a = admin();
    const res = await call(a, (c) => c.getCertificate({ serial }));
    if (!res.certificate) throw new MeziteError("ERR_INTERNAL", "the auth service sent an empty reply");
    const cert = res.certificate;
    out(a, view.certificateDoc(cert), () => view.certificateText(cert));
  });

// ---- CA rotation (SPEC §15)

const ca = program.command("ca").description("the cluster's certificate authorities and their rotation");
ca
  .command("status")
  .description("each CA's rotation phase, its keys, and how many instances and nodes hold certificates of each")
  .action(async () => {
    const a = admin();
    const list = (await call(a, (c) => c.getCaStatus({}))).cas;
    out(a, list.map(view.caDoc), () => view.caText(list));
  });
ca
  .command("rotate")
  .description("rotate a CA's keys with no failed login: automatically over --grace-period, or one phase at a time with --manual --phase")
  .option("--type <type>", "user, host or all (required)")
  .option("--grace-period <duration>", "automatic rotation: how long it takes in all, split evenly over init, update_clients and update_servers", "48h")
  .option("--manual", "move one phase by hand (--phase)")
  .option("--phase <phase>", "with --manual: init, update_clients, update_servers or standby; rollback (from any phase before the end) needs no --manual")
  .option("--force", "step although live instances or nodes are behind the phase (they may fail until they renew), or allow phases shorter than daemons' default 45s CA check")
  .action(async (o: { type?: string; gracePeriod: string; manual?: boolean; phase?: string; force?: boolean }, cmd: Command) => {
    if (!o.type) throw new MeziteError("ERR_USAGE", "--type is required: user, host or all");
    if (o.manual && !o.phase) throw new MeziteError("ERR_USAGE", "--manual needs --phase: init, update_clients, update_servers, standby or rollback");
    if (o.phase && !o.manual && o.phase !== "rollback") throw new MeziteError("ERR_USAGE", `--phase=${o.phase.slice(0, 40)} needs --manual (or leave both out for an automatic rotation)`);
    if (o.phase && cmd.getOptionValueSource("gracePeriod") === "cli") throw new MeziteError("ERR_USAGE", "--grace-period is for automatic rotations: leave it out with --phase");
    const graceMs = o.phase ? 0 : ttlOption(o.gracePeriod, "--grace-period");
    const a = admin();
    const res = await call(a, (c) => c.rotateCa({ type: o.type!, phase: o.phase ?? "", gracePeriodMs: BigInt(graceMs), force: o.force ?? false }));
    if (graceMs > 0 && graceMs / STEPS < SAFE_PHASE_MS) {
      process.stderr.write(`Warning: each phase lasts ${formatDuration(graceMs / STEPS)}; daemons ask for phase changes every 45s by default (--ca-check-interval), so one that misses a phase may fail logins.\n`);
    }
    const moved = res.cas.filter((c) => o.type === "all" || c.type === o.type);
    out(a, moved.map(view.caDoc), () => view.caText(moved));
  });

routeCommanderErrors(program);
endQuietlyOnClosedPipe();
program.parseAsync(process.argv).catch((e: unknown) => fail("mezctl", e));
