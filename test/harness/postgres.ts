/**
 * A private PostgreSQL cluster for one test file: a temp dir owned by the postgres user (initdb
 * refuses root), a random free port on 127.0.0.1, the socket inside the temp dir. Callers check
 * PG_BIN_DIR first (missingComponent) and call stop() in `after`; if the process exits without it,
 * an exit hook still stops the server and removes the directory.
 */
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { chownSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PG_BIN_DIR } from "./require.js";
import { freePort } from "./net.js";

export interface PostgresServer {
  /** postgresql://postgres@127.0.0.1:PORT/postgres (trust authentication). */
  url: string;
  /** Stops the server (immediate mode) and removes its directory; safe to call twice. */
  stop(): Promise<void>;
  /** Stops the server as if it crashed, runs `whileDown`, and starts it again on the same port. */
  restart(whileDown?: () => Promise<void>): Promise<void>;
}

export async function startPostgres(): Promise<PostgresServer> {
  const bin = PG_BIN_DIR;
  if (bin === undefined) throw new Error("PostgreSQL server binaries are missing: check PG_BIN_DIR and call missingComponent first");
  const dir = mkdtempSync(join(tmpdir(), "mezite-pg-"));
  const data = join(dir, "data");
  const log = join(dir, "server.log");
  const asRoot = process.getuid?.() === 0;
  // As root every command runs as postgres, which must own the directory.
  const command = (tool: string, args: string[]): [string, string[]] =>
    asRoot ? ["runuser", ["-u", "postgres", "--", join(bin, tool), ...args]] : [join(bin, tool), args];
  const run = (tool: string, args: string[]) =>
    new Promise<void>((resolve, reject) => {
      const [file, argv] = command(tool, args);
      execFile(file, argv, { cwd: dir }, (err, _stdout, stderr) => {
        if (!err) return resolve();
        let tail = "";
        try { tail = readFileSync(log, "utf8").split("\n").slice(-8).join("\n"); } catch { /* no log yet */ }
        reject(new Error(`${tool} ${args.join(" ")} failed: ${stderr.trim()}\n${tail}`, { cause: err }));
      });
    });
  const stopArgs = ["-D", data, "-m", "immediate", "-w", "stop"];
  let running = false;
  const stopSync = () => {
    if (running) spawnSync(...command("pg_ctl", stopArgs), { cwd: dir, stdio: "ignore" });
    running = false;
    rmSync(dir, { recursive: true, force: true });
  };
  process.on("exit", stopSync);

  let port = 0;
  const start = async () => {
    await run("pg_ctl", ["-D", data, "-l", log, "-w", "-t", "30", "-o", `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off`, "start"]);
    running = true;
  };
  const stopServer = async () => {
    if (running) await run("pg_ctl", stopArgs);
    running = false;
  };

  try {
    if (asRoot) {
      const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }));
      const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }));
      chownSync(dir, uid, gid);
    }
    await run("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    // The free port may be taken between probing and binding: try a few.
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        await start();
        break;
      } catch (e) {
        if (attempt === 3) throw e;
      }
    }
  } catch (e) {
    stopSync();
    process.off("exit", stopSync);
    throw e;
  }

  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    async stop() {
      try {
        await stopServer();
      } finally {
        stopSync();
        process.off("exit", stopSync);
      }
    },
    async restart(whileDown) {
      await stopServer();
      try {
        await whileDown?.();
      } finally {
        await start();
      }
    },
  };
}

