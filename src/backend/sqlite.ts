/**
 * Embedded SQLite backend: one database file (plus SQLite's -wal/-shm companions), the default for
 * a single auth server. better-sqlite3 is synchronous: each call runs one statement to completion,
 * so every conditional write is a single atomic statement even across processes sharing the file.
 *
 * Durability: WAL with synchronous=FULL. NORMAL would already survive `kill -9` of the process
 * (a committed transaction is in the WAL file, i.e. in the OS page cache), but on power loss it may
 * roll back the last commits — a token use or generation increment whose certificate was already
 * handed out. That would re-enable a one-time token or lock an honest daemon, so each commit
 * fsyncs the WAL (~0.1 ms here; writes are joins and renewals, not a hot path).
 */
import { closeSync, constants, fstatSync, lstatSync, openSync } from "node:fs";
import Database from "better-sqlite3";
import { MeziteError } from "../lib/errors.js";
import { assertNotSymlink } from "../lib/files.js";
import {
  alreadyExists, checkExpires, checkFields, compareKeys, checkKey, checkPrefix, checkRange, checkValue, closedError, compareFailed, descendingBound,
  makeItem, newRevision, opItem, prefixEnd, resolveBackendOptions, startSweeper,
} from "./backend.js";
import type { Backend, BackendOptions, FieldRangeOptions, FieldsRow, Item, PutOptions, RangeOptions, WriteOp } from "./backend.js";

const SCHEMA_VERSION = 1;
const LIVE = "(expires IS NULL OR expires > ?)";
const ROW = "key, value, revision, expires";

interface Row {
  key: string;
  value: string;
  revision: string;
  expires: number | null;
}

