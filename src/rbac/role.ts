/** Roles as admins write them (YAML, SPEC §3), strictly validated: unknown fields are named. */
import { MeziteError } from "../lib/errors.js";
import { isKind, parseYamlText } from "../lib/yaml-text.js";
import { formatDuration, parseDuration } from "../lib/duration.js";
import type { LabelRule, RoleAccess } from "./access.js";
import { LOGIN_PATTERN, NAME_PATTERN } from "./names.js";
import { PERMIT_OPTIONS, optionsFromDocument, optionsToDocument, type RoleOptions } from "./options.js";
import { checkTemplate, hasTemplate } from "./template.js";

export interface Role extends RoleAccess {
  description: string;
  /** Certificate options (options.ts); a role stored before they existed has none. */
  options?: RoleOptions;
}

/** Allow rules may hold {{claims.NAME}} templates; deny rules may not (template.ts). */
type Side = "allow" | "deny";

/**
 * Deny rules take no templates: a template yields nothing when its claim is missing or odd, and
 * a deny that yields nothing denies nothing, so any template there would fail open.
 */
function noDenyTemplate(value: string, where: string): void {
  if (hasTemplate(value)) bad(`${where}: "${value}": deny rules take no templates (one whose claim is missing would deny nothing)`);
}


function bad(message: string): never {
  throw new MeziteError("ERR_BAD_ROLE", message);
}

type Obj = Record<string, unknown>;

function objectAt(value: unknown, where: string, allowed: string[]): Obj {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) bad(`${where} must be a mapping`);
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) bad(`unknown field "${where === "role" ? key : `${where}.${key}`}" (allowed: ${allowed.join(", ")})`);
  }
  return value as Obj;
}

function stringList(value: unknown, where: string): string[] {
  if (value === undefined || value === null) return [];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || !list.every((v) => typeof v === "string" && v.length > 0)) {
    bad(`${where} must be a string or a list of non-empty strings`);
  }
  return [...new Set(list as string[])];
}

function logins(value: unknown, where: string, side: Side): string[] {
  const list = stringList(value, where);
  for (const login of list) {
    if (side === "deny") noDenyTemplate(login, where);
    if (hasTemplate(login)) checkTemplate(login, "login", where);
    else if (!LOGIN_PATTERN.test(login)) bad(`${where}: "${login}" is not a valid login name`);
  }
  return list;
}

/** Names that are not label keys: on a plain object they reach (or replace) its prototype. */
export const RESERVED_LABEL_KEYS: readonly string[] = ["__proto__", "constructor", "prototype"];

/**
 * A label rule in a prototype-free map: a key is only ever one the admin wrote. The key '*' (any
 * node) takes only the value '*'; any other value under it would mean nothing, so it is refused.
 */
function labelRule(value: unknown, where: string, side: Side): LabelRule {
  const rule: LabelRule = Object.create(null) as LabelRule;
  if (value === undefined || value === null) return rule;
  if (typeof value !== "object" || Array.isArray(value)) bad(`${where} must be a mapping of label to values`);
  for (const [key, v] of Object.entries(value as Obj)) {
    if (RESERVED_LABEL_KEYS.includes(key)) bad(`${where}: "${key}" is reserved and cannot be a label key`);
    if (hasTemplate(key)) bad(`${where}: "${key}": templates go in label values, not keys`);
    const values = stringList(v, `${where}.${key}`);
    for (const value of values.filter(hasTemplate)) {
      if (side === "deny") noDenyTemplate(value, `${where}.${key}`);
      checkTemplate(value, "label value", `${where}.${key}`);
    }
    if (key === "*" && (values.length !== 1 || values[0] !== "*")) bad(`${where}: the key '*' (any node) takes only the value '*'`);
    rule[key] = values;
  }
  return rule;
}

function conditions(value: unknown, where: string, side: Side): RoleAccess["allow"] {
  const c = objectAt(value, where, ["logins", "node_labels"]);
  return { logins: logins(c["logins"], `${where}.logins`, side), labels: labelRule(c["node_labels"], `${where}.node_labels`, side) };
}

/** Validates a parsed role document (the YAML's data, or the equivalent JSON). */
export function roleFromDocument(doc: unknown): Role {
  const top = objectAt(doc, "role", ["kind", "version", "metadata", "spec"]);
  // `kind: Role` as Kubernetes spells it is the same kind; a version other than v1 may mean fields this one would misread.
  if (!isKind(top["kind"], "role")) bad(`kind must be "role" (got ${JSON.stringify(top["kind"] ?? null)})`);
  if (top["version"] !== undefined && top["version"] !== "v1") bad(`version must be "v1" or left out (got ${JSON.stringify(top["version"])})`);
  const metadata = objectAt(top["metadata"], "metadata", ["name", "description"]);
  const name = metadata["name"];
  if (typeof name !== "string" || !NAME_PATTERN.test(name)) {
    bad(`metadata.name must match [a-z0-9][a-z0-9._-]{0,62} (got ${JSON.stringify(name ?? null)})`);
  }
  const description = metadata["description"] ?? "";
  if (typeof description !== "string") bad("metadata.description must be a string");
  const spec = objectAt(top["spec"], "spec", ["options", "allow", "deny"]);
  const options = objectAt(spec["options"], "spec.options", ["max_session_ttl", "force_command", "source_address", ...Object.keys(PERMIT_OPTIONS)]);
  let maxSessionTtlMs = 0;
  const ttl = options["max_session_ttl"];
  if (ttl !== undefined) {
    if (typeof ttl !== "string") bad("spec.options.max_session_ttl must be a duration such as 1h");
    try {
      maxSessionTtlMs = parseDuration(ttl);
    } catch {
      bad(`spec.options.max_session_ttl: "${ttl}" is not a duration such as 30m or 1h`);
    }
    if (maxSessionTtlMs < 60_000) bad("spec.options.max_session_ttl must be at least 1m");
  }
  return {
    role: name,
    description,
    maxSessionTtlMs,
    options: optionsFromDocument(options),
    allow: conditions(spec["allow"], "spec.allow", "allow"),
    deny: conditions(spec["deny"], "spec.deny", "deny"),
  };
}

/** Parses one role from YAML text. */
export function parseRoleYaml(text: string): Role {
  return roleFromDocument(parseYamlText(text, "role file", "ERR_BAD_ROLE"));
}

/** The YAML an admin would write for this role (what `mezctl get role/NAME` prints). */
export function roleToDocument(r: Role): Obj {
  const cond = (c: RoleAccess["allow"]) => ({ logins: c.logins, node_labels: c.labels });
  return {
    kind: "role",
    version: "v1",
    metadata: { name: r.role, description: r.description },
    spec: {
      options: { ...(r.maxSessionTtlMs > 0 ? { max_session_ttl: formatDuration(r.maxSessionTtlMs) } : {}), ...optionsToDocument(r.options ?? {}) },
      allow: cond(r.allow),
      deny: cond(r.deny),
    },
  };
}

