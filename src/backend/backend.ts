/**
 * The storage contract used by auth/: a flat, ordered key-value store with revisions for
 * optimistic concurrency and optional expiry. Three implementations (memory, SQLite, PostgreSQL)
 * pass one shared test suite, so callers may rely on exactly what is written here.
 *
 * - Keys are '/'-separated text such as "/identities/github-deploy" (build them with `storageKey`).
 *   Keys sort by Unicode code point (= UTF-8 byte order, what SQLite and PostgreSQL "C" compare).
 * - Every write replaces the value *and* the expiry: a write without `expires` never expires.
 * - An expired item is invisible everywhere and counts as absent (create succeeds over it,
 *   compare-and-swap and deleteIf fail on it). Rows are purged lazily and by a periodic sweep.
 * - `revision` is opaque and new on every write; compare it only for equality.
 */
import { randomUUID } from "node:crypto";
import { MeziteError } from "../lib/errors.js";

export interface Item {
  key: string;
  /** Usually JSON text. */
  value: string;
  /** Opaque, changes on every write. */
  revision: string;
  /** Unix milliseconds; the item is invisible from this instant on. */
  expires?: number;
}

export interface PutOptions {
  /** Unix milliseconds. Omitted: the item never expires. */
  expires?: number;
}

export interface RangeOptions {
  /** At most this many items (a non-negative integer). Omitted: all. */
  limit?: number;
  /** Only keys strictly after this one in the scan's order: pass the last key of the previous page. */
  startAfter?: string;
  /** Descending by key (newest first for time-ordered keys); `startAfter` then means strictly before. */
  descending?: boolean;
}

export type FieldRangeOptions = Omit<RangeOptions, "descending">;

/** A row of Backend.rangeFields: the value's fields in the order asked, null where absent. */
export interface FieldsRow {
  key: string;
  fields: unknown[];
}

const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** rangeFields' field names: plain identifiers, as they are written into the query's text. */
export function checkFields(fields: readonly string[]): readonly string[] {
  if (fields.length === 0 || fields.length > 32 || !fields.every((f) => FIELD_NAME.test(f))) {
    throw new MeziteError("ERR_INTERNAL", `invalid range fields ${JSON.stringify(fields).slice(0, 80)}: 1 to 32 names of letters, digits and _`);
  }
  return fields;
}

/** One write of an atomic batch (Backend.write): put, create-if-absent or compare-and-swap. */
export type WriteOp =
  | { op: "put"; key: string; value: string; expires?: number }
  | { op: "create"; key: string; value: string; expires?: number }
  | { op: "cas"; key: string; revision: string; value: string; expires?: number };

export interface Backend {
  /** Expired items are invisible. */
  get(key: string): Promise<Item | undefined>;
  /** Upsert. */
  put(key: string, value: string, opts?: PutOptions): Promise<Item>;
  /** Throws ERR_ALREADY_EXISTS if a live item has this key. */
  create(key: string, value: string, opts?: PutOptions): Promise<Item>;
  /** Throws ERR_COMPARE_FAILED if the revision differs or the item is gone. */
  compareAndSwap(key: string, expectedRevision: string, value: string, opts?: PutOptions): Promise<Item>;
  /**
   * Every op or none, as one transaction (one commit: one fsync for SQLite). A create over a live
   * item or a failed compare-and-swap throws as the single call would, and nothing is written.
   * Returns the written items in the order of `ops`.
   */
  write(ops: WriteOp[]): Promise<Item[]>;
  /** True if a live item was deleted. */
  delete(key: string): Promise<boolean>;
  /** True if a live item with this revision was deleted. */
  deleteIf(key: string, expectedRevision: string): Promise<boolean>;
  /** Live items whose key starts with `prefix` (plain string prefix: end it with '/'), ascending by key. */
  range(prefix: string, opts?: RangeOptions): Promise<Item[]>;
  /**
   * range() for a listing that needs a few top-level fields of many JSON values, ascending by
   * key: the database picks them out, so the rest of each value is neither copied nor parsed.
   */
  rangeFields(prefix: string, fields: readonly string[], opts?: FieldRangeOptions): Promise<FieldsRow[]>;
  count(prefix: string): Promise<number>;
  close(): Promise<void>;
}

/** Settings shared by every implementation. */
export interface BackendOptions {
  /** Clock for expiry, unix ms. Default Date.now; tests freeze it. */
  now?: () => number;
  /** How often expired rows are deleted in the background; 0 disables the sweep. Default 60 s. */
  sweepIntervalMs?: number;
}

export interface ResolvedBackendOptions {
  now: () => number;
  sweepIntervalMs: number;
}

export function resolveBackendOptions(o: BackendOptions): ResolvedBackendOptions {
  const sweepIntervalMs = o.sweepIntervalMs ?? 60_000;
  if (!Number.isInteger(sweepIntervalMs) || sweepIntervalMs < 0) {
    throw new MeziteError("ERR_CONFIG", `sweep interval must be a non-negative integer of milliseconds, got ${sweepIntervalMs}`);
  }
  return { now: o.now ?? Date.now, sweepIntervalMs };
}

