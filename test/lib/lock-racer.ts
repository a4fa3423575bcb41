// A separate process for test/lib/pidlock.test.ts: on "take <epoch ms>" it spins until that
// moment (so racers start within microseconds of each other), tries the dir lock and answers
// "held" or "busy <pid>"; on "release" it lets go. Real processes, so the race is real.
import { createInterface } from "node:readline";
import { isMeziteError } from "../../src/lib/errors.js";
import { takeDirLock } from "../../src/lib/pidlock.js";

const dir = process.argv[2]!;
let release: (() => void) | undefined;
createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, at] = line.split(" ");
  if (command === "take") {
    while (Date.now() < Number(at ?? 0)); // spin: a timer would add milliseconds of jitter
    try {
      release = takeDirLock(dir, (pid) => `busy ${pid}`);
      console.log("held");
    } catch (e) {
      console.log(isMeziteError(e, "ERR_CONFIG") ? e.message : `error ${(e as Error).message}`);
    }
  } else if (command === "release") {
    release?.();
    release = undefined;
    console.log("released");
  }
});
console.log("ready");