/** Prepared once per connection. Range/count come in two shapes: with and without an upper bound. */
function prepare(db: Database.Database) {
  return {
    get: db.prepare<[string], Row>(`SELECT ${ROW} FROM items WHERE key = ?`),
    purge: db.prepare<[string, number]>("DELETE FROM items WHERE key = ? AND expires <= ?"),
    put: db.prepare<[string, string, string, number | null]>(
      `INSERT INTO items (${ROW}) VALUES (?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, expires = excluded.expires`,
    ),
    // Inserts, or replaces an expired row; a live row makes it a no-op (changes = 0).
    create: db.prepare<[string, string, string, number | null, number]>(
      `INSERT INTO items (${ROW}) VALUES (?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, expires = excluded.expires
       WHERE items.expires <= ?`,
    ),
    cas: db.prepare<[string, string, number | null, string, string, number]>(
      `UPDATE items SET value = ?, revision = ?, expires = ? WHERE key = ? AND revision = ? AND ${LIVE}`,
    ),
    // Purges an expired row too, but reports only whether a live one was deleted.
    delete: db.prepare<[string, number], { live: number }>(`DELETE FROM items WHERE key = ? RETURNING ${LIVE} AS live`),
    deleteIf: db.prepare<[string, string, number]>(`DELETE FROM items WHERE key = ? AND revision = ? AND ${LIVE}`),
    // SQLite seeks the index with one lower bound only: range() passes the tighter of prefix and
    // startAfter, or paging through a prefix would rescan every earlier page.
    rangeFrom: db.prepare<[string, string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key >= ? AND key < ? AND ${LIVE} ORDER BY key LIMIT ?`),
    rangeAfter: db.prepare<[string, string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key > ? AND key < ? AND ${LIVE} ORDER BY key LIMIT ?`),
    rangeFromAll: db.prepare<[string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key >= ? AND ${LIVE} ORDER BY key LIMIT ?`),
    rangeAfterAll: db.prepare<[string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key > ? AND ${LIVE} ORDER BY key LIMIT ?`),
    // Descending: the index is read backwards from the tighter upper bound (descendingBound).
    rangeDown: db.prepare<[string, string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key >= ? AND key < ? AND ${LIVE} ORDER BY key DESC LIMIT ?`),
    rangeDownAll: db.prepare<[string, number, number], Row>(`SELECT ${ROW} FROM items WHERE key >= ? AND ${LIVE} ORDER BY key DESC LIMIT ?`),
    count: db.prepare<[string, string, number], { n: number }>(`SELECT count(*) AS n FROM items WHERE key >= ? AND key < ? AND ${LIVE}`),
    countAll: db.prepare<[string, number], { n: number }>(`SELECT count(*) AS n FROM items WHERE key >= ? AND ${LIVE}`),
    sweep: db.prepare<[number]>("DELETE FROM items WHERE expires <= ?"),
  };
}

export interface SqliteOptions extends BackendOptions {
  /** How long a statement waits for another process's lock before failing. Default 5000 ms. */
  busyTimeoutMs?: number;
}

export class SqliteBackend implements Backend {
  readonly #db: Database.Database;
  readonly #path: string;
  readonly #stmt: ReturnType<typeof prepare>;
  /** rangeFields' statements, by field list and bounds. */
  readonly #fieldsStatements = new Map<string, Database.Statement<unknown[], { key: string; fields: string }>>();
  readonly #now: () => number;
  readonly #stopSweeper: () => void;
  #closed = false;

  /** Opens (creating it 0600 if absent) and migrates the database file at `path`. */
  constructor(path: string, options: SqliteOptions = {}) {
    const o = resolveBackendOptions(options);
    const busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    this.#path = path;
    this.#now = o.now;
    let db: Database.Database | undefined;
    try {
      db = openNoFollow(path);
      db.pragma(`busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = FULL");
      migrate(db, path);
      this.#stmt = prepare(db);
      this.#db = db;
    } catch (e) {
      db?.close();
      throw sqliteError(e, path);
    }
    this.#stopSweeper = startSweeper(o.sweepIntervalMs, () => this.sweep());
  }

  async get(key: string): Promise<Item | undefined> {
    checkKey(key);
    return this.#run(() => {
      const row = this.#stmt.get.get(key);
      if (row === undefined) return undefined;
      if (row.expires !== null && row.expires <= this.#now()) {
        this.#stmt.purge.run(key, this.#now()); // lazy purge; conditional, in case it was just rewritten
        return undefined;
      }
      return toItem(row);
    });
  }

  async put(key: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    return this.#run(() => {
      this.#stmt.put.run(item.key, item.value, item.revision, item.expires ?? null);
      return item;
    });
  }

  async create(key: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    return this.#run(() => {
      const { changes } = this.#stmt.create.run(item.key, item.value, item.revision, item.expires ?? null, this.#now());
      if (changes === 0) throw alreadyExists(key);
      return item;
    });
  }

  async compareAndSwap(key: string, expectedRevision: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    return this.#run(() => {
      const { changes } = this.#stmt.cas.run(item.value, item.revision, item.expires ?? null, key, expectedRevision, this.#now());
      if (changes === 0) throw compareFailed(key);
      return item;
    });
  }

  async write(ops: WriteOp[]): Promise<Item[]> {
    const items = ops.map(opItem);
    return this.#run(() =>
      // better-sqlite3 rolls the transaction back when the function throws.
      this.#db.transaction(() =>
        ops.map((o, i) => {
          const it = items[i]!;
          const expires = it.expires ?? null;
          if (o.op === "put") this.#stmt.put.run(it.key, it.value, it.revision, expires);
          else if (o.op === "create" && this.#stmt.create.run(it.key, it.value, it.revision, expires, this.#now()).changes === 0) throw alreadyExists(o.key);
          else if (o.op === "cas" && this.#stmt.cas.run(it.value, it.revision, expires, it.key, o.revision, this.#now()).changes === 0) throw compareFailed(o.key);
          return it;
        }),
      )(),
    );
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    return this.#run(() => this.#stmt.delete.get(key, this.#now())?.live === 1);
  }

  async deleteIf(key: string, expectedRevision: string): Promise<boolean> {
    checkKey(key);
    return this.#run(() => this.#stmt.deleteIf.run(key, expectedRevision, this.#now()).changes === 1);
  }

  async range(prefix: string, opts?: RangeOptions): Promise<Item[]> {
    checkPrefix(prefix);
    const { limit, startAfter, descending } = checkRange(opts);
    const end = prefixEnd(prefix);
    return this.#run(() => {
      const now = this.#now();
      const lim = limit ?? -1; // negative: no limit
      if (descending) {
        const bound = descendingBound(prefix, startAfter);
        return (bound === undefined ? this.#stmt.rangeDownAll.all(prefix, now, lim) : this.#stmt.rangeDown.all(prefix, bound, now, lim)).map(toItem);
      }
      const after = startAfter !== undefined && compareKeys(startAfter, prefix) >= 0 ? startAfter : undefined;
      let rows: Row[];
      if (end === undefined) rows = after === undefined ? this.#stmt.rangeFromAll.all(prefix, now, lim) : this.#stmt.rangeAfterAll.all(after, now, lim);
      else rows = after === undefined ? this.#stmt.rangeFrom.all(prefix, end, now, lim) : this.#stmt.rangeAfter.all(after, end, now, lim);
      return rows.map(toItem);
    });
  }

  async rangeFields(prefix: string, fields: readonly string[], opts?: FieldRangeOptions): Promise<FieldsRow[]> {
    checkPrefix(prefix);
    checkFields(fields);
    const { limit, startAfter } = checkRange(opts);
    const end = prefixEnd(prefix);
    const after = startAfter !== undefined && compareKeys(startAfter, prefix) >= 0 ? startAfter : undefined;
    return this.#run(() => {
      const stmt = this.#fieldsStatement(fields, end !== undefined, after !== undefined);
      const bounds = [after ?? prefix, ...(end === undefined ? [] : [end])];
      return stmt.all(...bounds, this.#now(), limit ?? -1).map((r) => ({ key: r.key, fields: JSON.parse(r.fields) as unknown[] }));
    });
  }

  /**
   * One JSON array of the fields per row. json_extract with several paths parses each value once
   * (with one path it returns the bare value, so one field goes through json_array instead).
   */
  #fieldsStatement(fields: readonly string[], bounded: boolean, after: boolean) {
    const name = `${fields.join(",")}|${bounded}|${after}`;
    let stmt = this.#fieldsStatements.get(name);
    if (!stmt) {
      const paths = fields.map((f) => `'$."${f}"'`);
      const picked = paths.length === 1 ? `json_array(value -> ${paths[0]})` : `json_extract(value, ${paths.join(", ")})`;
      const where = `key ${after ? ">" : ">="} ?${bounded ? " AND key < ?" : ""} AND ${LIVE}`;
      stmt = this.#db.prepare(`SELECT key, ${picked} AS fields FROM items WHERE ${where} ORDER BY key LIMIT ?`);
      this.#fieldsStatements.set(name, stmt);
    }
    return stmt;
  }

  async count(prefix: string): Promise<number> {
    checkPrefix(prefix);
    const end = prefixEnd(prefix);
    return this.#run(() => {
      const now = this.#now();
      const row = end === undefined ? this.#stmt.countAll.get(prefix, now) : this.#stmt.count.get(prefix, end, now);
      return row?.n ?? 0;
    });
  }

  /** Deletes expired rows now; returns how many. */
  async sweep(): Promise<number> {
    return this.#run(() => this.#stmt.sweep.run(this.#now()).changes);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopSweeper();
    this.#db.close();
  }

  #run<T>(fn: () => T): T {
    if (this.#closed) throw closedError();
    try {
      return fn();
    } catch (e) {
      throw sqliteError(e, this.#path);
    }
  }
}

