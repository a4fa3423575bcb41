/**
 * Bench section 3: does a big fleet cost the auth service anything per call? Two services side by
 * side: one nearly empty, one holding 100,000 agent identities bulk-inserted into its SQLite file
 * while it was stopped. Join and renewal latencies are measured alternately on both (so the
 * machine's drift hits both), and `mezctl agent-identities ls` / `status NAME` are timed on both.
 *
 * The bulk records are copies of real ones: one identity is added, joined and renewed through the
 * service first, and its records (identity, instance with the last renewal's reply kept for
 * retries, used token, issued certificate) are the templates, so sizes and shapes are what a live
 * fleet stores.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { Agent as HttpsAgent, get as httpsGet } from "node:https";
import { join } from "node:path";
import Database from "better-sqlite3";
import { keys, type IdentityRecord, type InstanceRecord, type IssuedCertRecord, type TokenRecord } from "../src/auth/records.js";
import { MEZCTL_JS, median, note, spawnTracked } from "./lib.js";
import { joinOnce, renewOnce, type Renewer } from "./rpc.js";
import { addIdentity, createSeedRole, mezctl, startService, type Service } from "./service.js";
import { adminApi } from "../test/auth/client.js";
import { readAdminIdentity } from "../src/api/admin-identity.js";
import { freePort } from "../test/harness/net.js";

/**
 * Signs in to a service's dashboard as `mezctl dashboard` and a browser would; returns a timer of
 * one page: the wall time until its whole HTML has arrived (ms), throwing on any status but 200.
 */
async function webSession(svc: Service, port: number): Promise<(path: string) => Promise<number>> {
  const ca = readAdminIdentity(svc.identityPath).ca_pem;
  const secret = randomBytes(32).toString("base64url");
  await adminApi(svc).createDashboardSignIn({ secretHash: createHash("sha256").update(Buffer.from(secret, "base64url")).digest() });
  const agent = new HttpsAgent({ ca, keepAlive: true });
  const get = (path: string, cookie = "") =>
    new Promise<{ status: number; cookie: string }>((resolve, reject) => {
      httpsGet({ host: "127.0.0.1", port, path, agent, headers: cookie ? { cookie } : {} }, (res) => {
        res.resume();
        res.on("end", () => resolve({ status: res.statusCode ?? 0, cookie: String(res.headers["set-cookie"]?.[0] ?? "").split(";")[0]! }));
      }).on("error", reject);
    });
  const { cookie } = await get(`/signin/${secret}`);
  if (!cookie) throw new Error("bench: the dashboard's sign-in link did not set a cookie");
  return async (path) => {
    const t0 = performance.now();
    const r = await get(path, cookie);
    if (r.status !== 200) throw new Error(`bench: dashboard ${path} answered ${r.status}`);
    return performance.now() - t0;
  };
}

export interface ScaleOptions {
  identities: number;
  joins: number;
  renewals: number;
  lsRuns: number;
  statusRuns: number;
}

export interface ScaleFigures {
  identities: number;
  insertSeconds: number;
  dbMiB: number;
  join: { empty: number; full: number };
  renew: { empty: number; full: number };
  /** `agent-identities ls` (text) and `--format=json`, wall ms until the first row and the last (medians). */
  ls: { empty: Listing; full: Listing; fullJson: Listing };
  status: { empty: number; full: number };
  /** Dashboard pages, full HTML over HTTPS with a session (ms, median). */
  web: { identities: { empty: number; full: number }; search: { empty: number; full: number }; identity: { empty: number; full: number }; overview: { empty: number; full: number } };
}

export interface Listing {
  firstMs: number;
  allMs: number;
}

/**
 * Runs a mezctl listing as an admin at a terminal would, timing from the start until its first
 * row has arrived on stdout (text: the line after the header's dashes; JSON: the first document's
 * opening brace) and until it exits.
 */
function timeListing(svc: Service, args: string[]): Promise<Listing> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let firstMs = 0;
    let seen = "";
    const p = spawnTracked(process.execPath, [MEZCTL_JS, `--identity=${svc.identityPath}`, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const firstRow = args.includes("--format=json") ? /\n  \{/ : /\n-[- ]*\n./;
    p.stdout!.on("data", (d: Buffer) => {
      if (firstMs) return;
      seen += d.toString("utf8");
      if (firstRow.test(seen)) firstMs = performance.now() - t0;
      else if (seen.length > 100_000) seen = seen.slice(-1000);
    });
    let err = "";
    p.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    p.on("error", reject);
    p.on("exit", (code) => (code === 0 && firstMs ? resolve({ firstMs, allMs: performance.now() - t0 }) : reject(new Error(`mezctl ${args.join(" ")} exited ${code} (first row seen: ${firstMs > 0}): ${err.slice(-500)}`))));
  });
}

