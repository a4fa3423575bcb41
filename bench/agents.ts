/**
 * Bench sections 4 and 5: what the programs on every machine cost, each against a bare `node` in
 * the same run (Node's own start-up and memory are the floor a Node program stands on).
 *  4. `mezd identity start --one-shot` wall time; a running daemon's idle RSS and its CPU between
 *     renewals.
 *  5. `mezd node principals` (sshd's AuthorizedPrincipalsCommand, run on every login) wall time.
 *  6. The same for the standalone mezd of the release tarball (`npm run release`, built here when
 *     stale): one-shot and principals wall time, idle RSS, beside the bundle and a bare node in
 *     the same rounds; in a full run also a build without V8's code cache, to show what it buys.
 * The bundle runs as `bin/mezd` is installed, i.e. through its `#!/usr/bin/env node` line.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT, cpuSecondsPrecise, median, mustRun, note, rssKiB, sleep, spawnTracked, stopChild, tempDir, timed } from "./lib.js";
import { addIdentity, createSeedRole, mezctl, startService, type Service } from "./service.js";

const MEZD = join(ROOT, "bin/mezd");

export interface DaemonFigures {
  oneShotMs: number;
  joinOneShotMs: number;
  bareNodeMs: number;
  idleRssKiB: number;
  bareRssKiB: number;
  idleCpuMsPerMin: number;
  idleSteadyCpuMsPerMin: number;
  bareCpuMsPerMin: number;
  bareSteadyCpuMsPerMin: number;
}

export interface NodeFigures {
  principalsMs: number;
  bareNodeMs: number;
}

export interface StandaloneFigures {
  tarballBytes: number;
  mezdBytes: number;
  /** Medians over the same rounds as the bundle's and bare node's. */
  oneShotMs: number;
  bundleOneShotMs: number;
  bareNodeMs: number;
  /** A build without useCodeCache (full runs only). */
  noCacheOneShotMs?: number;
  /** A bare node's one mTLS HTTP/2 request to the service (workers/client-floor.cjs): Node's floor for a one-shot. */
  clientFloorMs: number;
  principalsMs: number;
  bundlePrincipalsMs: number;
  idleRssKiB: number;
  bundleIdleRssKiB: number;
  bareRssKiB: number;
}

const BARE = ["-e", "0"];
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

/** Builds the release into `out` unless current, and unpacks its mezd; returns the tarball and mezd paths. */
function standaloneMezd(out: string, flags: string[] = []): { tarball: string; mezd: string } {
  const b = spawnSync(process.execPath, [join(ROOT, "scripts/release.mjs"), "--if-stale", `--out=${out}`, ...flags], { cwd: ROOT, encoding: "utf8", timeout: 300_000 });
  if (b.status !== 0) throw new Error(`release build failed: ${b.stdout}${b.stderr}`);
  note(b.stdout.trim().split("\n")[0]!);
  const tarball = join(out, `mezite-${VERSION}-linux-amd64.tar.gz`);
  const dir = tempDir("standalone");
  const x = spawnSync("tar", ["-xzf", tarball, "-C", dir, "mezd"], { encoding: "utf8" });
  if (x.status !== 0) throw new Error(`tar: ${x.stderr}`);
  return { tarball, mezd: join(dir, "mezd") };
}

async function oneShot(svc: Service, dest: string, mezd = MEZD): Promise<number> {
  return (await mustRun(mezd, ["identity", "start", `--auth-server=${svc.addr}`, `--destination-dir=${dest}`, "--one-shot"], { env: { ...process.env, MEZITE_TOKEN: "" } })).ms;
}

/** Waits for a line on a child's stderr. */
function waitForLine(child: ReturnType<typeof spawnTracked>, re: RegExp, ms: number): Promise<void> {
  return new Promise((res, rej) => {
    let text = "";
    const t = setTimeout(() => rej(new Error(`no ${re} within ${ms} ms:\n${text.slice(-1000)}`)), ms);
    child.stderr!.on("data", (d: Buffer) => {
      text += d.toString();
      if (re.test(text)) {
        clearTimeout(t);
        res();
      }
    });
  });
}

/**
 * RSS at the end of `windowMs`, and CPU over it sampled each second, starting `settleMs` after
 * the process is ready. Some 8 to 20 s after a renewal V8 frees its garbage in one burst (~80 ms
 * of CPU, and the RSS drops): the full run's window is long enough to hold it, so "total" counts
 * it and "steady" (the median second, times 60) is the daemon asleep between renewals.
 */