/** Runs `sweep` every interval without keeping the process alive; returns the stopper. */
export function startSweeper(intervalMs: number, sweep: () => Promise<unknown>): () => void {
  if (intervalMs === 0) return () => {};
  // A failed sweep (database briefly down) is retried at the next tick; callers see errors on their own calls.
  const timer = setInterval(() => void sweep().catch(() => {}), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** A fresh revision: random, so two writes in the same millisecond (or on two servers) differ. */
export function newRevision(): string {
  return randomUUID();
}

const MAX_KEY_BYTES = 1024; // well under PostgreSQL's btree entry limit (~2.7 kB)
// NUL cannot be stored in PostgreSQL text; a lone surrogate would silently become U+FFFD.
const BAD_TEXT = /[\0]|\p{Cs}/u;

/** Joins parts into a key: storageKey("identities", name) === "/identities/" + name. */
export function storageKey(...parts: string[]): string {
  for (const p of parts) {
    if (p === "" || p.includes("/")) {
      throw new MeziteError("ERR_INTERNAL", `storage key part ${JSON.stringify(p)} must be non-empty and contain no '/'`);
    }
  }
  return checkKey("/" + parts.join("/"));
}

export function checkKey(key: string): string {
  if (typeof key !== "string" || !key.startsWith("/") || BAD_TEXT.test(key) || Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new MeziteError("ERR_INTERNAL", `invalid storage key ${JSON.stringify(String(key)).slice(0, 80)}: it must start with '/', be well-formed text without NUL, at most ${MAX_KEY_BYTES} bytes`);
  }
  return key;
}

/** A range prefix: "" (everything) or the start of a key. */
export function checkPrefix(prefix: string): string {
  if (prefix !== "") checkKey(prefix);
  return prefix;
}

export function checkValue(value: string): string {
  if (typeof value !== "string" || BAD_TEXT.test(value)) {
    throw new MeziteError("ERR_INTERNAL", "invalid storage value: it must be well-formed text without NUL");
  }
  return value;
}

export function checkExpires(opts: PutOptions | undefined): number | undefined {
  const e = opts?.expires;
  if (e !== undefined && !Number.isSafeInteger(e)) {
    throw new MeziteError("ERR_INTERNAL", `invalid expiry ${e}: it must be an integer of unix milliseconds`);
  }
  return e;
}

/** The item a batch op would write, its key, value and expiry checked. */
export function opItem(op: WriteOp): Item {
  return makeItem(checkKey(op.key), checkValue(op.value), newRevision(), checkExpires(op));
}

export function checkRange(opts: RangeOptions | undefined): { limit: number | undefined; startAfter: string | undefined; descending: boolean } {
  const limit = opts?.limit;
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 0)) {
    throw new MeziteError("ERR_INTERNAL", `invalid range limit ${limit}: it must be a non-negative integer`);
  }
  const startAfter = opts?.startAfter;
  if (startAfter !== undefined) checkKey(startAfter);
  return { limit, startAfter, descending: opts?.descending === true };
}

/**
 * The smallest string greater than every string starting with `prefix` (in code point order), or
 * undefined when there is none. Range scans use `key >= prefix AND key < prefixEnd(prefix)`, which
 * an index serves directly, unlike LIKE.
 */
export function prefixEnd(prefix: string): string | undefined {
  const cps = Array.from(prefix, (c) => c.codePointAt(0) as number);
  while (cps.length > 0) {
    let last = (cps.pop() as number) + 1;
    if (last === 0xd800) last = 0xe000; // surrogates are not characters: skip them
    if (last <= 0x10ffff) return String.fromCodePoint(...cps, last);
  }
  return undefined;
}

/** Code point order; JavaScript's `<` compares UTF-16 units, which sorts U+E000..U+FFFF after astral characters. */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return codeUnitRank(x) - codeUnitRank(y);
  }
  return a.length - b.length;
}

function codeUnitRank(u: number): number {
  if (u >= 0xe000) return u - 0x800;
  if (u >= 0xd800) return u + 0x2000;
  return u;
}

/**
 * The exclusive upper bound of a descending range: the tighter of the prefix's end and the cursor
 * (undefined: no bound, the prefix runs to the end of the key space).
 */
export function descendingBound(prefix: string, startAfter: string | undefined): string | undefined {
  const end = prefixEnd(prefix);
  if (startAfter === undefined) return end;
  return end === undefined || compareKeys(startAfter, end) < 0 ? startAfter : end;
}

/** Builds an Item without an `expires` property when there is none (exactOptionalPropertyTypes). */
export function makeItem(key: string, value: string, revision: string, expires: number | null | undefined): Item {
  return expires === null || expires === undefined ? { key, value, revision } : { key, value, revision, expires };
}

export function alreadyExists(key: string): MeziteError {
  return new MeziteError("ERR_ALREADY_EXISTS", `${key} already exists`);
}

export function compareFailed(key: string): MeziteError {
  return new MeziteError("ERR_COMPARE_FAILED", `${key} was changed or deleted concurrently; read it again and retry`);
}

export function closedError(): MeziteError {
  return new MeziteError("ERR_STORAGE", "the storage backend is closed");
}
