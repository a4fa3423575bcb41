/**
 * One suite, run unchanged against the memory, SQLite and PostgreSQL backends, then what only one
 * of them can show: SQLite's file mode, crash durability and cross-process races; PostgreSQL's
 * recovery from a server restart and its schema migration.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { compareKeys, prefixEnd, storageKey } from "../../src/backend/backend.js";
import type { Backend } from "../../src/backend/backend.js";
import { MemoryBackend } from "../../src/backend/memory.js";
import { openBackend } from "../../src/backend/open.js";
import { PostgresBackend } from "../../src/backend/postgres.js";
import { SqliteBackend } from "../../src/backend/sqlite.js";
import { isMeziteError } from "../../src/lib/errors.js";
import { Registry } from "../../src/lib/metrics.js";
import type { ErrorCode } from "../../src/lib/errors.js";
import { startPostgres } from "../harness/postgres.js";
import { missingComponent, PG_BIN_DIR } from "../harness/require.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const T0 = 1_700_000_000_000;

type TestBackend = Backend & { sweep(): Promise<number> };
/** One empty store; every open() is another handle on the same data (a second process or pool). */
interface Store {
  open(): Promise<TestBackend>;
}
type NewStore = (now: () => number) => Promise<Store>;

function rejectsWith(p: Promise<unknown>, code: ErrorCode) {
  return assert.rejects(p, (e) => isMeziteError(e, code));
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "mezite-backend-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function backendSuite(t: TestContext, newStore: NewStore): Promise<void> {
  /** A fresh store with a frozen clock, closed after the subtest. */
  async function setup(st: TestContext) {
    const clock = { now: T0, advance(ms: number) { this.now += ms; } };
    const store = await newStore(() => clock.now);
    const open = async () => {
      const b = await store.open();
      st.after(() => b.close());
      return b;
    };
    return { b: await open(), open, clock };
  }
  const keysOf = (items: { key: string }[]) => items.map((i) => i.key);

  await t.test("put, get and delete", async (st) => {
    const { b } = await setup(st);
    assert.equal(await b.get("/x/1"), undefined);
    const first = await b.put("/x/1", '{"a":1}');
    assert.deepEqual(first, { key: "/x/1", value: '{"a":1}', revision: first.revision });
    assert.deepEqual(await b.get("/x/1"), first);
    const second = await b.put("/x/1", '{"a":2}');
    assert.notEqual(second.revision, first.revision);
    assert.deepEqual(await b.get("/x/1"), second);
    assert.equal(await b.delete("/x/1"), true);
    assert.equal(await b.get("/x/1"), undefined);
    assert.equal(await b.delete("/x/1"), false);
  });

  await t.test("values round-trip exactly; bad keys and values are refused", async (st) => {
    const { b } = await setup(st);
    for (const value of ["", " ", '{"name":"zoë 😀 \\u0000"}', "x".repeat(1 << 20)]) {
      await b.put("/v", value);
      assert.equal((await b.get("/v"))?.value, value);
    }
    for (const key of ["", "no-slash", "/nul\0", "/lone\uD800", "/" + "k".repeat(1024)]) {
      await rejectsWith(b.put(key, "1"), "ERR_INTERNAL");
    }
    await rejectsWith(b.put("/v", "nul\0"), "ERR_INTERNAL");
    await rejectsWith(b.put("/v", "1", { expires: 1.5 }), "ERR_INTERNAL");
    await rejectsWith(b.range("/", { limit: -1 }), "ERR_INTERNAL");
  });

  await t.test("create refuses a live item", async (st) => {
    const { b } = await setup(st);
    const item = await b.create("/c", "first");
    await rejectsWith(b.create("/c", "second"), "ERR_ALREADY_EXISTS");
    assert.deepEqual(await b.get("/c"), item);
  });

  await t.test("compareAndSwap needs the current revision", async (st) => {
    const { b } = await setup(st);
    await rejectsWith(b.compareAndSwap("/cas", "none", "1"), "ERR_COMPARE_FAILED");
    const v1 = await b.put("/cas", "1");
    const v2 = await b.compareAndSwap("/cas", v1.revision, "2");
    assert.equal(v2.value, "2");
    assert.notEqual(v2.revision, v1.revision);
    await rejectsWith(b.compareAndSwap("/cas", v1.revision, "stale"), "ERR_COMPARE_FAILED");
    await rejectsWith(b.compareAndSwap("/cas", "garbage", "bad"), "ERR_COMPARE_FAILED");
    assert.deepEqual(await b.get("/cas"), v2);
    await b.delete("/cas");
    await rejectsWith(b.compareAndSwap("/cas", v2.revision, "gone"), "ERR_COMPARE_FAILED");
    assert.equal(await b.get("/cas"), undefined);
  });

  await t.test("write applies a batch of puts, creates and compare-and-swaps whole, or not at all", async (st) => {
    const { b, clock } = await setup(st);
    const base = await b.put("/w/cas", "0");
    await b.put("/w/taken", "mine");
    const snapshot = async () => (await b.range("/w/")).map((i) => [i.key, i.value, i.revision]);
    const before = await snapshot();
    await rejectsWith(b.write([{ op: "put", key: "/w/new", value: "n" }, { op: "cas", key: "/w/cas", revision: "stale", value: "1" }]), "ERR_COMPARE_FAILED");
    await rejectsWith(b.write([{ op: "cas", key: "/w/cas", revision: base.revision, value: "1" }, { op: "create", key: "/w/taken", value: "theirs" }]), "ERR_ALREADY_EXISTS");
    await rejectsWith(b.write([{ op: "put", key: "/w/new", value: "n" }, { op: "put", key: "no-slash", value: "x" }]), "ERR_INTERNAL");
    assert.deepEqual(await snapshot(), before, "a failed batch wrote nothing");

    const written = await b.write([
      { op: "put", key: "/w/new", value: "n", expires: T0 + 1000 },
      { op: "cas", key: "/w/cas", revision: base.revision, value: "1" },
      { op: "create", key: "/w/created", value: "c" },
    ]);
    assert.deepEqual(written.map((i) => [i.key, i.value]), [["/w/new", "n"], ["/w/cas", "1"], ["/w/created", "c"]]);
    for (const item of written) assert.deepEqual(await b.get(item.key), item);
    clock.advance(1000);
    assert.equal(await b.get("/w/new"), undefined, "expiry applies to batch writes too");
    await rejectsWith(b.write([{ op: "cas", key: "/w/cas", revision: base.revision, value: "2" }]), "ERR_COMPARE_FAILED");
  });

  await t.test("a batch of puts: each lands with its own expiry and any value; of two on one key the last wins", async (st) => {
    const { b, clock } = await setup(st);
    const odd = `{"a":"b,c"} \\ 'q' NULL {} ü\n`;
    const written = await b.write([
      { op: "put", key: "/p/1", value: "one", expires: T0 + 1000 },
      { op: "put", key: "/p/2", value: odd },
      { op: "put", key: "/p/1", value: "again", expires: T0 + 1000 },
      { op: "put", key: "/p/3", value: "NULL" },
    ]);
    assert.deepEqual(await b.range("/p/"), [written[2], written[1], written[3]]);
    clock.advance(1000);
    assert.deepEqual((await b.range("/p/")).map((i) => i.key), ["/p/2", "/p/3"]);
  });

  await t.test("deleteIf needs the current revision", async (st) => {
    const { b } = await setup(st);
    const v1 = await b.put("/d", "1");
    const v2 = await b.put("/d", "2");
    assert.equal(await b.deleteIf("/d", v1.revision), false);
    assert.deepEqual(await b.get("/d"), v2);
    assert.equal(await b.deleteIf("/d", v2.revision), true);
    assert.equal(await b.get("/d"), undefined);
    assert.equal(await b.deleteIf("/d", v2.revision), false);
  });

  await t.test("range and count stop at the prefix boundary", async (st) => {
    const { b } = await setup(st);
    const keys = ["/ab", "/a/2/x", "/a", "/b/1", "/a0", "/a/", "/a.", "/a/1", "/u/\uFFFD", "/u/😀", "/u/z", "/u/\u{10FFFF}"];
    for (const k of keys) await b.put(k, k);
    assert.deepEqual(keysOf(await b.range("/a/")), ["/a/", "/a/1", "/a/2/x"]);
    assert.deepEqual(keysOf(await b.range("/a")), ["/a", "/a.", "/a/", "/a/1", "/a/2/x", "/a0", "/ab"]);
    // Code point order: U+FFFD sorts before U+1F600 (JavaScript's `<` says the opposite).
    assert.deepEqual(keysOf(await b.range("/u/")), ["/u/z", "/u/\uFFFD", "/u/😀", "/u/\u{10FFFF}"]);
    assert.deepEqual(keysOf(await b.range("/u/\u{10FFFF}")), ["/u/\u{10FFFF}"]);
    assert.deepEqual(keysOf(await b.range("")), [...keys].sort(compareKeys));
    assert.deepEqual(await b.range("/zz/"), []);
    assert.deepEqual((await b.range("/a/1")).map((i) => i.value), ["/a/1"]);
    assert.equal(await b.count("/a/"), 3);
    assert.equal(await b.count("/a"), 7);
    assert.equal(await b.count(""), keys.length);
    assert.equal(await b.count("/zz/"), 0);
  });

  await t.test("limit and startAfter page through a prefix", async (st) => {
    const { b } = await setup(st);
    const want = Array.from({ length: 25 }, (_, i) => `/p/${String(i).padStart(2, "0")}`);
    for (const k of [...want].reverse()) await b.put(k, "v");
    await b.put("/o/x", "before");
    await b.put("/q/x", "after");
    const got: string[] = [];
    const pages: number[] = [];
    let startAfter: string | undefined;
    for (;;) {
      const page = await b.range("/p/", startAfter === undefined ? { limit: 10 } : { limit: 10, startAfter });
      if (page.length === 0) break;
      pages.push(page.length);
      got.push(...keysOf(page));
      startAfter = page.at(-1)?.key;
    }
    assert.deepEqual(pages, [10, 10, 5]);
    assert.deepEqual(got, want);
    assert.deepEqual(await b.range("/p/", { limit: 0 }), []);
    assert.deepEqual(keysOf(await b.range("/p/", { startAfter: "/a", limit: 2 })), ["/p/00", "/p/01"]);
    assert.deepEqual(keysOf(await b.range("/p/", { startAfter: "/p/105", limit: 2 })), ["/p/11", "/p/12"]);
    assert.deepEqual(await b.range("/p/", { startAfter: "/p/24" }), []);
    assert.deepEqual(await b.range("/p/", { startAfter: "/z" }), []);
  });

  await t.test("descending ranges page backwards through a prefix, newest key first", async (st) => {
    const { b, clock } = await setup(st);
    const want = Array.from({ length: 25 }, (_, i) => `/p/${String(i).padStart(2, "0")}`);
    for (const k of want) await b.put(k, "v");
    await b.put("/o/x", "before");
    await b.put("/q/x", "after");
    await b.put("/p/gone", "expired", { expires: T0 + 1 });
    clock.advance(1);
    const got: string[] = [];
    const pages: number[] = [];
    let startAfter: string | undefined;
    for (;;) {
      const page = await b.range("/p/", { limit: 10, descending: true, ...(startAfter === undefined ? {} : { startAfter }) });
      if (page.length === 0) break;
      pages.push(page.length);
      got.push(...keysOf(page));
      startAfter = page.at(-1)?.key;
    }
    assert.deepEqual(pages, [10, 10, 5]);
    assert.deepEqual(got, [...want].reverse());
    assert.deepEqual(keysOf(await b.range("/p/", { descending: true, startAfter: "/p/105", limit: 2 })), ["/p/10", "/p/09"]);
    assert.deepEqual(keysOf(await b.range("/p/", { descending: true, startAfter: "/z", limit: 2 })), ["/p/24", "/p/23"]);
    assert.deepEqual(await b.range("/p/", { descending: true, startAfter: "/p/00" }), []);
    assert.deepEqual(await b.range("/p/", { descending: true, startAfter: "/a" }), []);
    // No upper bound at all: the whole key space, from its last key.
    assert.deepEqual(keysOf(await b.range("", { descending: true, limit: 2 })), ["/q/x", "/p/24"]);
    await b.put("/u/\u{10FFFF}", "top");
    await b.put("/u/\uFFFD", "below");
    assert.deepEqual(keysOf(await b.range("/u/", { descending: true })), ["/u/\u{10FFFF}", "/u/\uFFFD"]);
  });

  await t.test("rangeFields picks top-level fields of JSON values, pages like range, skips expired items", async (st) => {
    const { b, clock } = await setup(st);
    const rec = (i: number) => ({ id: `id-${i}`, n: i, big: 1_796_554_364_364 + i, text: 'a "quoted" \\ \u00e9\u{1F600}', nested: { roles: ["x", `y${i}`] }, none: null, drop: "x".repeat(500) });
    for (let i = 0; i < 12; i++) await b.put(`/f/${String(i).padStart(2, "0")}`, JSON.stringify(rec(i)));
    await b.put("/e/x", JSON.stringify(rec(99)));
    await b.put("/f/zz", JSON.stringify(rec(98)), { expires: T0 + 1 });
    await b.put("/g/x", JSON.stringify({ only: 1 }));
    clock.advance(1);
    const fields = ["id", "n", "big", "text", "nested", "none", "missing"];
    const all = await b.rangeFields("/f/", fields);
    assert.deepEqual(keysOf(all), Array.from({ length: 12 }, (_, i) => `/f/${String(i).padStart(2, "0")}`));
    const r = rec(7);
    assert.deepEqual(all[7]!.fields, [r.id, r.n, r.big, r.text, r.nested, null, null]);
    // Pages as range() does: limit, then startAfter the last key, and a startAfter before the prefix.
    const first = await b.rangeFields("/f/", ["n"], { limit: 5 });
    assert.deepEqual(first.map((x) => x.fields), [[0], [1], [2], [3], [4]]);
    assert.deepEqual((await b.rangeFields("/f/", ["n"], { limit: 5, startAfter: first.at(-1)!.key })).map((x) => x.fields[0]), [5, 6, 7, 8, 9]);
    assert.deepEqual((await b.rangeFields("/f/", ["n", "id"], { startAfter: "/a", limit: 1 })).map((x) => x.fields), [[0, "id-0"]]);
    assert.deepEqual(await b.rangeFields("/f/", ["n"], { startAfter: "/f/11" }), []);
    assert.deepEqual((await b.rangeFields("", ["only"])).map((x) => [x.key, x.fields[0]]).slice(-1), [["/g/x", 1]]);
    for (const bad of [[], ["a-b"], ["x'); DROP TABLE items; --"], ["$.id"]]) await rejectsWith(b.rangeFields("/f/", bad), "ERR_INTERNAL");
  });

  await t.test("expired items are invisible and count as absent", async (st) => {
    const { b, clock } = await setup(st);
    const item = await b.put("/e/1", "temp", { expires: T0 + 1000 });
    assert.deepEqual(await b.get("/e/1"), { key: "/e/1", value: "temp", revision: item.revision, expires: T0 + 1000 });
    await b.put("/e/keep", "forever");
    clock.advance(999);
    assert.equal((await b.get("/e/1"))?.value, "temp");
    clock.advance(1); // expires is the first instant it is gone
    assert.equal(await b.get("/e/1"), undefined);
    assert.deepEqual(keysOf(await b.range("/e/")), ["/e/keep"]);
    assert.equal(await b.count("/e/"), 1);

    // Every operation treats an expired item as absent.
    const doomed = await b.put("/e/2", "x", { expires: clock.now + 10 });
    clock.advance(10);
    await rejectsWith(b.compareAndSwap("/e/2", doomed.revision, "y"), "ERR_COMPARE_FAILED");
    assert.equal(await b.deleteIf("/e/2", doomed.revision), false);
    assert.equal(await b.delete("/e/2"), false);
    const reborn = await b.create("/e/2", "new");
    assert.deepEqual(await b.get("/e/2"), reborn);
    await b.put("/e/past", "x", { expires: clock.now - 1 });
    assert.equal(await b.get("/e/past"), undefined);

    // A write replaces the expiry: without one, the item stays.
    await b.put("/e/3", "x", { expires: clock.now + 5 });
    await b.put("/e/3", "y");
    clock.advance(5);
    assert.equal((await b.get("/e/3"))?.value, "y");

    // The sweep deletes what nobody read since it expired.
    for (const k of ["/s/1", "/s/2", "/s/3"]) await b.put(k, "x", { expires: clock.now + 1 });
    clock.advance(1);
    assert.equal(await b.sweep(), 3);
    assert.equal(await b.sweep(), 0);
    assert.equal((await b.get("/e/keep"))?.value, "forever");
  });

  await t.test("50 concurrent creates of one key: exactly one wins", async (st) => {
    const { b } = await setup(st);
    const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => b.create("/race/create", `writer-${i}`)));
    const won = results.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 1);
    for (const r of results) if (r.status === "rejected") assert.ok(isMeziteError(r.reason, "ERR_ALREADY_EXISTS"), String(r.reason));
    assert.deepEqual(await b.get("/race/create"), (won[0] as PromiseFulfilledResult<unknown>).value);
  });

  await t.test("50 concurrent compare-and-swaps from one revision: exactly one wins", async (st) => {
    const { b } = await setup(st);
    const base = await b.put("/race/cas", "0");
    const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => b.compareAndSwap("/race/cas", base.revision, `writer-${i}`)));
    const won = results.filter((r) => r.status === "fulfilled");
    assert.equal(won.length, 1);
    for (const r of results) if (r.status === "rejected") assert.ok(isMeziteError(r.reason, "ERR_COMPARE_FAILED"), String(r.reason));
    assert.deepEqual(await b.get("/race/cas"), (won[0] as PromiseFulfilledResult<unknown>).value);
  });

  await t.test("50 concurrent batches over two handles, each a put and a CAS from one revision: one lands whole", async (st) => {
    const { b, open } = await setup(st);
    const other = await open();
    const base = await b.put("/race/batch", "0");
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        (i % 2 ? other : b).write([
          { op: "put", key: `/race/batch-side/${String(i).padStart(2, "0")}`, value: "side" },
          { op: "cas", key: "/race/batch", revision: base.revision, value: `writer-${i}` },
        ]),
      ),
    );
    const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
    assert.equal(won.length, 1);
    for (const r of results) if (r.status === "rejected") assert.ok(isMeziteError(r.reason, "ERR_COMPARE_FAILED"), String(r.reason));
    assert.equal((await b.get("/race/batch"))?.value, `writer-${won[0]}`);
    assert.deepEqual(keysOf(await b.range("/race/batch-side/")), [`/race/batch-side/${String(won[0]).padStart(2, "0")}`]);
  });

  await t.test("two handles on one store: CAS has one winner and loses no increment", async (st) => {
    const { b, open } = await setup(st);
    const other = await open();
    const base = await b.put("/race/two", "start");
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? other : b).compareAndSwap("/race/two", base.revision, `writer-${i}`)),
    );
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);

    // Lost-update check: 8 workers over both handles increment one counter 25 times each.
    await b.put("/race/counter", "0");
    const increment = async (h: Backend) => {
      for (let done = 0; done < 25; ) {
        const cur = await h.get("/race/counter");
        assert.ok(cur);
        try {
          await h.compareAndSwap("/race/counter", cur.revision, String(Number(cur.value) + 1));
          done++;
        } catch (e) {
          if (!isMeziteError(e, "ERR_COMPARE_FAILED")) throw e;
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, i) => increment(i % 2 ? other : b)));
    assert.equal((await other.get("/race/counter"))?.value, "200");
  });

  await t.test("a closed backend refuses calls", async (st) => {
    const { b } = await setup(st);
    await b.close();
    await rejectsWith(b.get("/x"), "ERR_STORAGE");
    await rejectsWith(b.put("/x", "1"), "ERR_STORAGE");
  });

  await t.test("100,000 items: range timing (printed, not asserted)", async (st) => {
    const { b } = await setup(st);
    const n = 100_000;
    let t0 = performance.now();
    for (let i = 0; i < n; i += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, j) => b.put(`/big/${String(i + j).padStart(6, "0")}`, '{"n":1}')));
    }
    for (let i = 0; i < 10; i++) await b.put(`/big0/${i}`, "small");
    const seed = performance.now() - t0;
    t0 = performance.now();
    const all = await b.range("/big/");
    const full = performance.now() - t0;
    assert.equal(all.length, n);
    assert.equal(all[n - 1]?.key, "/big/099999");
    t0 = performance.now();
    assert.equal(await b.count("/big/"), n);
    const count = performance.now() - t0;
    t0 = performance.now();
    assert.equal((await b.range("/big0/")).length, 10);
    assert.equal((await b.range("/big/", { startAfter: "/big/050000", limit: 100 })).length, 100);
    const small = performance.now() - t0;
    st.diagnostic(`${n} items: seed ${(seed / 1000).toFixed(1)} s, range all ${full.toFixed(0)} ms, count ${count.toFixed(0)} ms, 10-item prefix + 100-item page ${small.toFixed(1)} ms`);
  });
}

