// A separate process for test/lib/pidlock.test.ts: on "take <epoch ms>" it tries the dir lock at
// that moment (racers start within microseconds of each other) and answers "held" or
// "busy <pid>"; on "release" it lets go. Real processes, so the race is real.
import { createInterface } from "node:readline";
import { isMeziteError } from "../../src/lib/errors.js";
import { takeDirLock } from "../../src/lib/pidlock.js";

const dir = process.argv[2]!;
let release: (() => void) | undefined;
createInterface({ input: process.stdin }).on("line", (line) => {
  const [command, at] = line.split(" ");
  if (command === "take") {
    const start = Number(at ?? 0);
    // A timer to near the moment, then a short spin: a timer alone adds milliseconds of jitter.
    setTimeout(() => {
      while (Date.now() < start);
      take();
    }, start - Date.now() - 3);
  } else if (command === "release") {
    release?.();
    release = undefined;
    console.log("released");
  }
});
console.log("ready");

function take(): void {
  try {
    release = takeDirLock(dir, (pid) => `busy ${pid}`);
    console.log("held");
  } catch (e) {
    console.log(isMeziteError(e, "ERR_CONFIG") ? e.message : `error ${(e as Error).message}`);
  }
}