interface Row {
  key: string;
  value: string;
  revision: string;
  expires: number | null;
}

/** Adds, joins and renews one identity, so the service holds one of each record a fleet holds. */
async function liveOne(svc: Service, name: string): Promise<Renewer> {
  const r = await joinOnce(svc.addr, await addIdentity(svc, name));
  await renewOnce(svc.addr, r);
  return r;
}

function bulkInsert(dataDir: string, templateName: string, n: number): number {
  const t0 = performance.now();
  const db = new Database(join(dataDir, "mezite.db"));
  try {
    const get = db.prepare<[string], Row>("SELECT key, value, revision, expires FROM items WHERE key = ?");
    const scan = db.prepare<[string, string], Row>("SELECT key, value, revision, expires FROM items WHERE key >= ? AND key < ?");
    const identityRow = get.get(keys.identity(templateName))!;
    const identity = JSON.parse(identityRow.value) as IdentityRecord;
    const first = (prefix: string, ok: (r: Row) => boolean) => {
      const row = scan.all(prefix, `${prefix}\uffff`).find(ok);
      if (!row) throw new Error(`bench: no template record under ${prefix}`);
      return row;
    };
    const instanceRow = first(keys.instancesOf(identity.id), () => true);
    const tokenRow = first(keys.tokens, (r) => (JSON.parse(r.value) as TokenRecord).identityId === identity.id);
    const certRow = first(keys.certs, (r) => (JSON.parse(r.value) as IssuedCertRecord).identityId === identity.id);
    const instance = JSON.parse(instanceRow.value) as InstanceRecord;
    if (!instance.lastRequest) throw new Error("bench: the template instance was never renewed");
    const replyRow = get.get(keys.reply(instance.serial));
    if (!replyRow) throw new Error("bench: the template instance's kept reply is missing");
    const token = JSON.parse(tokenRow.value) as TokenRecord;
    const cert = JSON.parse(certRow.value) as IssuedCertRecord;
    const insert = db.prepare<[string, string, string, number | null]>("INSERT INTO items (key, value, revision, expires) VALUES (?, ?, ?, ?)");
    const putText = (key: string, value: string, expires: number | null) => insert.run(key, value, randomUUID(), expires);
    const put = (key: string, value: unknown, expires: number | null) => putText(key, JSON.stringify(value), expires);
    // Each kind inserted in key order: appends to the b-tree instead of random page splits (3x faster).
    const sorted = (make: () => string) => Array.from({ length: n }, make).sort();
    const ids = sorted(randomUUID);
    const tokenIds = sorted(() => randomBytes(16).toString("hex"));
    const serials = sorted(() => String(BigInt.asUintN(63, randomBytes(8).readBigUInt64BE()) || 1n));
    const instanceIds = ids.map(() => randomUUID());
    const name = (i: number) => `fleet-${String(i).padStart(6, "0")}`;
    db.transaction(() => {
      for (let i = 0; i < n; i++) put(keys.identity(name(i)), { ...identity, id: ids[i], name: name(i) }, null);
      for (let i = 0; i < n; i++) {
        put(keys.instance(ids[i]!, instanceIds[i]!), { ...instance, id: instanceIds[i], identityId: ids[i], identityName: name(i), serial: serials[i] }, null);
      }
      for (let i = 0; i < n; i++) put(keys.token(tokenIds[i]!), { ...token, id: tokenIds[i], identityId: ids[i], identityName: name(i) }, tokenRow.expires);
      for (let i = 0; i < n; i++) putText(keys.identityToken(ids[i]!, tokenIds[i]!), "", tokenRow.expires);
      for (const i of Array.from({ length: n }, (_, j) => j).sort((a, b) => (instanceIds[a]! < instanceIds[b]! ? -1 : 1))) {
        put(keys.cert(instanceIds[i]!, serials[i]!), { ...cert, serial: serials[i], identityId: ids[i], identityName: name(i), instanceId: instanceIds[i] }, certRow.expires);
      }
      // The same reply for every serial: its size is what counts here, not its content.
      for (let i = 0; i < n; i++) putText(keys.reply(serials[i]!), replyRow.value, replyRow.expires);
    })();
  } finally {
    db.close();
  }
  return (performance.now() - t0) / 1000;
}