test("key helpers", () => {
  assert.equal(storageKey("identities", "github-deploy"), "/identities/github-deploy");
  assert.throws(() => storageKey("identities", "a/b"), (e) => isMeziteError(e, "ERR_INTERNAL"));
  assert.throws(() => storageKey("identities", ""), (e) => isMeziteError(e, "ERR_INTERNAL"));
  assert.equal(prefixEnd("/a/"), "/a0");
  assert.equal(prefixEnd(""), undefined);
  assert.equal(prefixEnd("\u{10FFFF}"), undefined);
  assert.equal(prefixEnd("/a\u{10FFFF}"), "/b");
  assert.equal(prefixEnd("/\uD7FF"), "/\uE000");
  assert.equal(prefixEnd("/\uFFFF"), "/\u{10000}");
  assert.ok(compareKeys("/\uFFFD", "/😀") < 0 && compareKeys("/😀", "/\uFFFD") > 0);
  assert.ok(compareKeys("/a", "/a/") < 0 && compareKeys("/a", "/a") === 0);
});

test("memory backend", (t) =>
  backendSuite(t, async (now) => {
    const b = new MemoryBackend({ now, sweepIntervalMs: 0 });
    return { open: async () => b }; // one process: every handle is the same map
  }));

test("sqlite backend", async (t) => {
  const dir = tempDir(t);
  let n = 0;
  await backendSuite(t, async (now) => {
    const file = join(dir, `store-${++n}.db`);
    return { open: async () => new SqliteBackend(file, { now, sweepIntervalMs: 0 }) };
  });
});

