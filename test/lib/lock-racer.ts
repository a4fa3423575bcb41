// A separate process for test/lib/pidlock.test.ts: on "take" it tries the dir lock and answers
// "held" or "busy <pid>", on "release" it lets go. Real processes, so the race is real.
import { createInterface } from "node:readline";
import { isMeziteError } from "../../src/lib/errors.js";
import { takeDirLock } from "../../src/lib/pidlock.js";

const dir = process.argv[2]!;
let release: (() => void) | undefined;
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "take") {
    try {
      release = takeDirLock(dir, (pid) => `busy ${pid}`);
      console.log("held");
    } catch (e) {
      console.log(isMeziteError(e, "ERR_CONFIG") ? e.message : `error ${(e as Error).message}`);
    }
  } else if (line === "release") {
    release?.();
    release = undefined;
    console.log("released");
  }
});
console.log("ready");
