/**
 * Join token resources (SPEC §14): `kind: join_token` documents that let a CI job or a workload
 * join with the ID token (a JWT) its platform gives it, under rules on the token's claims. This
 * module checks documents (every field named when wrong, rules that match too much refused), and
 * matches claims against the rules. The JWT itself is verified in id-tokens.ts.
 */
import { create } from "@bufbuild/protobuf";
import * as pb from "../api/gen/mezite/v1/common_pb.js";
import { MeziteError, notFound } from "../lib/errors.js";
import { NAME_PATTERN } from "../rbac/names.js";
import { isKind } from "../lib/yaml-text.js";
import type { AdminCaller, AuthContext } from "./context.js";
import { createResource, keys, load, loadAll, type IdentityRecord } from "./records.js";

export type JoinMethod = "github" | "gitlab" | "oidc";
const METHODS: readonly JoinMethod[] = ["github", "gitlab", "oidc"];

/** A rule: claim name → pattern (`*` matches any run of characters). */
export type Rule = Record<string, string>;

export interface JoinTokenRecord {
  name: string;
  description: string;
  identityName: string;
  /** The identity when the resource was made: one re-added under the same name is another. */
  identityId: string;
  method: JoinMethod;
  issuer: string;
  /** A JWKS JSON document, for issuers the service cannot reach. */
  staticJwks?: string;
  allow: Rule[];
  created: number;
}

/** Claims each method's rules may name; and of those, one that every rule must pin down. */
const METHOD_RULES: Record<Exclude<JoinMethod, "oidc">, { fields: string[]; anchors: string[] }> = {
  github: {
    fields: ["repository", "repository_owner", "workflow", "environment", "actor", "ref", "ref_type", "sub", "job_workflow_ref"],
    anchors: ["repository", "repository_owner", "sub"],
  },
  gitlab: {
    fields: ["sub", "project_path", "namespace_path", "ref", "ref_type", "ref_protected", "environment", "pipeline_source", "user_login"],
    anchors: ["sub", "project_path", "namespace_path"],
  },
};

/** What an instance records of who joined, by method (SPEC §14); also what role templates can name (SPEC §19). */
export const RECORDED_CLAIMS: Record<JoinMethod, string[]> = {
  github: ["repository", "workflow", "ref", "run_id", "sha", "actor", "environment", "sub"],
  gitlab: ["project_path", "pipeline_id", "ref", "sha", "user_login", "environment", "sub"],
  oidc: ["iss", "sub"],
};

const GITHUB_ISSUER = "https://token.actions.githubusercontent.com";
const MAX_RULES = 100;
const MAX_PATTERN = 256;
const MAX_JWKS = 64 * 1024;

function bad(path: string, why: string): MeziteError {
  return new MeziteError("ERR_USAGE", `join_token ${path}: ${why}`);
}

type Obj = Record<string, unknown>;

function object(v: unknown, path: string, allowed: string[]): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad(path, "must be a mapping");
  for (const k of Object.keys(v)) if (!allowed.includes(k)) throw bad(`${path}.${k}`, `unknown field (known: ${allowed.join(", ")})`);
  return v as Obj;
}

function text(o: Obj, key: string, path: string, required: boolean, max = 256): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) {
    if (required) throw bad(`${path}.${key}`, "is required");
    return undefined;
  }
  if (typeof v !== "string" || v.length === 0 || v.length > max) throw bad(`${path}.${key}`, `must be a non-empty string of at most ${max} characters`);
  return v;
}

/** Names a rule may not use as a claim: they reach into a JavaScript object's prototype. */
const RESERVED_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

/** "OWNER/..." with OWNER literal: the part before the first `/` has no `*` (and is not empty). */
const LITERAL_OWNER = /^[^*/]+\//;

/**
 * Why a rule's anchor could match someone else's pipeline, or undefined (SPEC §14 "Anchors are
 * literal"): whose repositories or projects may join is always spelled out, never globbed.
 */