/** Runs a TypeScript snippet in a child node process (tsx) and returns it with piped stdio. */
function spawnChild(dir: string, name: string, source: string, args: string[]): ChildProcessWithoutNullStreams {
  const script = join(dir, `${name}.mts`);
  writeFileSync(script, source);
  return spawn(process.execPath, ["--import", "tsx", script, ...args], { cwd: ROOT });
}

function lines(child: ChildProcessWithoutNullStreams, onLine: (line: string) => void): Promise<number | null> {
  let buf = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((res, rej) => {
    child.on("error", rej);
    child.on("exit", (code, signal) => (code === 0 || signal === "SIGKILL" ? res(code) : rej(new Error(`child exited ${code ?? signal}: ${stderr}`))));
  });
}

const SQLITE_MODULE = JSON.stringify(join(ROOT, "src/backend/sqlite.ts"));

test("sqlite: the database file is created 0600 through openBackend", async (t) => {
  const dir = join(tempDir(t), "data");
  const b = await openBackend("sqlite", dir, { sweepIntervalMs: 0 });
  t.after(() => b.close());
  await b.put("/x", "1");
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, "mezite.db")).mode & 0o777, 0o600);
  assert.equal(statSync(join(dir, "mezite.db-wal")).mode & 0o777, 0o600);
});