export async function scale(o: ScaleOptions): Promise<ScaleFigures> {
  note(`starting two auth services; bulk-inserting ${o.identities.toLocaleString("en")} identities into one`);
  const webPorts = { empty: await freePort(), full: await freePort() };
  const empty = await startService({ webPort: webPorts.empty });
  let full = await startService({ webPort: webPorts.full });
  try {
    for (const svc of [empty, full]) await createSeedRole(svc);
    await liveOne(full, "template");
    await full.stop();
    const insertSeconds = bulkInsert(full.dataDir, "template", o.identities);
    full = await startService({ dataDir: full.dataDir, webPort: webPorts.full });
    const dbMiB = Number((await import("node:fs")).statSync(join(full.dataDir, "mezite.db")).size) / 2 ** 20;
    note(`inserted in ${insertSeconds.toFixed(1)} s (database ${dbMiB.toFixed(0)} MiB); timing join, renew, ls and status on both`);

    const both = { empty, full } as const;
    const renewers = { empty: await liveOne(empty, "live-0"), full: await liveOne(full, "live-0") };
    const lat = { join: { empty: [] as number[], full: [] as number[] }, renew: { empty: [] as number[], full: [] as number[] } };
    for (let i = 0; i < Math.max(o.joins, o.renewals); i++) {
      for (const side of ["empty", "full"] as const) {
        const svc = both[side];
        if (i < o.joins) {
          const token = await addIdentity(svc, `join-${i}`);
          const t0 = performance.now();
          await joinOnce(svc.addr, token);
          lat.join[side].push(performance.now() - t0);
        }
        if (i < o.renewals) {
          const t0 = performance.now();
          await renewOnce(svc.addr, renewers[side]);
          lat.renew[side].push(performance.now() - t0);
        }
      }
    }
    const cli = async (runs: number, ...args: string[]) => {
      const out = { empty: [] as number[], full: [] as number[] };
      for (let i = 0; i < runs; i++) for (const side of ["empty", "full"] as const) out[side].push((await mezctl(both[side], ...args)).ms);
      return { empty: median(out.empty), full: median(out.full) };
    };
    const listings = { empty: [] as Listing[], full: [] as Listing[], fullJson: [] as Listing[] };
    for (let i = 0; i < o.lsRuns; i++) {
      for (const side of ["empty", "full"] as const) listings[side].push(await timeListing(both[side], ["agent-identities", "ls"]));
      listings.fullJson.push(await timeListing(full, ["agent-identities", "ls", "--format=json"]));
    }
    const medianListing = (l: Listing[]) => ({ firstMs: median(l.map((x) => x.firstMs)), allMs: median(l.map((x) => x.allMs)) });
    const ls = { empty: medianListing(listings.empty), full: medianListing(listings.full), fullJson: medianListing(listings.fullJson) };
    const status = await cli(o.statusRuns, "agent-identities", "status", "live-0");
    // The dashboard: the first page of identities, a search with a page cursor deep into the
    // fleet, and one identity's page (on the empty side, the few it has).
    const web = {
      identities: { empty: [] as number[], full: [] as number[] },
      search: { empty: [] as number[], full: [] as number[] },
      identity: { empty: [] as number[], full: [] as number[] },
      overview: { empty: [] as number[], full: [] as number[] },
    };
    const sessions = { empty: await webSession(empty, webPorts.empty), full: await webSession(full, webPorts.full) };
    const mid = `fleet-${String(Math.floor(o.identities / 2)).padStart(6, "0")}`;
    const paths = {
      identities: { empty: "/identities", full: "/identities" },
      search: { empty: "/identities?q=join-&after=join-1", full: `/identities?q=fleet-0&after=${mid}` },
      identity: { empty: "/identities/live-0", full: `/identities/${mid}` },
      // Counts, the CAs' holders (a scan of every instance) and the renewals chart.
      overview: { empty: "/", full: "/" },
    };
    for (let i = 0; i < o.statusRuns; i++) {
      for (const page of ["identities", "search", "identity", "overview"] as const) {
        for (const side of ["empty", "full"] as const) web[page][side].push(await sessions[side](paths[page][side]));
      }
    }
    const med = (m: { empty: number[]; full: number[] }) => ({ empty: median(m.empty), full: median(m.full) });
    return {
      identities: o.identities,
      insertSeconds,
      dbMiB,
      join: { empty: median(lat.join.empty), full: median(lat.join.full) },
      renew: { empty: median(lat.renew.empty), full: median(lat.renew.full) },
      ls,
      status,
      web: { identities: med(web.identities), search: med(web.search), identity: med(web.identity), overview: med(web.overview) },
    };
  } finally {
    await Promise.all([empty.stop(), full.stop()]);
  }
}