function anchorProblem(method: Exclude<JoinMethod, "oidc">, claim: string, pattern: string): string | undefined {
  if (method === "github") {
    if (claim === "repository_owner" && pattern.includes("*")) return "must be literal (no *): it names whose repositories may join";
    if (claim === "repository" && !LITERAL_OWNER.test(pattern)) return "must be OWNER/REPO with a literal owner (acme/* is fine, */webapp is not)";
    if (claim === "sub" && !/^repo:[^*/]+\//.test(pattern)) return 'must start with a literal "repo:OWNER/"';
  } else {
    if (claim === "project_path" && !LITERAL_OWNER.test(pattern)) return "must be GROUP/PROJECT with a literal group (acme/* is fine, */webapp is not)";
    if (claim === "namespace_path" && pattern.includes("*")) return "must be literal (no *): it names whose projects may join";
    if (claim === "sub" && !/^project_path:[^*/]+\//.test(pattern)) return 'must start with a literal "project_path:GROUP/"';
  }
  return undefined;
}

function rules(v: unknown, path: string, method: JoinMethod): Rule[] {
  if (!Array.isArray(v) || v.length === 0) throw bad(path, "needs at least one rule");
  if (v.length > MAX_RULES) throw bad(path, `at most ${MAX_RULES} rules`);
  return v.map((raw, i) => {
    const at = `${path}[${i}]`;
    const known = method === "oidc" ? undefined : METHOD_RULES[method].fields;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad(at, "must be a mapping of claim to pattern");
    const rule: Rule = {};
    for (const [claim, pattern] of Object.entries(raw as Obj)) {
      if (RESERVED_KEYS.has(claim)) throw bad(`${at}.${claim}`, "is a reserved name, not a claim");
      if (known && !known.includes(claim)) throw bad(`${at}.${claim}`, `unknown field (a ${method} rule may set ${known.join(", ")})`);
      if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(claim)) throw bad(`${at}.${claim}`, "is not a claim name");
      const value = typeof pattern === "boolean" || typeof pattern === "number" ? String(pattern) : pattern;
      if (typeof value !== "string" || value.length === 0 || value.length > MAX_PATTERN) throw bad(`${at}.${claim}`, `must be a pattern of 1 to ${MAX_PATTERN} characters`);
      const problem = method === "oidc" ? undefined : anchorProblem(method, claim, value);
      if (problem) throw bad(`${at}.${claim}`, problem);
      rule[claim] = value;
    }
    if (Object.keys(rule).length === 0) throw bad(at, "is empty: it would match every token");
    if (method === "oidc") {
      if (!Object.values(rule).some((p) => !p.includes("*"))) throw bad(at, "matches too much: give at least one claim a literal value (no *)");
    } else {
      const anchors = METHOD_RULES[method].anchors;
      if (!anchors.some((a) => Object.hasOwn(rule, a))) throw bad(at, `is too broad: set at least one of ${anchors.join(", ")}`);
    }
    return rule;
  });
}

function staticJwks(o: Obj, path: string): string | undefined {
  const s = text(o, "static_jwks", path, false, MAX_JWKS);
  if (s === undefined) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(s);
  } catch {
    throw bad(`${path}.static_jwks`, "is not JSON");
  }
  if (typeof doc !== "object" || doc === null || !Array.isArray((doc as Obj)["keys"])) throw bad(`${path}.static_jwks`, "is not a JWKS (an object with a keys array)");
  return s;
}

function httpsUrl(s: string, path: string): string {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw bad(path, "is not a URL");
  }
  if (u.protocol !== "https:" || u.search || u.hash || u.username) throw bad(path, "must be an https:// URL without query, fragment or user");
  return s.replace(/\/+$/, "");
}