test("sqlite: the database is never opened through a symlink, nor its -wal/-shm companions", async (t) => {
  const dir = join(tempDir(t), "data");
  mkdirSync(dir, { mode: 0o700 });
  const elsewhere = join(tempDir(t), "elsewhere.db");
  const db = join(dir, "mezite.db");
  // A link to a file that does not exist yet: following it would create the database there.
  symlinkSync(elsewhere, db);
  await assert.rejects(openBackend("sqlite", dir, { sweepIntervalMs: 0 }), (e) => isMeziteError(e, "ERR_SYMLINK") && /mezite\.db is a symlink/.test(e.message));
  assert.equal(existsSync(elsewhere), false, "nothing was created through the link");
  // A link to an existing file: it is neither opened nor changed.
  writeFileSync(elsewhere, "not yours");
  await assert.rejects(openBackend("sqlite", dir, { sweepIntervalMs: 0 }), (e) => isMeziteError(e, "ERR_SYMLINK"));
  assert.equal(readFileSync(elsewhere, "utf8"), "not yours");
  unlinkSync(db);
  for (const companion of ["-wal", "-shm"]) {
    symlinkSync(join(tempDir(t), `elsewhere${companion}`), `${db}${companion}`);
    await assert.rejects(openBackend("sqlite", dir, { sweepIntervalMs: 0 }), (e) => isMeziteError(e, "ERR_SYMLINK"), companion);
    unlinkSync(`${db}${companion}`);
  }
  const b = await openBackend("sqlite", dir, { sweepIntervalMs: 0 });
  await b.put("/x", "1");
  await b.close();
});