function toItem(r: Row): Item {
  return makeItem(r.key, r.value, r.revision, r.expires);
}

/** Creates the schema, or upgrades it; the version lives in SQLite's own user_version. */
function migrate(db: Database.Database, path: string): void {
  db.transaction(() => {
    const version = db.pragma("user_version", { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new MeziteError("ERR_STORAGE", `${path} has schema version ${version}, newer than this Mezite understands (${SCHEMA_VERSION}); upgrade Mezite`);
    }
    if (version < 1) {
      // WITHOUT ROWID: rows live in the primary-key b-tree, so prefix scans read them in key order.
      db.exec(`
        CREATE TABLE items (key TEXT PRIMARY KEY, value TEXT NOT NULL, revision TEXT NOT NULL, expires INTEGER) WITHOUT ROWID;
        CREATE INDEX items_expires ON items (expires) WHERE expires IS NOT NULL;
      `);
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}

/**
 * SQLite follows a symlink at the database path (and puts -wal/-shm beside its target), so a link
 * planted there would put the cluster's state, or its writes, wherever it points. The file is
 * created 0600 by us (SQLite gives -wal/-shm the same mode) with O_NOFOLLOW, its companions must
 * not be links either, and once SQLite has opened the path it must still be the file we opened.
 */
function openNoFollow(path: string): Database.Database {
  for (const companion of ["-wal", "-shm", "-journal"]) assertNotSymlink(`${path}${companion}`);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ELOOP") throw new MeziteError("ERR_SYMLINK", `${path} is a symlink: refusing to open the database through it`);
    throw e;
  }
  try {
    const ours = fstatSync(fd);
    if (!ours.isFile()) throw new MeziteError("ERR_STORAGE", `${path} is not a regular file: refusing to open it as the database`);
    const db = new Database(path);
    const now = lstatSync(path);
    if (now.isSymbolicLink() || now.ino !== ours.ino || now.dev !== ours.dev) {
      db.close();
      throw new MeziteError("ERR_SYMLINK", `${path} was replaced while it was being opened: refusing to use it`);
    }
    return db;
  } finally {
    closeSync(fd);
  }
}

function sqliteError(e: unknown, path: string): unknown {
  if (e instanceof MeziteError) return e;
  const code = (e as { code?: unknown }).code;
  const msg = e instanceof Error ? e.message : String(e);
  if (code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT") {
    return new MeziteError("ERR_STATE_CORRUPT", `${path} is not a valid Mezite database (${msg}); restore it from a backup`, { cause: e });
  }
  const hint =
    code === "SQLITE_FULL" ? "the disk is full"
    : code === "SQLITE_BUSY" ? "another process holds the database lock"
    : code === "SQLITE_CANTOPEN" || code === "ENOENT" || code === "EACCES" ? "check that the data directory exists and is writable"
    : undefined;
  return new MeziteError("ERR_STORAGE", `SQLite database ${path}: ${msg}${hint ? ` (${hint})` : ""}`, { cause: e });
}
