/**
 * The systemd units the tarball ships (deploy/systemd/), checked by systemd itself:
 * `systemd-analyze verify` (with an executable at /usr/local/bin/mezd, inside a private mount
 * namespace so the machine's /usr/local/bin is untouched) and `systemd-analyze security`'s
 * exposure score, plus the settings the issue names. Outside CI a machine without systemd-analyze
 * skips loudly; under CI=true that is a failure.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, test } from "node:test";
import { ROOT } from "../harness/auth.js";
import { findBinary, missingComponent } from "../harness/require.js";

const UNITS = ["mezd-auth.service", "mezd-identity@.service", "mezd-node.service"];
const ANALYZE = findBinary(["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]);
const canNamespace = process.getuid?.() === 0 && spawnSync("unshare", ["--mount", "--propagation", "private", "true"]).status === 0;
const work = mkdtempSync(join(tmpdir(), "mezite-units-"));
after(() => rmSync(work, { recursive: true, force: true }));

const unit = (name: string) => readFileSync(join(ROOT, "deploy/systemd", name), "utf8");
/** The instance name systemd-analyze should check a template as. */
const instance = (u: string) => u.replace("@.service", "@github-deploy.service");

/** Runs systemd-analyze on copies of the units in `dir`, with a stand-in /usr/local/bin/mezd. */
function analyze(dir: string, args: string[]): { code: number | null; out: string } {
  const fakeBin = mkdtempSync(join(work, "bin-"));
  writeFileSync(join(fakeBin, "mezd"), "#!/bin/sh\nexit 0\n", { mode: 0o755 });
  const script = 'mount --bind "$0" /usr/local/bin && exec "$@"';
  const r = spawnSync("unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script, fakeBin, ANALYZE!, ...args], { cwd: dir, encoding: "utf8" });
  return { code: r.status, out: r.stdout + r.stderr };
}

function unitsIn(dir: string, edit: (name: string, text: string) => string = (_, t) => t): void {
  for (const u of UNITS) writeFileSync(join(dir, u), edit(u, unit(u)));
}

describe("systemd units", () => {
  test("systemd-analyze verify accepts all three (and rejects a broken one)", (t) => {
    if (!ANALYZE || !canNamespace) return missingComponent(t, "systemd-analyze (and root for a mount namespace)", "apt-get install systemd");
    const dir = mkdtempSync(join(work, "ok-"));
    unitsIn(dir);
    const r = analyze(dir, ["verify", ...UNITS.map((u) => `./${instance(u)}`)]);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), "", r.out);

    const bad = mkdtempSync(join(work, "bad-"));
    unitsIn(bad, (_, t) => t.replace("ProtectSystem=strict", "ProtectSystem=strictly"));
    const b = analyze(bad, ["verify", "./mezd-auth.service"]);
    assert.match(b.out, /protect system value.*strictly/i, "the oracle notices a bad value");
  });

  test("systemd-analyze security rates each unit's exposure 2.0 or lower (OK)", (t) => {
    if (!ANALYZE || !canNamespace) return missingComponent(t, "systemd-analyze (and root for a mount namespace)", "apt-get install systemd");
    const dir = mkdtempSync(join(work, "sec-"));
    unitsIn(dir);
    for (const u of UNITS) {
      const r = analyze(dir, ["security", "--offline=yes", "--no-pager", `./${instance(u)}`]);
      const m = /Overall exposure level for \S+: (\d+\.\d)/.exec(r.out);
      assert.ok(m, r.out.slice(-500));
      assert.ok(Number(m[1]) <= 2.0, `${u}: exposure ${m[1]}\n${r.out}`);
      process.stdout.write(`# ${u}: exposure ${m[1]}\n`);
    }
  });

  test("capabilities as systemd reads them: the auth service may bind 443 and nothing more; the others get none", (t) => {
    if (!ANALYZE || !canNamespace) return missingComponent(t, "systemd-analyze (and root for a mount namespace)", "apt-get install systemd");
    const dir = mkdtempSync(join(work, "caps-"));
    unitsIn(dir);
    for (const u of UNITS) {
      const r = analyze(dir, ["security", "--offline=yes", "--no-pager", "--json=short", `./${instance(u)}`]);
      assert.equal(r.code, 0, r.out);
      const checks = JSON.parse(r.out) as { name: string; set: boolean }[];
      const caps = checks.filter((c) => c.name.startsWith("CapabilityBoundingSet=~") || c.name === "AmbientCapabilities=");
      assert.ok(caps.length > 20, r.out.slice(0, 500));
      // "set" means the unit takes the risk away: a capability out of the bounding set, no ambient ones.
      const kept = caps.filter((c) => !c.set).map((c) => c.name).sort();
      const want = u === "mezd-auth.service" ? ["AmbientCapabilities=", "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"] : [];
      assert.deepEqual(kept, want, `${u} keeps ${kept.join(", ") || "nothing"}`);
    }
    const auth = unit("mezd-auth.service");
    assert.match(auth, /^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$/m, "not CAP_NET_RAW or CAP_NET_BROADCAST, which systemd rates alike");
    assert.match(auth, /^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m, "User=mezite is not root: the capability must be ambient to reach mezd");
  });

  test("the identity daemon's agent socket lives in its RuntimeDirectory= (0700, this instance's)", (t) => {
    const identity = unit("mezd-identity@.service");
    const runtime = /^RuntimeDirectory=(\S+)$/m.exec(identity)?.[1];
    assert.ok(runtime, "mezd-identity@.service has no RuntimeDirectory=");
    assert.ok(runtime.includes("%i"), `each instance has its own runtime directory, not ${runtime}`);
    assert.match(identity, /^RuntimeDirectoryMode=0700$/m, "the agent's directory must be private (src/identity/agent.ts refuses others)");
    const execStart = /^ExecStart=(.*)$/m.exec(identity)![1]!;
    const socket = /(?:^|\s)--ssh-agent-socket=(\S+)/.exec(execStart)?.[1];
    assert.ok(socket, `ExecStart names no --ssh-agent-socket: ${execStart}`);
    // systemd puts a system unit's RuntimeDirectory= under /run: the socket's own directory is it.
    assert.equal(dirname(socket), `/run/${runtime}`);
    if (!ANALYZE || !canNamespace) return missingComponent(t, "systemd-analyze (and root for a mount namespace)", "apt-get install systemd");
    const dir = mkdtempSync(join(work, "runtime-"));
    unitsIn(dir);
    const r = analyze(dir, ["verify", `./${instance("mezd-identity@.service")}`]);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), "", r.out);
  });

  test("hardening and the writable paths each program needs", () => {
    for (const u of UNITS) {
      const text = unit(u);
      for (const line of ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RestrictSUIDSGID=yes"]) {
        assert.ok(text.split("\n").includes(line), `${u} lacks ${line}`);
      }
      if (u !== "mezd-auth.service") assert.ok(text.split("\n").includes("CapabilityBoundingSet="), `${u} lacks CapabilityBoundingSet=`);
    }
    assert.match(unit("mezd-auth.service"), /^User=mezite$/m);
    assert.match(unit("mezd-auth.service"), /^StateDirectory=mezite$/m);
    assert.match(unit("mezd-auth.service"), /^CacheDirectory=mezite-auth$/m, "a private place for the SQLite addon");
    const identity = unit("mezd-identity@.service");
    assert.match(identity, /^ExecStart=\/usr\/local\/bin\/mezd identity start --config=\/etc\/mezite\/identity\/%i\.yaml --ssh-agent-socket=\S+$/m);
    assert.match(identity, /^ReadWritePaths=\/var\/lib\/mezite-identity\/%i$/m);
    assert.match(identity, /^RestartPreventExitStatus=2 3$/m, "locked or deleted identities are not restarted forever");
    assert.match(unit("mezd-node.service"), /^ReadWritePaths=\/etc\/mezite\/ssh$/m);
  });
});
