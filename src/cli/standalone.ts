/**
 * The release's one executable (scripts/release.mjs): `mezd`, `msh` and `mezctl` in the tarball
 * are hard links to one Node single executable application, which runs the program its name
 * says. The name is the one it was started under: argv[0] (a shell passes the command as typed,
 * sshd and systemd the path), else the executable's own path (/proc/self/exe keeps the name of
 * the hard link it was started through; cluster workers are started that way). Each program is
 * imported only when it runs. This file is the entry of the bundle that src/cli/sea-main.ts
 * compiles and runs, which then calls main(). No top-level await: the bundle is CommonJS.
 */
import { basename } from "node:path";

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

/** Runs `name` (by default the program this executable is called as). */
export function main(name: Program | undefined = programName(process.argv0, process.execPath)): void {
  switch (name) {
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