/** Checks a join_token document; returns the record to store (without the identity). */
export function parseJoinTokenDocument(doc: unknown): Omit<JoinTokenRecord, "identityId" | "created"> {
  const top = object(doc, "document", ["kind", "version", "metadata", "spec"]);
  if (!isKind(top["kind"], "join_token")) throw bad("kind", 'must be "join_token"');
  if (top["version"] !== undefined && top["version"] !== "v1") throw bad("version", 'must be "v1" or left out');
  const meta = object(top["metadata"], "metadata", ["name", "description"]);
  const name = text(meta, "name", "metadata", true)!;
  if (!NAME_PATTERN.test(name)) throw bad("metadata.name", "use [a-z0-9][a-z0-9._-]{0,62}");
  const spec = object(top["spec"], "spec", ["agent_identity", "join_method", ...METHODS]);
  const identityName = text(spec, "agent_identity", "spec", true)!;
  const method = text(spec, "join_method", "spec", true) as JoinMethod;
  if (!METHODS.includes(method)) throw bad("spec.join_method", `must be one of ${METHODS.join(", ")}`);
  for (const other of METHODS) if (other !== method && spec[other] !== undefined) throw bad(`spec.${other}`, `does not apply to join_method ${method}`);
  const path = `spec.${method}`;
  let section: Obj;
  let issuer: string;
  if (method === "github") {
    section = object(spec[method], path, ["allow", "static_jwks", "enterprise_slug", "enterprise_server_host"]);
    const slug = text(section, "enterprise_slug", path, false, 100);
    const host = text(section, "enterprise_server_host", path, false, 253);
    if (slug && host) throw bad(path, "give enterprise_slug or enterprise_server_host, not both");
    if (slug && !/^[A-Za-z0-9-]+$/.test(slug)) throw bad(`${path}.enterprise_slug`, "is not a slug");
    if (host && !/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(host)) throw bad(`${path}.enterprise_server_host`, "is not a host name");
    issuer = host ? `https://${host}/_services/token` : slug ? `${GITHUB_ISSUER}/${slug}` : GITHUB_ISSUER;
  } else if (method === "gitlab") {
    section = object(spec[method], path, ["allow", "static_jwks", "domain"]);
    const domain = text(section, "domain", path, false, 253) ?? "gitlab.com";
    if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(domain)) throw bad(`${path}.domain`, "is not a host name");
    issuer = `https://${domain}`;
  } else {
    section = object(spec[method], path, ["issuer", "allow", "static_jwks"]);
    issuer = httpsUrl(text(section, "issuer", path, true, 1024)!, `${path}.issuer`);
  }
  const jwks = staticJwks(section, path);
  return {
    name,
    description: text(meta, "description", "metadata", false, 1024) ?? "",
    identityName,
    method,
    issuer,
    ...(jwks !== undefined ? { staticJwks: jwks } : {}),
    allow: rules(section["allow"], `${path}.allow`, method),
  };
}

/** The document `get` shows: what was created, in canonical form. */
export function joinTokenDocument(r: JoinTokenRecord): unknown {
  const section: Obj = { allow: r.allow };
  if (r.method === "oidc") section["issuer"] = r.issuer;
  else if (r.method === "gitlab" && r.issuer !== "https://gitlab.com") section["domain"] = r.issuer.slice("https://".length);
  else if (r.method === "github" && r.issuer !== GITHUB_ISSUER) {
    if (r.issuer.startsWith(`${GITHUB_ISSUER}/`)) section["enterprise_slug"] = r.issuer.slice(GITHUB_ISSUER.length + 1);
    else section["enterprise_server_host"] = r.issuer.slice("https://".length, -"/_services/token".length);
  }
  if (r.staticJwks) section["static_jwks"] = r.staticJwks;
  return {
    kind: "join_token",
    version: "v1",
    metadata: { name: r.name, ...(r.description ? { description: r.description } : {}) },
    spec: { agent_identity: r.identityName, join_method: r.method, [r.method]: section },
  };
}

function toProto(r: JoinTokenRecord): pb.JoinTokenResource {
  return create(pb.JoinTokenResourceSchema, {
    name: r.name,
    agentIdentity: r.identityName,
    joinMethod: r.method,
    issuer: r.issuer,
    documentJson: JSON.stringify(joinTokenDocument(r)),
    created: BigInt(r.created),
  });
}

/** A claim value as rules compare it: strings as they are, anything else as JSON text. */
export function claimText(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  return typeof v === "string" ? v : JSON.stringify(v);
}

