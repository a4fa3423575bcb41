/**
 * --config YAML files: the same keys as the flags (kebab-case or snake_case), flags win,
 * unknown keys are an error naming the key.
 */
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { MeziteError } from "../lib/errors.js";

const camel = (k: string) => k.replace(/[-_]([a-z])/g, (_, c: string) => c.toUpperCase());

/** Fills options not given on the command line from the --config file, if any. */
export async function applyConfigFile(cmd: Command): Promise<void> {
  const path = cmd.getOptionValue("config") as string | undefined;
  if (!path) return;
  // yaml costs ~40 ms to load: only when a config file is actually given.
  const { parse: parseYaml } = await import("yaml");
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(path, "utf8"), { strict: true, uniqueKeys: true });
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message.split("\n")[0];
    throw new MeziteError("ERR_CONFIG", `--config ${path}: ${why}`, { cause: e });
  }
  if (doc === null || doc === undefined) return;
  if (typeof doc !== "object" || Array.isArray(doc)) throw new MeziteError("ERR_CONFIG", `--config ${path}: expected a mapping of option names to values`);
  const known = new Map(cmd.options.filter((o) => o.long && o.long !== "--config").map((o) => [camel(o.long!.slice(2)), o]));
  for (const [key, value] of Object.entries(doc)) {
    const opt = known.get(camel(key));
    if (!opt) throw new MeziteError("ERR_CONFIG", `--config ${path}: unknown key "${key}" (known: ${[...known.values()].map((o) => o.long!.slice(2)).join(", ")})`);
    const name = opt.attributeName();
    if (cmd.getOptionValueSource(name) === "cli" || cmd.getOptionValueSource(name) === "env") continue;
    const v = Array.isArray(value) ? value.map(String).join(",") : typeof value === "boolean" ? value : String(value);
    cmd.setOptionValueWithSource(name, v, "config");
  }
}
