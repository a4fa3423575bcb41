/**
 * YAML that an admin wrote (a role, a join_token): one document, parsed strictly (a key given
 * twice is an error), and a syntax error told as one line that names the line and shows its text,
 * so the mistake is found without counting lines.
 */
import { parse, YAMLError } from "yaml";
import { MeziteError, type ErrorCode } from "./errors.js";
import { escapeText } from "./escape.js";

/** Longest part of the offending line that an error quotes. */
const MAX_QUOTED = 80;

/** `what` names the text in the error ("role file", "ci.yaml"). */
export function parseYamlText(text: string, what: string, code: ErrorCode): unknown {
  try {
    return parse(text, { strict: true, uniqueKeys: true });
  } catch (e) {
    throw new MeziteError(code, `${what} is not valid YAML${yamlErrorPlace(e, text)}`, { cause: e });
  }
}

/** ", line 7 ("  deny: {}"): <why>" for a parse error; the parser's own message ends in its place. */
function yamlErrorPlace(e: unknown, text: string): string {
  const why = e instanceof YAMLError && e.code === "MULTIPLE_DOCS"
    ? "it holds more than one document (---): give one resource per file"
    : ((e as Error).message ?? String(e)).split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
  const pos = e instanceof YAMLError ? e.linePos?.[0] : undefined;
  if (!pos) return `: ${why}`;
  const line = text.split(/\r?\n/)[pos.line - 1] ?? "";
  const quoted = escapeText(line.length > MAX_QUOTED ? `${line.slice(0, MAX_QUOTED)}...` : line);
  return `, line ${pos.line} column ${pos.col} ("${quoted}"): ${why}`;
}

/** Whether a document's `kind` is `kind` (lower case), in any case: `kind: Role` as Kubernetes spells it is a role. */
export function isKind(value: unknown, kind: string): boolean {
  return typeof value === "string" && value.toLowerCase() === kind;
}
