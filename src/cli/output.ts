/** Output formats for listings (SPEC §11): aligned text tables, or one JSON / YAML document. */
import { stringify as toYaml } from "yaml";
import { MeziteError } from "../lib/errors.js";
import { escapeText } from "../lib/escape.js";

export type Format = "text" | "json" | "yaml";

export function parseFormat(s: string | undefined): Format {
  const f = (s ?? "text").toLowerCase();
  if (f !== "text" && f !== "json" && f !== "yaml") throw new MeziteError("ERR_USAGE", `--format must be text, json or yaml (got "${s}")`);
  return f;
}

/** Times as ISO 8601 in documents; 0 (never/unknown) as null. */
export function isoTime(ms: bigint | number): string | null {
  const n = Number(ms);
  return n > 0 ? new Date(n).toISOString() : null;
}

/** Human "3m ago" / "in 47m" for tables. */
export function relTime(ms: bigint | number, now = Date.now()): string {
  const n = Number(ms);
  if (n <= 0) return "never";
  const d = n - now;
  const a = Math.abs(d);
  const span = a < 60_000 ? `${Math.round(a / 1000)}s` : a < 3_600_000 ? `${Math.round(a / 60_000)}m` : a < 172_800_000 ? `${Math.round(a / 3_600_000)}h` : `${Math.round(a / 86_400_000)}d`;
  return d >= 0 ? `in ${span}` : `${span} ago`;
}

/** Columns of text; every cell is escaped (lib/escape.ts), since cells show what nodes and clients sent. */
export function table(headers: string[], cells: string[][]): string {
  let out = "";
  const w = new ListingWriter<string[]>("text", headers, (r) => r, (r) => r, (s) => (out += s));
  w.page(cells);
  w.end();
  return out;
}

export function printDocument(format: Exclude<Format, "text">, doc: unknown): void {
  process.stdout.write(format === "json" ? JSON.stringify(doc, null, 2) + "\n" : toYaml(doc));
}

/**
 * A listing printed as its pages arrive (SPEC §20): the first rows show before the last is read.
 * Text columns are as wide as the first page needs and only ever widen after it; JSON is the
 * bytes JSON.stringify(all, null, 2) would print, YAML one sequence item per document.
 */
export class ListingWriter<T> {
  private widths: number[] | undefined;
  private count = 0;

  constructor(
    private readonly format: Format,
    private readonly headers: string[],
    private readonly row: (item: T) => string[],
    private readonly doc: (item: T) => unknown,
    private readonly write: (s: string) => void = (s) => process.stdout.write(s),
  ) {}

  page(items: T[]): void {
    if (items.length === 0) return;
    // A page as an array is its elements already indented as the whole array's: drop its brackets.
    if (this.format === "json") this.write((this.count === 0 ? "[\n" : ",\n") + JSON.stringify(items.map(this.doc), null, 2).slice(2, -2));
    else if (this.format === "yaml") this.write(toYaml(items.map(this.doc)));
    else this.write(this.textRows(items.map((i) => this.row(i).map(escapeText))));
    this.count += items.length;
  }

  end(): void {
    if (this.count > 0) this.write(this.format === "json" ? "\n]\n" : "");
    else this.write(this.format === "json" ? "[]\n" : this.format === "yaml" ? "[]\n" : this.headers.join("  ") + "\n");
  }

  private textRows(rows: string[][]): string {
    const out: string[] = [];
    if (!this.widths) {
      this.widths = this.headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
      out.push(this.line(this.headers), this.line(this.widths.map((w) => "-".repeat(w))));
    }
    for (const r of rows) {
      r.forEach((c, i) => (this.widths![i] = Math.max(this.widths![i]!, c.length)));
      out.push(this.line(r));
    }
    return out.join("\n") + "\n";
  }

  private line(cells: string[]): string {
    return cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(this.widths![i]!))).join("  ").trimEnd();
  }
}
