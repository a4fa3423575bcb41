/**
 * The one place errors become exit codes (SPEC §6): 0 done, 1 error, 2 bad usage or config,
 * 3 not worth retrying (locked, deleted, token invalid or used). One line on stderr; the stack
 * only with --debug.
 */
import { CommanderError, type Command } from "commander";
import { MeziteError, isFinalError, type ErrorCode } from "../lib/errors.js";

export const EXIT = { ok: 0, error: 1, usage: 2, final: 3 } as const;

const USAGE: ErrorCode[] = ["ERR_USAGE", "ERR_CONFIG", "ERR_BAD_DURATION", "ERR_BAD_ROLE", "ERR_SYMLINK"];

export function exitCodeFor(e: unknown): number {
  if (e instanceof MeziteError) {
    if (isFinalError(e)) return EXIT.final;
    if (USAGE.includes(e.code)) return EXIT.usage;
    return EXIT.error;
  }
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT.usage;
  return EXIT.error;
}

export function debugEnabled(argv: string[] = process.argv): boolean {
  return argv.includes("--debug") || process.env["MEZITE_DEBUG"] === "1";
}

/** Prints one line for the error (and the stack with --debug) and exits with its code. */
export function fail(program: string, e: unknown): never {
  const code = exitCodeFor(e);
  if (e instanceof CommanderError) process.exit(code); // commander already printed its message
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(`${program}: ${msg.split("\n")[0]}\n`);
  if (debugEnabled()) {
    process.stderr.write(`${(e as Error)?.stack ?? ""}\n`);
    const cause = (e as Error)?.cause;
    if (cause) process.stderr.write(`caused by: ${(cause as Error)?.stack ?? String(cause)}\n`);
  }
  process.exit(code);
}

/**
 * A reader that stopped early (`mezctl audit ls | head`) ends the program quietly, as a closed
 * pipe ends `cat`, instead of an EPIPE stack on the next page written.
 */
export function endQuietlyOnClosedPipe(): void {
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(EXIT.ok);
    fail("mezctl", e);
  });
}

/**
 * Every command of a program exits through fail() with SPEC §6's codes, commander's own errors
 * included; an unknown `--opt=value` gets the "did you mean" that `--opt value` gets (commander
 * compares the whole `opt=value` with the known names, which never comes close).
 */
export function routeCommanderErrors(program: Command): void {
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) {
    c.exitOverride();
    // One line, as every error: commander puts its suggestion on a line of its own.
    c.configureOutput({ outputError: (text, write) => write(text.replace(/\n\(Did you mean (.*)\?\)/, " (did you mean $1?)")) });
    const unknownOption = (c as unknown as { unknownOption: (flag: string) => never }).unknownOption.bind(c);
    (c as unknown as { unknownOption: (flag: string) => never }).unknownOption = (flag) => unknownOption(flag.startsWith("--") ? flag.split("=")[0]! : flag);
  }
}