test("sqlite: a write that resolved survives kill -9 of the process", async (t) => {
  const dir = tempDir(t);
  const file = join(dir, "mezite.db");
  const child = spawnChild(dir, "writer", `
    import { writeSync } from "node:fs";
    import { SqliteBackend } from ${SQLITE_MODULE};
    const b = new SqliteBackend(process.argv[2], { sweepIntervalMs: 0 });
    for (let i = 0; ; i++) {
      await b.put("/d/" + String(i).padStart(6, "0"), JSON.stringify({ i }));
      writeSync(1, i + "\\n"); // synchronous: the parent never hears of a write before it resolved
    }
  `, [file]);
  let acked = -1;
  const exited = lines(child, (l) => {
    acked = Number(l);
    if (acked === 300) child.kill("SIGKILL");
  });
  await exited;
  assert.ok(acked >= 300);
  const b = new SqliteBackend(file, { sweepIntervalMs: 0 });
  t.after(() => b.close());
  const items = await b.range("/d/");
  assert.ok(items.length >= acked + 1, `acknowledged ${acked + 1} writes, found ${items.length}`);
  assert.deepEqual(await b.get("/d/" + String(acked).padStart(6, "0")).then((i) => i?.value), JSON.stringify({ i: acked }));
});

test("sqlite: two processes incrementing by CAS lose no update", async (t) => {
  const dir = tempDir(t);
  const file = join(dir, "mezite.db");
  const setup = new SqliteBackend(file, { sweepIntervalMs: 0 });
  await setup.put("/counter", "0");
  await setup.close();
  const source = `
    import { writeSync } from "node:fs";
    import { SqliteBackend } from ${SQLITE_MODULE};
    const b = new SqliteBackend(process.argv[2], { sweepIntervalMs: 0 });
    writeSync(1, "ready\\n");
    process.stdin.once("data", async () => {
      let conflicts = 0;
      for (let done = 0; done < 300; ) {
        const cur = await b.get("/counter");
        try {
          await b.compareAndSwap("/counter", cur.revision, String(Number(cur.value) + 1));
          done++;
        } catch (e) {
          if (e.code !== "ERR_COMPARE_FAILED") throw e;
          conflicts++;
        }
      }
      writeSync(1, "conflicts " + conflicts + "\\n");
      await b.close();
      process.exit(0);
    });
  `;
  const children = [0, 1].map((i) => spawnChild(dir, `incr${i}`, source, [file]));
  let ready = 0;
  const notes: string[] = [];
  const done = children.map((c) =>
    lines(c, (l) => {
      if (l !== "ready") notes.push(l);
      else if (++ready === children.length) for (const k of children) k.stdin.write("go\n");
    }),
  );
  await Promise.all(done);
  const b = new SqliteBackend(file, { sweepIntervalMs: 0 });
  t.after(() => b.close());
  assert.equal((await b.get("/counter"))?.value, "600");
  t.diagnostic(`two processes: ${notes.join(", ")}`);
});

