/**
 * Secrets given as arguments leave what `ps` shows (SPEC §10): a PostgreSQL password in
 * `--backend` for the service's whole life (its workers included), and a join token before the
 * command-line framework even loads.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mezctlOk, ROOT, startAuth } from "../harness/auth.js";
import { startPostgres } from "../harness/postgres.js";
import { missingComponent, PG_BIN_DIR } from "../harness/require.js";

const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
const children = (pid: number) => readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);

test("a password in --backend is warned about and never shows in ps, for the service or its workers; the service still reaches the database", async (t) => {
  if (PG_BIN_DIR === undefined) return missingComponent(t, "PostgreSQL server", "apt-get install postgresql");
  const pg = await startPostgres();
  const password = "pw-0f3b9a1c7e-in-argv";
  const url = pg.url.replace("postgresql://postgres@", `postgresql://postgres:${password}@`);
  const auth = await startAuth({ backend: url, extraArgs: ["--workers=2"] });
  try {
    assert.match(auth.output(), /mezd: warning: the password in --backend shows in ps .*--config file, \$PGPASSWORD or ~\/\.pgpass/);
    assert.ok(!auth.output().includes(password), "the password is in the service's output");
    // Both workers are up once the primary said it listens; each shows its own arguments.
    const workers = children(auth.proc.pid!);
    assert.equal(workers.length, 2, `two workers: ${workers.join(",")}`);
    for (const pid of [auth.proc.pid!, ...workers]) assert.ok(!cmdline(pid).includes(password), `the password in /proc/${pid}/cmdline: ${cmdline(pid)}`);
    assert.ok(cmdline(auth.proc.pid!).includes(`127.0.0.1`), "the title still says what runs");
    const ps = spawnSync("ps", ["-eww", "-o", "args"], { encoding: "utf8" }).stdout;
    assert.ok(ps.includes("--backend=postgresql://***@"), "ps shows the backend, redacted");
    assert.ok(!ps.includes(password), "the password in ps -eww -o args");
    // The workers got it through the environment, which only the same user and root can read.
    for (const pid of workers) assert.ok(readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`PGPASSWORD=${password}`));
    assert.match(await mezctlOk(auth, "get", "roles"), /NAME/);
  } finally {
    await auth.stop();
    rmSync(auth.dataDir, { recursive: true, force: true });
    await pg.stop();
  }
});

/**
 * Where a token stands when commander is first imported: a module hook (on tsc's dist/cli/mezd.js,
 * whose imports are real specifiers) reads /proc/self/cmdline at that moment. Anything later
 * leaves the token in `ps` for as long as loading the framework and the program takes.
 */
function cmdlineWhenCommanderLoads(args: string[]): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "mezite-ps-"));
  const out = join(dir, "out");
  const hooks = `import { appendFileSync, readFileSync } from "node:fs";
export async function resolve(spec, ctx, next) {
  if (spec === "commander") appendFileSync(${JSON.stringify(out)}, readFileSync("/proc/self/cmdline", "utf8").replace(/\\0/g, " ") + "\\n");
  return next(spec, ctx);
}`;
  writeFileSync(join(dir, "hooks.mjs"), hooks);
  writeFileSync(join(dir, "register.mjs"), `import { register } from "node:module";\nregister(${JSON.stringify(`file://${join(dir, "hooks.mjs")}`)});\n`);
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [`--import=${join(dir, "register.mjs")}`, join(ROOT, "dist/cli/mezd.js"), ...args], { stdio: "ignore" });
    p.on("error", reject);
    p.on("exit", () => {
      try {
        resolve(readFileSync(out, "utf8"));
      } catch (e) {
        reject(e as Error);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}

for (const [what, args] of [
  ["mezd node join --token=T", ["node", "join", "--auth-server=127.0.0.1:1", "--hostname=web", "--ssh-dir=/nonexistent/ssh"]],
  ["mezd identity start --token T", ["identity", "start", "--auth-server=127.0.0.1:1", "--destination-dir=/nonexistent/dest", "--one-shot"]],
] as const) {
  test(`${what}: the token has left the process arguments before commander loads`, async () => {
    const token = "tok-5d1e2c9b8a7f6e";
    const seen = await cmdlineWhenCommanderLoads([...args, ...(what.includes("--token=") ? [`--token=${token}`] : ["--token", token])]);
    assert.ok(seen.includes(args[1]!), `the hook saw the command: ${seen}`);
    assert.ok(!seen.includes(token), `the token in the arguments when commander loads: ${seen}`);
  });
}
