// The action's post step (action.yml, post-if: always()): when the job ends, success or failure,
// its instance ends too. `mezd identity release` revokes every certificate the job held (nodes
// refuse them within seconds) and removes the outputs; a job whose join never happened has
// nothing to release, and that is not an error.
import { spawnSync } from "node:child_process";
import { fail, step } from "./lib.mjs";

await step(() => {
  // The runner hands back what main.mjs saved with GITHUB_STATE as STATE_<name>.
  const mezd = process.env["STATE_mezd"] ?? "";
  const dest = process.env["STATE_dest"] ?? "";
  if (mezd === "" || dest === "") {
    process.stdout.write("mezite: nothing to release (the main step stopped before joining)\n");
    return;
  }
  const r = spawnSync(mezd, ["identity", "release", `--destination-dir=${dest}`], { stdio: ["ignore", "inherit", "inherit"] });
  if (r.error) fail(`cannot run ${mezd}: ${r.error.message}`);
  // A release that failed leaves certificates valid until they expire: the step says so by failing.
  process.exitCode = r.status ?? 1;
});
