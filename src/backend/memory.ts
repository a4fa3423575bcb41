/**
 * In-process backend for tests and throwaway servers: nothing survives the process. Every method
 * runs to completion without awaiting, so each one is atomic by construction.
 */
import {
  alreadyExists, checkExpires, checkFields, checkKey, checkPrefix, checkRange, checkValue, closedError, compareFailed, descendingBound,
  compareKeys, makeItem, newRevision, opItem, prefixEnd, resolveBackendOptions, startSweeper,
} from "./backend.js";
import type { Backend, BackendOptions, FieldRangeOptions, FieldsRow, Item, PutOptions, RangeOptions, WriteOp } from "./backend.js";

export class MemoryBackend implements Backend {
  readonly #items = new Map<string, Item>();
  /** Keys in code point order, rebuilt lazily after a key is added or removed (not on updates). */
  #sorted: string[] | undefined = [];
  readonly #now: () => number;
  readonly #stopSweeper: () => void;
  #closed = false;

  constructor(options: BackendOptions = {}) {
    const o = resolveBackendOptions(options);
    this.#now = o.now;
    this.#stopSweeper = startSweeper(o.sweepIntervalMs, () => this.sweep());
  }

  async get(key: string): Promise<Item | undefined> {
    return this.#live(checkKey(key));
  }

  async put(key: string, value: string, opts?: PutOptions): Promise<Item> {
    return this.#write(checkKey(key), checkValue(value), checkExpires(opts));
  }

  async create(key: string, value: string, opts?: PutOptions): Promise<Item> {
    checkKey(key);
    if (this.#live(key)) throw alreadyExists(key);
    return this.#write(key, checkValue(value), checkExpires(opts));
  }

  async compareAndSwap(key: string, expectedRevision: string, value: string, opts?: PutOptions): Promise<Item> {
    checkKey(key);
    if (this.#live(key)?.revision !== expectedRevision) throw compareFailed(key);
    return this.#write(key, checkValue(value), checkExpires(opts));
  }

  async write(ops: WriteOp[]): Promise<Item[]> {
    const items = ops.map(opItem);
    // Synchronous from here on, so nothing interleaves: undo what was applied if an op fails.
    const before = new Map(ops.map((o) => [o.key, this.#live(o.key)]));
    try {
      return ops.map((o, i) => {
        const cur = this.#live(o.key);
        if (o.op === "create" && cur) throw alreadyExists(o.key);
        if (o.op === "cas" && cur?.revision !== o.revision) throw compareFailed(o.key);
        return this.#write(o.key, items[i]!.value, items[i]!.expires);
      });
    } catch (e) {
      for (const [key, item] of before) {
        if (item) this.#items.set(key, item);
        else if (this.#items.delete(key)) this.#sorted = undefined;
      }
      throw e;
    }
  }

  async delete(key: string): Promise<boolean> {
    checkKey(key);
    return this.#live(key) !== undefined && this.#remove(key);
  }

  async deleteIf(key: string, expectedRevision: string): Promise<boolean> {
    checkKey(key);
    return this.#live(key)?.revision === expectedRevision && this.#remove(key);
  }

  async range(prefix: string, opts?: RangeOptions): Promise<Item[]> {
    const { limit, startAfter, descending } = checkRange(opts);
    const out: Item[] = [];
    for (const item of descending ? this.#scanDown(checkPrefix(prefix), startAfter) : this.#scan(checkPrefix(prefix), startAfter)) {
      if (limit !== undefined && out.length >= limit) break;
      out.push({ ...item });
    }
    return out;
  }

  async rangeFields(prefix: string, fields: readonly string[], opts?: FieldRangeOptions): Promise<FieldsRow[]> {
    checkFields(fields);
    return (await this.range(prefix, { ...opts, descending: false })).map((item) => {
      const value = JSON.parse(item.value) as Record<string, unknown>;
      return { key: item.key, fields: fields.map((f) => (Object.hasOwn(value, f) ? value[f] : null)) };
    });
  }

  async count(prefix: string): Promise<number> {
    let n = 0;
    for (const _ of this.#scan(checkPrefix(prefix), undefined)) n++;
    return n;
  }

  /** Deletes expired items now; returns how many. */
  async sweep(): Promise<number> {
    this.#open();
    const now = this.#now();
    let n = 0;
    for (const [key, item] of this.#items) {
      if (item.expires !== undefined && item.expires <= now) n += Number(this.#remove(key));
    }
    return n;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#stopSweeper();
  }

  #open(): void {
    if (this.#closed) throw closedError();
  }

  /** The live item, purging it if it has expired. */
  #live(key: string): Item | undefined {
    this.#open();
    const item = this.#items.get(key);
    if (item?.expires !== undefined && item.expires <= this.#now()) {
      this.#remove(key);
      return undefined;
    }
    return item && { ...item };
  }

  #write(key: string, value: string, expires: number | undefined): Item {
    this.#open();
    if (!this.#items.has(key)) this.#sorted = undefined;
    const item = makeItem(key, value, newRevision(), expires);
    this.#items.set(key, item);
    return { ...item };
  }

  #remove(key: string): boolean {
    this.#sorted = undefined;
    return this.#items.delete(key);
  }

  *#scan(prefix: string, startAfter: string | undefined): Generator<Item> {
    this.#open();
    const sorted = (this.#sorted ??= [...this.#items.keys()].sort(compareKeys));
    const end = prefixEnd(prefix);
    const now = this.#now();
    // Binary search for the first key >= prefix (and > startAfter).
    const after = startAfter !== undefined && compareKeys(startAfter, prefix) >= 0 ? startAfter : undefined;
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = compareKeys(sorted[mid] as string, after ?? prefix);
      if (c < 0 || (c === 0 && after !== undefined)) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < sorted.length; i++) {
      const key = sorted[i] as string;
      if (end !== undefined && compareKeys(key, end) >= 0) break;
      const item = this.#items.get(key);
      if (item && (item.expires === undefined || item.expires > now)) yield item;
    }
  }

  /** #scan backwards: keys below descendingBound, down to the prefix. */
  *#scanDown(prefix: string, startAfter: string | undefined): Generator<Item> {
    this.#open();
    const sorted = (this.#sorted ??= [...this.#items.keys()].sort(compareKeys));
    const bound = descendingBound(prefix, startAfter);
    const now = this.#now();
    // Binary search for the first key >= bound: everything before it is below the bound.
    let lo = 0;
    let hi = sorted.length;
    while (bound !== undefined && lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(sorted[mid] as string, bound) < 0) lo = mid + 1;
      else hi = mid;
    }
    for (let i = (bound === undefined ? sorted.length : lo) - 1; i >= 0; i--) {
      const key = sorted[i] as string;
      if (compareKeys(key, prefix) < 0) break;
      const item = this.#items.get(key);
      if (item && (item.expires === undefined || item.expires > now)) yield item;
    }
  }
}
