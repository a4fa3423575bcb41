/**
 * PostgreSQL backend, for several auth servers sharing one database. Every conditional write is a
 * single statement (conditional UPDATE, INSERT ... ON CONFLICT), so PostgreSQL's row locks make it
 * atomic across connections and servers; nothing is read-then-written in Node.
 *
 * The pool recovers by itself: a connection killed by a server restart is dropped and the next
 * call opens a new one. While the server is down calls fail with ERR_UNREACHABLE; a failed write
 * is not retried here, because it may have committed before the connection broke.
 */
import pg from "pg";
import { MeziteError } from "../lib/errors.js";
import type { Counter } from "../lib/metrics.js";
import {
  alreadyExists, checkExpires, checkFields, checkKey, checkPrefix, checkRange, checkValue, closedError, compareFailed, descendingBound,
  makeItem, newRevision, opItem, prefixEnd, resolveBackendOptions, startSweeper,
} from "./backend.js";
import type { Backend, BackendOptions, FieldRangeOptions, FieldsRow, Item, PutOptions, RangeOptions, WriteOp } from "./backend.js";

export interface PostgresOptions extends BackendOptions {
  /** Connections per backend object. Default 10. */
  poolSize?: number;
  /** How long to wait for a connection (new, or a free one from the pool). Default 5000 ms. */
  connectTimeoutMs?: number;
  /**
   * Counts every statement sent, by name (`statement` label; BEGIN, COMMIT and ROLLBACK too), so an
   * operator sees what each call costs the database. Each is one round trip: pg sends a named
   * statement's parse, bind and execute together.
   */
  queries?: Counter;
}

const SCHEMA_VERSION = 1;
const MIGRATION_LOCK = 0x6d657a69; // pg_advisory_xact_lock id ("mezi"): one server migrates at a time
const MIGRATIONS: Record<number, string> = {
  // COLLATE "C": byte order (= code point order, like SQLite), and prefix ranges can use the index.
  1: `CREATE TABLE items (key text COLLATE "C" PRIMARY KEY, value text NOT NULL, revision text NOT NULL, expires bigint);
      CREATE INDEX items_expires ON items (expires) WHERE expires IS NOT NULL;`,
};

const ROW = "key, value, revision, expires";
const LIVE = (p: string) => `(expires IS NULL OR expires > ${p})`;
// Named statements are prepared once per connection by pg.
const SQL = {
  get: `SELECT ${ROW} FROM items WHERE key = $1`,
  purge: "DELETE FROM items WHERE key = $1 AND expires <= $2",
  put: `INSERT INTO items (${ROW}) VALUES ($1, $2, $3, $4)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, expires = excluded.expires`,
  // Several puts of distinct keys (one statement may not touch a row twice), a column per array.
  putMany: `INSERT INTO items (${ROW}) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
            ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, expires = excluded.expires`,
  // Inserts, or replaces an expired row; a live row makes it a no-op (rowCount 0).
  create: `INSERT INTO items (${ROW}) VALUES ($1, $2, $3, $4)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, expires = excluded.expires
           WHERE items.expires <= $5`,
  cas: `UPDATE items SET value = $1, revision = $2, expires = $3 WHERE key = $4 AND revision = $5 AND ${LIVE("$6")}`,
  delete: `DELETE FROM items WHERE key = $1 RETURNING ${LIVE("$2")} AS live`,
  deleteIf: `DELETE FROM items WHERE key = $1 AND revision = $2 AND ${LIVE("$3")}`,
  range: `SELECT ${ROW} FROM items WHERE key >= $1 AND key < $2 AND key > $3 AND ${LIVE("$4")} ORDER BY key LIMIT $5`,
  rangeAll: `SELECT ${ROW} FROM items WHERE key >= $1 AND key > $2 AND ${LIVE("$3")} ORDER BY key LIMIT $4`,
  rangeDown: `SELECT ${ROW} FROM items WHERE key >= $1 AND key < $2 AND ${LIVE("$3")} ORDER BY key DESC LIMIT $4`,
  rangeDownAll: `SELECT ${ROW} FROM items WHERE key >= $1 AND ${LIVE("$2")} ORDER BY key DESC LIMIT $3`,
  count: `SELECT count(*) AS n FROM items WHERE key >= $1 AND key < $2 AND ${LIVE("$3")}`,
  countAll: `SELECT count(*) AS n FROM items WHERE key >= $1 AND ${LIVE("$2")}`,
  sweep: "DELETE FROM items WHERE expires <= $1",
} as const;

