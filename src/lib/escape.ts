/**
 * Text that a node or client sent (an address, a label, a claim, an audit detail), made safe to
 * print on a terminal in text output: control characters (C0, DEL, C1) become `\xNN`; Unicode
 * line separators, bidirectional controls and other invisible format characters become `\u{NNNN}`;
 * a backslash becomes `\\`, so text that spells an escape cannot pass for one made here. Nothing
 * else changes. JSON and YAML output need none of this: their encoders escape already.
 */
const UNSAFE = /[\\\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

const hex = (n: number, width: number) => n.toString(16).padStart(width, "0");

export function escapeText(s: string): string {
  return s.replace(UNSAFE, (c) => {
    if (c === "\\") return "\\\\";
    const n = c.charCodeAt(0);
    return n < 0x100 ? `\\x${hex(n, 2)}` : `\\u{${hex(n, 4)}}`;
  });
}