test("sqlite: refuses a newer schema and a file that is not a database", async (t) => {
  const dir = tempDir(t);
  const newer = join(dir, "newer.db");
  await new SqliteBackend(newer).close();
  const { default: Database } = await import("better-sqlite3");
  const raw = new Database(newer);
  raw.pragma("user_version = 99");
  raw.close();
  assert.throws(() => new SqliteBackend(newer), (e) => isMeziteError(e, "ERR_STORAGE") && /schema version 99/.test(e.message));
  const junk = join(dir, "junk.db");
  writeFileSync(junk, "this is not sqlite ".repeat(100));
  assert.throws(() => new SqliteBackend(junk), (e) => isMeziteError(e, "ERR_STATE_CORRUPT"));
});

test("openBackend refuses an unknown spec without echoing it", async () => {
  await assert.rejects(openBackend("mysql://root:hunter2@db/x", "/nonexistent"), (e) => isMeziteError(e, "ERR_CONFIG") && !e.message.includes("hunter2"));
  const m = await openBackend("memory", "/nonexistent");
  assert.ok(m instanceof MemoryBackend);
  await m.close();
});

/** One statement on a short-lived connection (a long-lived one would die in the restart test). */
async function sql(url: string, text: string): Promise<unknown[]> {
  const c = new pg.Client(url);
  await c.connect();
  try {
    return (await c.query(text)).rows;
  } finally {
    await c.end();
  }
}

