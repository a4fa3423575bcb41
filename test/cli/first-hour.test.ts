/**
 * What a new operator meets in the first hour (issue 24 items 5, 7, 9), through the real binaries:
 * `mezd auth start` saying which cluster name it chose, `mezctl audit ls` showing each event's
 * detail (a rotation's phases) in text, and `mezctl create -f` refusing what it would misread.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { mezctl, mezctlOk, SEED_ROLE, startAuth, type AuthProcess } from "../harness/auth.js";

const NOTICE = /no --cluster-name given: this new cluster is named "([^"]+)"/;

interface LogLine {
  level: string;
  msg: string;
  cluster?: string;
}

/** The log lines (JSON, on stderr) in what it wrote, in order. */
const logLines = (out: string): LogLine[] => out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as LogLine);
const notices = (out: string) => logLines(out).filter((l) => NOTICE.test(l.msg));

/** Waits until the process's output (stdout and stderr) satisfies `ok`; stderr may trail stdout's ready line. */
async function outputUntil(auth: AuthProcess, ok: (out: string) => boolean, what: string): Promise<string> {
  const deadline = Date.now() + 20_000;
  while (!ok(auth.output())) {
    if (Date.now() > deadline) throw new Error(`no ${what} in:\n${auth.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return auth.output();
}

/** Stops it and returns everything it wrote: "stopping" is its last stderr line, after any notice. */
async function stopAndRead(auth: AuthProcess): Promise<string> {
  await auth.stop();
  return outputUntil(auth, (o) => o.includes('"msg":"stopping"'), "stopping line");
}

test("the first start without --cluster-name says the name it chose and that ID-token audiences use it; later starts do not", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mezite-name-"));
  try {
    const first = await startAuth({ dataDir, clusterName: null });
    const status = JSON.parse(await mezctlOk(first, "status", "--format=json")) as { cluster_name: string };
    const out = await stopAndRead(first);
    const [notice, ...more] = notices(out);
    assert.ok(notice && more.length === 0, `the first start names its cluster, once:\n${out}`);
    assert.equal(notice.level, "warn");
    assert.equal(notice.cluster, hostname().toLowerCase());
    assert.equal(NOTICE.exec(notice.msg)?.[1], notice.cluster);
    assert.equal(status.cluster_name, notice.cluster, "the name said is the one mezctl status shows");
    assert.ok(notice.msg.includes(`ID tokens must be made for the audience "${notice.cluster}"`), notice.msg);
    assert.match(notice.msg, /--cluster-name/);
    assert.match(out, /^auth service listening on 127\.0\.0\.1:\d+$/m, "the ready line is unchanged");
    const msgs = logLines(out).map((l) => l.msg);
    assert.equal(msgs.indexOf(notice.msg), msgs.indexOf("auth service started") + 1, "right after the start log, before the ready line");

    const again = await startAuth({ dataDir, clusterName: null });
    assert.deepEqual(notices(await stopAndRead(again)), [], "a restart uses the stored name and says nothing new");
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
  const named = await startAuth({ clusterName: "prod.example.com" });
  assert.deepEqual(notices(await stopAndRead(named)), [], "--cluster-name given: nothing to say");
});

test("with --workers the primary says the chosen cluster name once", async () => {
  const auth = await startAuth({ clusterName: null, extraArgs: ["--workers=2"] });
  const out = await stopAndRead(auth);
  assert.equal(notices(out).length, 1, out);
});

test("audit ls text shows each event's detail: the phases of a ca.rotation, a lock's reason (escaped)", async () => {
  const auth = await startAuth();
  try {
    await mezctlOk(auth, "ca", "rotate", "--type=host", "--manual", "--phase=init");
    await mezctlOk(auth, "ca", "rotate", "--type=host", "--phase=rollback");
    await mezctlOk(auth, "locks", "add", "--login=deploy", "--reason=leaked\x1b[2Jkey");
    const text = await mezctlOk(auth, "audit", "ls");
    const [header, , ...rows] = text.trimEnd().split("\n");
    assert.match(header!, /\bDETAIL$/, "a DETAIL column, last");
    const rotations = rows.filter((r) => r.includes(" ca.rotation "));
    assert.equal(rotations.length, 2, text);
    assert.match(rotations[0]!, /Host CA: standby -> init \(manual\)/);
    assert.match(rotations[1]!, /Host CA: init -> rollback/);
    const lock = rows.find((r) => r.includes(" lock.create "));
    assert.ok(lock?.includes("login=deploy leaked\\x1b[2Jkey"), `the lock's target and reason, escaped:\n${text}`);
    assert.ok(!text.includes("\x1b"), "no control character reaches the terminal");
    // The column is in JSON too, as it was.
    const json = JSON.parse(await mezctlOk(auth, "audit", "ls", "--type=ca.rotation", "--format=json")) as { detail: string }[];
    assert.match(json[0]!.detail, /standby -> init/);
  } finally {
    await auth.stop();
  }
});