/**
 * Whether `value` matches `pattern`, where `*` matches any run of characters and nothing else is
 * special. No regular expression is built from a pattern: the text before the first `*` must
 * begin the value, the text after the last must end it, and each part between stars is found
 * left to right with indexOf at its leftmost place (a later place never leaves more room for the
 * parts after it), so the time grows linearly with the value, whatever the claim holds.
 */
export function globMatches(pattern: string, value: string): boolean {
  const parts = pattern.split("*");
  if (parts.length === 1) return pattern === value;
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (value.length < first.length + last.length || !value.startsWith(first) || !value.endsWith(last)) return false;
  const end = value.length - last.length;
  let at = first.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const part = parts[i]!;
    if (part === "") continue;
    const found = value.indexOf(part, at);
    if (found < 0 || found + part.length > end) return false;
    at = found + part.length;
  }
  return true;
}

/** Longest claim a rule is tried against, in bytes (SPEC §14). */
export const MAX_CLAIM_BYTES = 1024;

/** A claim of the token itself, never one inherited from Object.prototype (`constructor`, `toString`). */
const ownClaim = (claims: Record<string, unknown>, name: string) => (Object.hasOwn(claims, name) ? claimText(claims[name]) : undefined);

/**
 * The first rule every field of which matches the claims, or undefined. A claim over
 * MAX_CLAIM_BYTES that a rule names refuses the token before any rule is tried.
 */
export function matchingRule(allow: Rule[], claims: Record<string, unknown>): Rule | undefined {
  for (const rule of allow) {
    for (const claim of Object.keys(rule)) {
      const value = ownClaim(claims, claim);
      if (value !== undefined && (value.length > MAX_CLAIM_BYTES || Buffer.byteLength(value) > MAX_CLAIM_BYTES)) {
        throw new MeziteError("ERR_TOKEN_INVALID", `the ID token was refused: a claim is longer than ${MAX_CLAIM_BYTES} bytes`);
      }
    }
  }
  return allow.find((rule) =>
    Object.entries(rule).every(([claim, pattern]) => {
      const value = ownClaim(claims, claim);
      return value !== undefined && globMatches(pattern, value);
    }),
  );
}

// ---- admin operations

export async function createJoinToken(ctx: AuthContext, by: AdminCaller, documentJson: string, force: boolean): Promise<{ joinToken: pb.JoinTokenResource; replaced: boolean }> {
  let doc: unknown;
  try {
    doc = JSON.parse(documentJson);
  } catch {
    throw new MeziteError("ERR_USAGE", "invalid request: the join_token document is not JSON");
  }
  const parsed = parseJoinTokenDocument(doc);
  const identity = await load<IdentityRecord>(ctx.backend, keys.identity(parsed.identityName));
  if (!identity) throw notFound(`agent identity "${parsed.identityName}" (spec.agent_identity)`);
  const record: JoinTokenRecord = { ...parsed, identityId: identity.value.id, created: ctx.now() };
  const exists = () => new MeziteError("ERR_ALREADY_EXISTS", `join_token "${record.name}" already exists: use --force to overwrite it`);
  const replaced = await createResource(ctx.backend, keys.joinToken(record.name), record, force, exists);
  await ctx.audit.emit({ type: "join_token.create", ...by.audit, identity: record.identityName, detail: `${record.name} method=${record.method} issuer=${record.issuer}${replaced ? " (replaced)" : ""}` });
  return { joinToken: toProto(record), replaced };
}

export async function listJoinTokens(ctx: AuthContext): Promise<pb.JoinTokenResource[]> {
  return (await loadAll<JoinTokenRecord>(ctx.backend, keys.joinTokens)).map((r) => toProto(r.value));
}

export async function deleteJoinToken(ctx: AuthContext, by: AdminCaller, name: string): Promise<void> {
  const found = await load<JoinTokenRecord>(ctx.backend, keys.joinToken(name));
  if (!found) throw notFound(`join_token "${name.slice(0, 70)}"`);
  await ctx.backend.delete(keys.joinToken(name));
  await ctx.audit.emit({ type: "join_token.delete", ...by.audit, identity: found.value.identityName, detail: name });
}
