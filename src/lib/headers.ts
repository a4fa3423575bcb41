/**
 * A small Headers (Fetch standard, §5.2) for mezd and mezctl. Node 20's global `Headers` is a lazy
 * getter that loads all of undici (25–35 ms and ~7 MB) the first time connect builds a request
 * header; this class does what connect needs, as the standard says, without it.
 * Not implemented: guards (immutable request/response headers), which only fetch itself uses.
 */

type Init = Iterable<Iterable<string>> | Record<string, string> | undefined | null;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Leading and trailing HTTP whitespace (tab, LF, CR, space) is dropped from values.
const EDGE_WS = /^[\t\n\r ]+|[\t\n\r ]+$/g;
// A value must not hold NUL, LF or CR, and, being a ByteString, no code point above 0xFF.
const BAD_VALUE = /[\0\n\r\u0100-\uffff]/;

function headerName(name: unknown, op: string): string {
  const n = String(name);
  if (!TOKEN.test(n)) throw new TypeError(`Headers.${op}: "${n}" is an invalid header name.`);
  return n.toLowerCase();
}

function headerValue(value: unknown, op: string): string {
  const v = String(value).replace(EDGE_WS, "");
  if (BAD_VALUE.test(v)) throw new TypeError(`Headers.${op}: "${v}" is an invalid header value.`);
  return v;
}

export class LightHeaders {
  // Lower-cased name → its values in the order they were appended.
  readonly #list = new Map<string, string[]>();
  #sorted: [string, string][] | undefined;

  constructor(init?: Init) {
    if (init === undefined || init === null) return;
    if (typeof init !== "object" && typeof init !== "function") throw new TypeError("Headers constructor: init must be a sequence or a record.");
    if (Symbol.iterator in init) {
      for (const pair of init as Iterable<Iterable<string>>) {
        const p = [...pair];
        if (p.length !== 2) throw new TypeError(`Headers constructor: expected name/value pair to be length 2, found ${p.length}.`);
        this.append(p[0]!, p[1]!);
      }
    } else {
      for (const [k, v] of Object.entries(init)) this.append(k, v);
    }
  }

  append(name: string, value: string): void {
    const n = headerName(name, "append");
    const v = headerValue(value, "append");
    const values = this.#list.get(n);
    if (values) values.push(v);
    else this.#list.set(n, [v]);
    this.#sorted = undefined;
  }

  set(name: string, value: string): void {
    this.#list.set(headerName(name, "set"), [headerValue(value, "set")]);
    this.#sorted = undefined;
  }

  delete(name: string): void {
    if (this.#list.delete(headerName(name, "delete"))) this.#sorted = undefined;
  }

  get(name: string): string | null {
    return this.#list.get(headerName(name, "get"))?.join(", ") ?? null;
  }

  has(name: string): boolean {
    return this.#list.has(headerName(name, "has"));
  }

  getSetCookie(): string[] {
    return [...(this.#list.get("set-cookie") ?? [])];
  }

  /** "Sort and combine": by name, one entry per name with its values joined, but one per Set-Cookie. */
  #pairs(): [string, string][] {
    if (!this.#sorted) {
      this.#sorted = [];
      for (const n of [...this.#list.keys()].sort()) {
        const values = this.#list.get(n)!;
        if (n === "set-cookie") for (const v of values) this.#sorted.push([n, v]);
        else this.#sorted.push([n, values.join(", ")]);
      }
    }
    return this.#sorted;
  }

  // Iteration reads the live list at each step, as WebIDL says: a change made by the loop's body
  // shifts what comes next (connect's copyHeaders deletes while it iterates).
  forEach(callback: (value: string, name: string, headers: LightHeaders) => void, thisArg?: unknown): void {
    if (typeof callback !== "function") throw new TypeError("Headers.forEach: callback is not a function.");
    for (let i = 0; i < this.#pairs().length; i++) {
      const [n, v] = this.#pairs()[i]!;
      callback.call(thisArg, v, n, this);
    }
  }

  *entries(): IterableIterator<[string, string]> {
    for (let i = 0; i < this.#pairs().length; i++) yield [...this.#pairs()[i]!];
  }

  *keys(): IterableIterator<string> {
    for (const [n] of this.entries()) yield n;
  }

  *values(): IterableIterator<string> {
    for (const [, v] of this.entries()) yield v;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  get [Symbol.toStringTag](): string {
    return "Headers";
  }
}

/**
 * Makes LightHeaders the global `Headers`, but only while the global is still Node's lazy getter,
 * i.e. undici has not been loaded: once it has, its Headers stays. Call it before connect runs.
 */
export function installLightHeaders(): void {
  const d = Object.getOwnPropertyDescriptor(globalThis, "Headers");
  if (typeof d?.get !== "function") return;
  Object.defineProperty(globalThis, "Headers", { value: LightHeaders, writable: true, configurable: true, enumerable: false });
}