test("create -f: versions, metadata fields and kinds it does not know are refused; YAML errors show the line; kind is case-insensitive", async () => {
  const auth = await startAuth();
  const dir = mkdtempSync(join(tmpdir(), "mezite-yaml-"));
  let n = 0;
  const create = async (text: string) => {
    const file = join(dir, `r${n++}.yaml`);
    writeFileSync(file, text);
    const r = await mezctl(auth, "create", "-f", file);
    return { ...r, file };
  };
  const refused = async (text: string, re: RegExp) => {
    const r = await create(text);
    assert.equal(r.code, 2, `${text}\n${r.stderr}`);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, `one line: ${r.stderr}`);
    assert.match(r.stderr, re, text);
    return r;
  };
  try {
    // Roles
    await refused(SEED_ROLE.replace("kind: role", "kind: role\nversion: v2"), /version must be "v1" or left out \(got "v2"\)/);
    await refused(SEED_ROLE.replace("kind: role", "kind: role\nversion: 1"), /version must be "v1"/);
    await refused(SEED_ROLE.replace("  name: ci-deployer", "  name: ci-deployer\n  labels: {team: ops}"), /unknown field "metadata\.labels" \(allowed: name, description\)/);
    await refused(SEED_ROLE.replace("  name: ci-deployer", "  name: ci-deployer\n  namespace: default"), /unknown field "metadata\.namespace"/);
    const flow = await refused(SEED_ROLE.replace("      - deploy\n", "      - deploy\n  deny: [root\n"), /is not valid YAML, line \d+ column \d+ \(".*"\): /);
    assert.ok(flow.stderr.includes(flow.file), "names the file");
    await refused(SEED_ROLE.replace("spec:", " spec:"), /is not valid YAML, line 6 column 1 \(" spec:"\): All mapping items must start at the same column/);
    await refused(SEED_ROLE.replace("  name: ci-deployer", "\tname: ci-deployer"), /line 4 column 1 \("\\x09name: ci-deployer"\): Tabs are not allowed/);
    await refused(SEED_ROLE + "---\nkind: role\n", /more than one document/);
    await refused(SEED_ROLE.replace("kind: role", "kind: Rolle"), /has kind "Rolle": create -f takes kind: role or kind: join_token/);
    await refused(SEED_ROLE.replace("kind: role\n", ""), /has no kind: create -f takes kind: role or kind: join_token/);
    const role = await create(SEED_ROLE.replace("kind: role", "kind: Role"));
    assert.equal(role.code, 0, role.stderr);
    assert.match(await mezctlOk(auth, "get", "role/ci-deployer"), /^kind: role$/m, "stored and shown as kind: role");

    // join_token documents: the same rules
    await mezctlOk(auth, "agent-identities", "add", "--name=github-deploy", "--roles=ci-deployer");
    const jt = ["kind: join_token", "metadata:", "  name: gh-main", "spec:", "  agent_identity: github-deploy", "  join_method: github", "  github:", "    allow:", "      - repository: acme/webapp", ""].join("\n");
    await refused(jt.replace("kind: join_token", "kind: join_token\nversion: v2"), /join_token version: must be "v1" or left out/);
    await refused(jt.replace("  name: gh-main", "  name: gh-main\n  labels: {}"), /join_token metadata\.labels: unknown field/);
    await refused(jt.replace("    allow:", "    allow: [\n"), /is not valid YAML, line \d+ column \d+ \(".*"\): /);
    await refused(jt.replace("  github:", "\tgithub:"), /\("\\x09github:"\): Tabs are not allowed/);
    await refused(jt.replace("kind: join_token", "kind: jointoken"), /has kind "jointoken": create -f takes kind: role or kind: join_token/);
    const made = await create(jt.replace("kind: join_token", "kind: Join_Token"));
    assert.equal(made.code, 0, made.stderr);
    assert.match(made.stdout, /join_token "gh-main" created/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await auth.stop();
  }
});
