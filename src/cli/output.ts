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
  if (cells.length === 0) return headers.join("  ") + "\n";
  const rows = cells.map((r) => r.map(escapeText));
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n") + "\n";
}

export function printDocument(format: Exclude<Format, "text">, doc: unknown): void {
  process.stdout.write(format === "json" ? JSON.stringify(doc, null, 2) + "\n" : toYaml(doc));
}

/**
 * "Fetching agent identities: 12,000…" on stderr, redrawn in place, for a listing that takes a
 * while; only on a terminal (scripts and pipes get nothing) and only after the first second.
 */
export function progressLine(what: string, stream: NodeJS.WriteStream = process.stderr, afterMs = 1000): ((count: number) => void) & { done(): void } {
  const start = Date.now();
  let shown = false;
  const update = (count: number) => {
    if (!stream.isTTY || Date.now() - start < afterMs) return;
    stream.write(`\rFetching ${what}: ${count.toLocaleString("en")}…`);
    shown = true;
  };
  return Object.assign(update, { done: () => shown && stream.write("\r\x1b[K") });
}