test("postgres backend", async (t) => {
  if (PG_BIN_DIR === undefined) return missingComponent(t, "PostgreSQL server", "apt-get install postgresql");
  const server = await startPostgres();
  t.after(() => server.stop());
  let n = 0;
  /** A fresh database on the private server: postgresql://...:PORT/NAME. */
  const newDatabase = async () => {
    const name = `mezite_${++n}`;
    await sql(server.url, `CREATE DATABASE ${name}`);
    return server.url.replace(/\/postgres$/, `/${name}`);
  };

  await t.test("shared suite", (st) =>
    backendSuite(st, async (now) => {
      const url = await newDatabase();
      return { open: () => PostgresBackend.open(url, { now, sweepIntervalMs: 0 }) };
    }));

  await t.test("openBackend takes postgres:// and postgresql:// URLs", async () => {
    const url = await newDatabase();
    for (const spec of [url, url.replace(/^postgresql:/, "postgres:")]) {
      const b = await openBackend(spec, "/nonexistent", { sweepIntervalMs: 0 });
      await b.put("/x", spec);
      assert.equal((await b.get("/x"))?.value, spec);
      await b.close();
    }
  });

  await t.test("schema: concurrent first starts migrate once; a newer schema is refused", async () => {
    const url = await newDatabase();
    const opened = await Promise.all(Array.from({ length: 4 }, () => PostgresBackend.open(url, { sweepIntervalMs: 0, poolSize: 2 })));
    await Promise.all(opened.map((b) => b.close()));
    assert.deepEqual(await sql(url, "SELECT version FROM schema_version"), [{ version: 1 }]);
    await sql(url, "INSERT INTO schema_version (version) VALUES (7)");
    await assert.rejects(PostgresBackend.open(url), (e) => isMeziteError(e, "ERR_STORAGE") && /schema version 7/.test(e.message));
  });

  await t.test("the pool fails cleanly while the server is down and recovers after", async () => {
    const url = (await newDatabase()).replace("postgres@", "postgres:s3cret-pw@"); // trust auth ignores it
    const b = await PostgresBackend.open(url, { sweepIntervalMs: 0 });
    try {
      const item = await b.put("/survives", "restart");
      await Promise.all(Array.from({ length: 20 }, () => b.get("/survives"))); // several idle connections
      await server.restart(async () => {
        for (const call of [b.get("/survives"), b.put("/y", "1"), b.compareAndSwap("/survives", item.revision, "x"), b.range("/")]) {
          await assert.rejects(call, (e) => {
            assert.ok(isMeziteError(e, "ERR_UNREACHABLE"), String(e));
            assert.ok(!e.message.includes("s3cret-pw") && !e.message.includes("\n"), e.message);
            return true;
          });
        }
      });
      assert.deepEqual(await b.get("/survives"), item);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => b.put(`/after/${i}`, "ok")));
      assert.equal(results.length, 20);
      assert.equal(await b.count("/after/"), 20);
    } finally {
      await b.close();
    }
  });

  await t.test("the queries counter counts every statement sent, by name, transactions' own included; a batch's consecutive puts are one", async () => {
    const queries = new Registry().counter("q", "");
    let clock = T0;
    const b = await PostgresBackend.open(await newDatabase(), { now: () => clock, sweepIntervalMs: 0, queries });
    try {
      const counts = () => Object.fromEntries(queries.series.state().map((s) => [s.labels["statement"], s.values[0]]));
      const item = await b.put("/a", "1");
      await b.put("/ttl", "1", { expires: T0 + 10 });
      assert.deepEqual(counts(), { put: 2 });
      await b.get("/a");
      clock += 10;
      assert.equal(await b.get("/ttl"), undefined); // found expired: purged on the spot
      await b.write([{ op: "cas", key: "/a", revision: item.revision, value: "2" }, { op: "put", key: "/b", value: "1" }]);
      await rejectsWith(b.write([{ op: "put", key: "/c", value: "1" }, { op: "create", key: "/b", value: "2" }]), "ERR_ALREADY_EXISTS");
      await b.range("/");
      assert.deepEqual(counts(), { put: 4, get: 2, purge: 1, BEGIN: 2, cas: 1, COMMIT: 1, create: 1, ROLLBACK: 1, range: 1 });
      await b.write([{ op: "cas", key: "/a", revision: (await b.get("/a"))!.revision, value: "3" }, ...["/x", "/y", "/z"].map((key) => ({ op: "put" as const, key, value: "1" }))]);
      assert.deepEqual(counts(), { put: 4, get: 3, purge: 1, BEGIN: 3, cas: 2, COMMIT: 2, create: 1, ROLLBACK: 1, range: 1, putMany: 1 });
    } finally {
      await b.close();
    }
  });

  await t.test("opening an unreachable server fails with ERR_UNREACHABLE", async () => {
    const dead = server.url.replace(/:\d+\//, ":1/");
    await assert.rejects(PostgresBackend.open(dead), (e) => isMeziteError(e, "ERR_UNREACHABLE"));
  });
});
