/**
 * No core dumps from a process that holds keys (the CA keys, an identity's or a node's private
 * keys): a core file is the process's memory, keys included, written wherever the system puts
 * cores. Node has neither setrlimit nor prctl(PR_SET_DUMPABLE), so on Linux the `prlimit` tool
 * (util-linux) sets this process's RLIMIT_CORE to 0, soft and hard, at start-up; a process may
 * lower its own limits, and children (cluster workers) inherit them. The systemd units say
 * LimitCORE=0 too. Without prlimit, the limit stays as the caller set it (`ulimit -c 0` then).
 * systemd-coredump and apport honour RLIMIT_CORE 0 although the kernel pipes cores to them.
 * Kept free of imports beyond Node's: mezd.ts starts it before loading the programs, and waits
 * for it before any of them runs: the tool's ~3 ms run beside the loading, not before it.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";

/** The core-size limits from /proc/self/limits' text: [soft, hard], "unlimited" or bytes. */
export function coreLimits(limitsText: string): [string, string] | undefined {
  const m = /^Max core file size\s+(\S+)\s+(\S+)/m.exec(limitsText);
  return m ? [m[1]!, m[2]!] : undefined;
}

/** Sets RLIMIT_CORE to 0 (soft and hard) for this process; true when it is 0 afterwards. */
export async function disableCoreDumps(): Promise<boolean> {
  if (process.platform !== "linux") return false;
  const isZero = () => {
    try {
      const l = coreLimits(readFileSync("/proc/self/limits", "utf8"));
      return l !== undefined && l[0] === "0" && l[1] === "0";
    } catch {
      return false;
    }
  };
  if (isZero()) return true; // a cluster worker inherits it; a unit's LimitCORE=0 set it already
  await new Promise<void>((resolve) => {
    const tool = spawn("prlimit", [`--pid=${process.pid}`, "--core=0:0"], { stdio: "ignore", timeout: 5000 });
    tool.on("error", () => resolve()); // no prlimit: the limit stays as the caller set it
    tool.on("close", () => resolve());
  });
  return isZero();
}
