/**
 * Role templates (SPEC §19): `{{claims.NAME}}` in a role's allow.logins and allow.node_labels
 * values stands for that claim of the instance's join. Pure: the auth service resolves templates
 * at every issue and puts the resolved rules into the certificate, so nodes never see a template.
 *
 * A template yields nothing (never a wildcard, never an escape) when the claim is missing or the
 * resolved text is not a valid login name / label value, or is `*`. Substitution is one pass: a
 * claim's value is never read as a template itself.
 */
import { MeziteError } from "../lib/errors.js";
import type { LabelRule, RoleAccess } from "./access.js";
import { LABEL_VALUE_PATTERN, LOGIN_PATTERN } from "./names.js";

/** One template: the claim name is a plain identifier (JWT claim names as the join methods record them). */
const TEMPLATE = /\{\{\s*claims\.([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}/g;

/** The claims an instance's join recorded; a bootstrap-token join has none. */
export type JoinClaims = Readonly<Record<string, string>>;

export const hasTemplate = (value: string): boolean => value.includes("{") || value.includes("}");

/**
 * Checks one templated value as written in a role: every brace belongs to a `{{claims.NAME}}`,
 * and the text around the templates is of the kind the field takes (checked with each template
 * standing for a plain word). Throws ERR_BAD_ROLE naming `where`.
 */
export function checkTemplate(value: string, kind: "login" | "label value", where: string): void {
  const rest = value.replace(TEMPLATE, "x");
  if (rest.includes("{") || rest.includes("}")) {
    throw new MeziteError("ERR_BAD_ROLE", `${where}: "${value}" is not a valid template: write {{claims.NAME}}, e.g. {{claims.environment}}`);
  }
  const pattern = kind === "login" ? LOGIN_PATTERN : LABEL_VALUE_PATTERN;
  if (!pattern.test(rest)) throw new MeziteError("ERR_BAD_ROLE", `${where}: "${value}" cannot make a valid ${kind} whatever the claim holds`);
}

/** The text with every template replaced by its claim, or undefined when a claim is missing. */
function substitute(value: string, claims: JoinClaims | undefined): string | undefined {
  let missing = false;
  const out = value.replace(TEMPLATE, (_, name: string) => {
    const v = claims !== undefined && Object.hasOwn(claims, name) ? claims[name] : undefined;
    if (typeof v !== "string") missing = true;
    return v ?? "";
  });
  return missing ? undefined : out;
}

function resolveLogin(login: string, claims: JoinClaims | undefined): string | undefined {
  if (!hasTemplate(login)) return login;
  const v = substitute(login, claims);
  return v !== undefined && LOGIN_PATTERN.test(v) ? v : undefined;
}

function resolveLabelValue(value: string, claims: JoinClaims | undefined): string | undefined {
  if (!hasTemplate(value)) return value;
  const v = substitute(value, claims);
  return v !== undefined && v !== "*" && LABEL_VALUE_PATTERN.test(v) ? v : undefined;
}

/**
 * A rule's templated values resolved. A key keeps its place even when all its values yielded
 * nothing: an empty value list matches no node, whereas dropping the key would widen the rule.
 */
function resolveLabels(rule: LabelRule, claims: JoinClaims | undefined): LabelRule {
  const out: LabelRule = Object.create(null) as LabelRule;
  for (const [key, values] of Object.entries(rule)) {
    out[key] = [...new Set(values.flatMap((v) => resolveLabelValue(v, claims) ?? []))];
  }
  return out;
}

/** The role as it applies to one instance: allow rules with their templates resolved (deny rules take none). */
export function resolveRole<R extends RoleAccess>(role: R, claims: JoinClaims | undefined): R {
  return {
    ...role,
    allow: {
      logins: [...new Set(role.allow.logins.flatMap((l) => resolveLogin(l, claims) ?? []))],
      labels: resolveLabels(role.allow.labels, claims),
    },
  };
}

export function resolveRoles<R extends RoleAccess>(roles: R[], claims: JoinClaims | undefined): R[] {
  return roles.map((r) => resolveRole(r, claims));
}

/** Whether any allow login of these roles is a template (for saying why no login is left). */
export const hasLoginTemplates = (roles: RoleAccess[]): boolean => roles.some((r) => r.allow.logins.some(hasTemplate));

/** The claim names a role's templates use. */
export function templateClaims(role: RoleAccess): string[] {
  const values = [...role.allow.logins, ...Object.values(role.allow.labels).flat()];
  return [...new Set(values.flatMap((v) => [...v.matchAll(TEMPLATE)].map((m) => m[1]!)))];
}
