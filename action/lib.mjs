// What main.mjs and post.mjs share: the runner's file commands, read and written as the runner
// documents them, with no dependency (the action runs from the repository as checked out).
import { appendFileSync } from "node:fs";

/** An input as the runner passes it to a JavaScript action: INPUT_<NAME> (spaces to _, upper case; hyphens kept). */
export function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`] ?? "").trim();
}

/** What ends a step: `step` prints its one line on stderr and fails the step. */
class Failure extends Error {}

export function fail(message) {
  throw new Failure(message);
}

/** Runs a step's body: a Failure is one line on stderr and exit code 1 (cleanups in finally blocks have run). */
export async function step(body) {
  try {
    await body();
  } catch (e) {
    if (!(e instanceof Failure)) throw e;
    process.stderr.write(`mezite: ${e.message}\n`);
    process.exit(1);
  }
}

/** A value for a name=value file command: one line, or it could smuggle in another command. */
function oneLine(name, value) {
  if (/[\r\n]/.test(value)) fail(`${name} must be one line`);
  return value;
}

/** Appends name=value to the file the runner named in `variable` (GITHUB_OUTPUT, GITHUB_STATE). */
export function fileCommand(variable, name, value) {
  const file = process.env[variable];
  if (!file) fail(`${variable} is not set: this runs as a GitHub Actions step`);
  appendFileSync(file, `${name}=${oneLine(name, value)}\n`);
}

/** Appends a directory to GITHUB_PATH: later steps find mezd and msh. */
export function addPath(dir) {
  const file = process.env["GITHUB_PATH"];
  if (!file) fail("GITHUB_PATH is not set: this runs as a GitHub Actions step");
  appendFileSync(file, `${oneLine("the install directory", dir)}\n`);
}
