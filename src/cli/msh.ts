/** msh: the agent's SSH helper (SPEC §17). */
import { Command } from "commander";
import { versionLine } from "../lib/version.js";
const program = new Command("msh").version(versionLine("msh"), "--version", "print the version and commit");
program.parse(process.argv);