interface Row {
  key: string;
  value: string;
  revision: string;
  expires: string | null; // bigint arrives as text
}

export class PostgresBackend implements Backend {
  readonly #pool: pg.Pool;
  readonly #target: string;
  readonly #now: () => number;
  readonly #stopSweeper: () => void;
  readonly #queries: Counter | undefined;
  #closed = false;

  /** Connects and creates or migrates the schema; fails with ERR_UNREACHABLE if the server is down. */
  static async open(url: string, options: PostgresOptions = {}): Promise<PostgresBackend> {
    const b = new PostgresBackend(url, options);
    try {
      await b.#migrate();
    } catch (e) {
      await b.close();
      throw e;
    }
    return b;
  }

  private constructor(url: string, options: PostgresOptions) {
    const o = resolveBackendOptions(options);
    const poolSize = options.poolSize ?? 10;
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    if (!Number.isInteger(poolSize) || poolSize < 1) throw new MeziteError("ERR_CONFIG", `PostgreSQL pool size must be a positive integer, got ${poolSize}`);
    if (!Number.isInteger(connectTimeoutMs) || connectTimeoutMs < 1) throw new MeziteError("ERR_CONFIG", `PostgreSQL connect timeout must be a positive integer of milliseconds, got ${connectTimeoutMs}`);
    this.#target = describeUrl(url);
    this.#now = o.now;
    this.#queries = options.queries;
    this.#pool = new pg.Pool({
      connectionString: url,
      max: poolSize,
      connectionTimeoutMillis: connectTimeoutMs,
      keepAlive: true,
      application_name: "mezite",
    });
    // An idle connection died (server restart, network): the pool has already dropped it and the
    // next call opens a fresh one. Without a listener this event would crash the process.
    this.#pool.on("error", () => {});
    this.#stopSweeper = startSweeper(o.sweepIntervalMs, () => this.sweep());
  }

  async get(key: string): Promise<Item | undefined> {
    checkKey(key);
    const now = this.#now();
    const row = (await this.#query<Row>("get", [key])).rows[0];
    if (row === undefined) return undefined;
    if (row.expires !== null && Number(row.expires) <= now) {
      await this.#query("purge", [key, now]); // lazy purge; conditional, in case it was just rewritten
      return undefined;
    }
    return toItem(row);
  }

  async put(key: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    await this.#query("put", [item.key, item.value, item.revision, item.expires ?? null]);
    return item;
  }

  async create(key: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    const r = await this.#query("create", [item.key, item.value, item.revision, item.expires ?? null, this.#now()]);
    if (r.rowCount !== 1) throw alreadyExists(key);
    return item;
  }

  async compareAndSwap(key: string, expectedRevision: string, value: string, opts?: PutOptions): Promise<Item> {
    const item = makeItem(checkKey(key), checkValue(value), newRevision(), checkExpires(opts));
    const r = await this.#query("cas", [item.value, item.revision, item.expires ?? null, key, expectedRevision, this.#now()]);
    if (r.rowCount !== 1) throw compareFailed(key);
    return item;
  }

  async write(ops: WriteOp[]): Promise<Item[]> {
    const items = ops.map(opItem);
    if (this.#closed) throw closedError();
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (e) {
      throw pgError(e, this.#target);
    }
    const run = async (name: keyof typeof SQL | "BEGIN" | "COMMIT", values: unknown[]) => {
      this.#queries?.inc({ statement: name });
      try {
        return await (name === "BEGIN" || name === "COMMIT" ? client.query(name) : client.query({ name, text: SQL[name], values }));
      } catch (e) {
        throw pgError(e, this.#target);
      }
    };
    let broken: Error | undefined;
    try {
      await run("BEGIN", []);
      for (let i = 0; i < ops.length; i++) {
        const o = ops[i]!;
        const it = items[i]!;
        const expires = it.expires ?? null;
        if (o.op === "put") {
          // Consecutive puts of distinct keys go as one statement: a round trip, not one each.
          const batch = [it];
          const batched = new Set([it.key]);
          while (ops[i + 1]?.op === "put" && !batched.has(items[i + 1]!.key)) {
            batch.push(items[++i]!);
            batched.add(items[i]!.key);
          }
          if (batch.length === 1) await run("put", [it.key, it.value, it.revision, expires]);
          else await run("putMany", [batch.map((b) => b.key), batch.map((b) => b.value), batch.map((b) => b.revision), batch.map((b) => b.expires ?? null)]);
        } else if (o.op === "create" && (await run("create", [it.key, it.value, it.revision, expires, this.#now()])).rowCount !== 1) throw alreadyExists(o.key);
        else if (o.op === "cas" && (await run("cas", [it.value, it.revision, expires, it.key, o.revision, this.#now()])).rowCount !== 1) throw compareFailed(o.key);
      }
      await run("COMMIT", []);
      return items;
    } catch (e) {
      // A connection that cannot even roll back is dropped from the pool rather than reused.
      this.#queries?.inc({ statement: "ROLLBACK" });
      await client.query("ROLLBACK").catch((rollbackFailed: Error) => (broken = rollbackFailed));
      throw e;
    } finally {
      client.release(broken);
    }
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    const r = await this.#query<{ live: boolean }>("delete", [key, this.#now()]);
    return r.rows[0]?.live === true;
  }

  async deleteIf(key: string, expectedRevision: string): Promise<boolean> {
    checkKey(key);
    return (await this.#query("deleteIf", [key, expectedRevision, this.#now()])).rowCount === 1;
  }

  async range(prefix: string, opts?: RangeOptions): Promise<Item[]> {
    checkPrefix(prefix);
    const { limit, startAfter, descending } = checkRange(opts);
    const end = prefixEnd(prefix);
    const after = startAfter ?? "";
    const lim = limit ?? null; // LIMIT NULL: no limit
    if (descending) {
      const bound = descendingBound(prefix, startAfter);
      const down = bound === undefined ? await this.#query<Row>("rangeDownAll", [prefix, this.#now(), lim]) : await this.#query<Row>("rangeDown", [prefix, bound, this.#now(), lim]);
      return down.rows.map(toItem);
    }
    const r = end === undefined
      ? await this.#query<Row>("rangeAll", [prefix, after, this.#now(), lim])
      : await this.#query<Row>("range", [prefix, end, after, this.#now(), lim]);
    return r.rows.map(toItem);
  }

  async rangeFields(prefix: string, fields: readonly string[], opts?: FieldRangeOptions): Promise<FieldsRow[]> {
    checkPrefix(prefix);
    checkFields(fields);
    const { limit, startAfter } = checkRange(opts);
    const end = prefixEnd(prefix);
    // Each value is parsed once (the lateral jsonb), and pg hands back the json array parsed.
    const picked = `json_build_array(${fields.map((f) => `v -> '${f}'`).join(", ")})`;
    const where = `key >= $1 AND key > $2 AND ${LIVE("$3")}${end === undefined ? "" : " AND key < $5"}`;
    const text = `SELECT key, ${picked} AS fields FROM items CROSS JOIN LATERAL (SELECT value::jsonb AS v) AS j WHERE ${where} ORDER BY key LIMIT $4`;
    const values = [prefix, startAfter ?? "", this.#now(), limit ?? null, ...(end === undefined ? [] : [end])];
    const r = await this.#queryText<{ key: string; fields: unknown[] }>("rangeFields", `rangeFields:${fields.join(",")}:${end !== undefined}`, text, values);
    return r.rows;
  }

  async count(prefix: string): Promise<number> {
    checkPrefix(prefix);
    const end = prefixEnd(prefix);
    const r = end === undefined
      ? await this.#query<{ n: string }>("countAll", [prefix, this.#now()])
      : await this.#query<{ n: string }>("count", [prefix, end, this.#now()]);
    return Number(r.rows[0]?.n ?? 0);
  }

  /** Deletes expired rows now; returns how many. */
  async sweep(): Promise<number> {
    return (await this.#query("sweep", [this.#now()])).rowCount ?? 0;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopSweeper();
    await this.#pool.end();
  }

  async #query<R extends pg.QueryResultRow = pg.QueryResultRow>(name: keyof typeof SQL, values: unknown[]): Promise<pg.QueryResult<R>> {
    return this.#queryText<R>(name, name, SQL[name], values);
  }

  /** A named statement (pg prepares it once per connection), counted under `statement`. */
  async #queryText<R extends pg.QueryResultRow>(statement: string, name: string, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
    if (this.#closed) throw closedError();
    this.#queries?.inc({ statement });
    try {
      return await this.#pool.query<R>({ name, text, values });
    } catch (e) {
      throw pgError(e, this.#target);
    }
  }

  async #migrate(): Promise<void> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (e) {
      throw pgError(e, this.#target);
    }
    let failure: unknown;
    try {
      await client.query("BEGIN");
      await client.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK]);
      await client.query("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
      const r = await client.query<{ v: number | null }>("SELECT max(version) AS v FROM schema_version");
      const version = r.rows[0]?.v ?? 0;
      if (version > SCHEMA_VERSION) {
        throw new MeziteError("ERR_STORAGE", `PostgreSQL at ${this.#target} has schema version ${version}, newer than this Mezite understands (${SCHEMA_VERSION}); upgrade Mezite`);
      }
      for (let v = version + 1; v <= SCHEMA_VERSION; v++) {
        await client.query(MIGRATIONS[v] as string);
        await client.query("INSERT INTO schema_version (version) VALUES ($1)", [v]);
      }
      await client.query("COMMIT");
    } catch (e) {
      failure = e;
      await client.query("ROLLBACK").catch(() => {});
      throw pgError(e, this.#target);
    } finally {
      // A client that failed mid-transaction is destroyed rather than reused.
      client.release(failure instanceof Error ? failure : undefined);
    }
  }
}

function toItem(r: Row): Item {
  return makeItem(r.key, r.value, r.revision, r.expires === null ? null : Number(r.expires));
}

/** host:port/database for messages: never the user's password. */
function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || "localhost"}:${u.port || "5432"}${u.pathname}`;
  } catch {
    return "(unparsable URL)";
  }
}

const NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EPIPE"]);
// Server shutting down or starting up (admin_shutdown, crash_shutdown, cannot_connect_now).
const SHUTDOWN_CODES = new Set(["57P01", "57P02", "57P03"]);
// pg's own errors for broken or unobtainable connections carry no code.
const CONNECTION_MESSAGES = /Connection terminated|timeout exceeded when trying to connect|not queryable|connection timeout/i;

function pgError(e: unknown, target: string): MeziteError {
  if (e instanceof MeziteError) return e;
  const code = typeof (e as { code?: unknown }).code === "string" ? (e as { code: string }).code : "";
  const msg = ((e instanceof Error && e.message) || code || String(e)).replace(/\s+/g, " ").trim();
  if (NETWORK_CODES.has(code) || SHUTDOWN_CODES.has(code) || code.startsWith("08") || CONNECTION_MESSAGES.test(msg)) {
    return new MeziteError("ERR_UNREACHABLE", `PostgreSQL at ${target} is unreachable (${msg}); check that it is running`, { cause: e });
  }
  if (code.startsWith("28") || code === "3D000") {
    return new MeziteError("ERR_CONFIG", `PostgreSQL at ${target} refused the connection (${msg}); check the user, password and database in --backend`, { cause: e });
  }
  return new MeziteError("ERR_STORAGE", `PostgreSQL at ${target} failed: ${msg}`, { cause: e });
}
