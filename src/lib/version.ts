/**
 * The version and commit a program prints for `--version`. Both are fixed at build time:
 * scripts/bundle.mjs and scripts/release.mjs define MEZITE_BUILD from package.json and git.
 * Code run straight from src/ (tests through tsx) has no build, and says so.
 */
declare const MEZITE_BUILD: { version: string; commit: string } | undefined;

export function buildInfo(): { version: string; commit: string } {
  return typeof MEZITE_BUILD === "undefined" ? { version: "0.0.0-dev", commit: "unknown" } : MEZITE_BUILD;
}

/** `mezd 0.1.0 (commit abc1234)` */
export function versionLine(program: string): string {
  const b = buildInfo();
  return `${program} ${b.version} (commit ${b.commit})`;
}
