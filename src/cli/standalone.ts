/**
 * The release's one executable (scripts/release.mjs): `mezd`, `msh` and `mezctl` in the tarball
 * are hard links to one Node single executable application, which runs the program its name
 * says. The name is the one it was started under: argv[0] (a shell passes the command as typed,
 * sshd and systemd the path), else the executable's own path (/proc/self/exe keeps the name of
 * the hard link it was started through; cluster workers are started that way). Each program is
 * imported only when it runs, so the other two cost their parse and nothing else. No top-level
 * await: a SEA main is one CommonJS script.
 */
import { basename } from "node:path";
import { isSea } from "node:sea";

export const PROGRAMS = ["mezd", "msh", "mezctl"] as const;
export type Program = (typeof PROGRAMS)[number];

/** The program named by `argv0`, else by `execPath`; undefined when neither names one. */
export function programName(argv0: string, execPath: string): Program | undefined {
  for (const p of [argv0, execPath]) {
    const name = basename(p);
    if ((PROGRAMS as readonly string[]).includes(name)) return name as Program;
  }
  return undefined;
}

function main(): void {
  switch (programName(process.argv0, process.execPath)) {
    case "mezd":
      void import("./mezd.js");
      return;
    case "msh":
      void import("./msh.js");
      return;
    case "mezctl":
      void import("./mezctl.js");
      return;
    default:
      process.stderr.write(`mezite: run this executable as mezd, msh or mezctl (a link of that name), not as ${JSON.stringify(basename(process.argv0))}: it is all three and runs the one it is called\n`);
      process.exit(2);
  }
}

// Only as the executable's main (a test imports programName alone).
if (isSea()) main();