async function idle(args: string[], ready: RegExp | undefined, settleMs: number, windowMs: number): Promise<{ rssKiB: number; cpuMsPerMin: number; steadyCpuMsPerMin: number }> {
  const child = spawnTracked(args[0]!, args.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
  try {
    if (ready) await waitForLine(child, ready, 30_000);
    await sleep(settleMs);
    const c0 = cpuSecondsPrecise(child.pid!);
    const perSecond: number[] = [];
    let last = c0;
    for (let t = 0; t < windowMs; t += 1000) {
      await sleep(1000);
      const c = cpuSecondsPrecise(child.pid!);
      perSecond.push(c - last);
      last = c;
    }
    return { rssKiB: rssKiB(child.pid!), cpuMsPerMin: ((last - c0) * 1000 * 60_000) / windowMs, steadyCpuMsPerMin: median(perSecond) * 1000 * 60 };
  } finally {
    await stopChild(child);
  }
}

export async function agents(o: { runs: number; principalsRuns: number; settleMs: number; idleMs: number; noCodeCache?: boolean }): Promise<{ daemon: DaemonFigures; node: NodeFigures; standalone: StandaloneFigures }> {
  note("the release's standalone mezd (built if stale)");
  const release = standaloneMezd(join(ROOT, "dist/release"));
  const noCache = o.noCodeCache ? standaloneMezd(join(ROOT, "dist/release-nocache"), ["--no-code-cache"]) : undefined;
  note("starting an auth service for the daemon and node measurements");
  const svc = await startService();
  try {
    await createSeedRole(svc);
    const dest = tempDir("dest");
    const token = await addIdentity(svc, "bench-daemon");
    const j = await mustRun(MEZD, ["identity", "start", `--auth-server=${svc.addr}`, `--destination-dir=${dest}`, "--one-shot"], { env: { ...process.env, MEZITE_TOKEN: token } });
    // The standalone daemon gets an identity of its own: two daemons never share one state.
    const seaDest = tempDir("dest-standalone");
    await mustRun(release.mezd, ["identity", "start", `--auth-server=${svc.addr}`, `--destination-dir=${seaDest}`, "--one-shot"], { env: { ...process.env, MEZITE_TOKEN: await addIdentity(svc, "bench-standalone") } });
    const runs = { mezd: [] as number[], bare: [] as number[], sea: [] as number[], noCache: [] as number[], clientFloor: [] as number[] };
    const clientFloor = [join(ROOT, "bench/workers/client-floor.cjs"), join(seaDest, ".mezite/state.json"), svc.addr];
    for (let i = 0; i < o.runs; i++) {
      runs.bare.push((await mustRun(process.execPath, BARE)).ms);
      runs.clientFloor.push((await mustRun(process.execPath, clientFloor)).ms);
      runs.mezd.push(await oneShot(svc, dest));
      runs.sea.push(await oneShot(svc, seaDest, release.mezd));
      if (noCache) runs.noCache.push(await oneShot(svc, seaDest, noCache.mezd));
    }
    note(`idle daemons (bundle, standalone) for ${(o.settleMs + o.idleMs) / 1000} s, and a bare node beside them`);
    const [daemonIdle, seaIdle, bareIdle] = await Promise.all([
      idle([MEZD, "identity", "start", `--auth-server=${svc.addr}`, `--destination-dir=${dest}`], /agent identity renewed/, o.settleMs, o.idleMs),
      idle([release.mezd, "identity", "start", `--auth-server=${svc.addr}`, `--destination-dir=${seaDest}`], /agent identity renewed/, o.settleMs, o.idleMs),
      idle([process.execPath, "-e", "setInterval(() => {}, 1e3)"], undefined, o.settleMs, o.idleMs),
    ]);
    const daemon: DaemonFigures = {
      oneShotMs: median(runs.mezd),
      joinOneShotMs: j.ms,
      bareNodeMs: median(runs.bare),
      idleRssKiB: daemonIdle.rssKiB,
      bareRssKiB: bareIdle.rssKiB,
      idleCpuMsPerMin: daemonIdle.cpuMsPerMin,
      idleSteadyCpuMsPerMin: daemonIdle.steadyCpuMsPerMin,
      bareCpuMsPerMin: bareIdle.cpuMsPerMin,
      bareSteadyCpuMsPerMin: bareIdle.steadyCpuMsPerMin,
    };

    note("joining a node; timing mezd node principals");
    const sshDir = tempDir("node");
    const nodeToken = /^Token: ([0-9a-f]{64})$/m.exec((await mezctl(svc, "tokens", "add", "--type=node", "--labels=env=staging")).stdout)?.[1];
    if (!nodeToken) throw new Error("mezctl tokens add printed no token");
    await mustRun(MEZD, ["node", "join", `--auth-server=${svc.addr}`, "--hostname=bench-node", `--ssh-dir=${sshDir}`], { env: { ...process.env, MEZITE_TOKEN: nodeToken } });
    const cert = readFileSync(join(dest, "ssh_cert"), "utf8").split(" ")[1]!;
    const p = { mezd: [] as number[], bare: [] as number[], sea: [] as number[] };
    const principals = async (mezd: string): Promise<number> => {
      const r = await timed(mezd, ["node", "principals", `--ssh-dir=${sshDir}`, "deploy", cert]);
      if (r.stdout !== "deploy\n") throw new Error(`${mezd} node principals did not allow deploy: ${JSON.stringify(r.stdout)} ${r.stderr}`);
      return r.ms;
    };
    for (let i = 0; i < o.principalsRuns; i++) {
      p.bare.push((await mustRun(process.execPath, BARE)).ms);
      p.mezd.push(await principals(MEZD));
      p.sea.push(await principals(release.mezd));
    }
    const standalone: StandaloneFigures = {
      tarballBytes: statSync(release.tarball).size,
      mezdBytes: statSync(release.mezd).size,
      oneShotMs: median(runs.sea),
      bundleOneShotMs: median(runs.mezd),
      bareNodeMs: median(runs.bare),
      ...(noCache ? { noCacheOneShotMs: median(runs.noCache) } : {}),
      clientFloorMs: median(runs.clientFloor),
      principalsMs: median(p.sea),
      bundlePrincipalsMs: median(p.mezd),
      idleRssKiB: seaIdle.rssKiB,
      bundleIdleRssKiB: daemonIdle.rssKiB,
      bareRssKiB: bareIdle.rssKiB,
    };
    return { daemon, node: { principalsMs: median(p.mezd), bareNodeMs: median(p.bare) }, standalone };
  } finally {
    await svc.stop();
  }
}
