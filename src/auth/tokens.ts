/**
 * One-time join tokens (SPEC §4), for agent identities and for nodes: what the server keeps of a
 * token (never the token), the checks a join makes, and the compare-and-swap that makes a token
 * work exactly once. Agent joins (join.ts) and node joins (nodes.ts) both go through here.
 */
import { create } from "@bufbuild/protobuf";
import type { TokenVerifier } from "../api/gen/mezite/v1/admin_pb.js";
import * as pb from "../api/gen/mezite/v1/common_pb.js";
import type { WriteOp } from "../backend/backend.js";
import { verifyProof } from "../ca/jointoken.js";
import { ed25519PublicFromRaw } from "../ca/sshkey.js";
import { MeziteError, isMeziteError, notFound } from "../lib/errors.js";
import type { AuthContext } from "./context.js";
import { encode, keys, load, loadAll, tokenKeptUntil, type Loaded, type TokenRecord } from "./records.js";

const MAX_TOKEN_TTL_MS = 30 * 24 * 3_600_000;
const DEFAULT_TOKEN_TTL_MS = 3_600_000;

/** The record of a new token from what mezctl sends: its id and the two derived public secrets. */
export function newTokenRecord(ctx: AuthContext, v: TokenVerifier | undefined, fields: Pick<TokenRecord, "type"> & Partial<TokenRecord>): TokenRecord {
  if (!v || !/^[0-9a-f]{32}$/.test(v.tokenId) || v.macKey.length !== 32) throw new MeziteError("ERR_USAGE", "invalid request: token verifier missing or malformed");
  try {
    ed25519PublicFromRaw(v.verifyKey);
  } catch {
    throw new MeziteError("ERR_USAGE", "invalid request: token verify key is not an Ed25519 key");
  }
  const ttl = v.ttlMs === 0n ? DEFAULT_TOKEN_TTL_MS : Number(v.ttlMs);
  if (ttl < 60_000 || ttl > MAX_TOKEN_TTL_MS) throw new MeziteError("ERR_USAGE", "token TTL must be between 1m and 720h");
  const now = ctx.now();
  return {
    id: v.tokenId,
    verifyKey: Buffer.from(v.verifyKey).toString("base64"),
    macKey: Buffer.from(v.macKey).toString("base64"),
    created: now,
    expires: now + ttl,
    used: false,
    ...fields,
  };
}

export async function storeToken(ctx: AuthContext, t: TokenRecord, actor: string): Promise<pb.TokenInfo> {
  const kept = { expires: tokenKeptUntil(t) };
  // The index entry first: a crash in between leaves an entry pointing at nothing, which readers skip.
  if (t.identityId) await ctx.backend.put(keys.identityToken(t.identityId, t.id), "", kept);
  await ctx.backend.create(keys.token(t.id), encode(t), kept);
  const replaces = t.replaces ? ` replaces=${t.replaces}` : "";
  await ctx.audit.emit({ type: "token.create", actor, identity: t.identityName ?? "", detail: `type=${t.type} id=${t.id.slice(0, 8)}${replaces}` });
  return tokenInfo(t);
}

export function tokenInfo(t: TokenRecord): pb.TokenInfo {
  return create(pb.TokenInfoSchema, {
    id: t.id,
    type: t.type,
    agentIdentity: t.identityName ?? "",
    labels: t.labels ?? {},
    created: BigInt(t.created),
    expires: BigInt(t.expires),
    used: t.used,
    replaces: t.replaces ?? "",
  });
}

export async function listTokens(ctx: AuthContext): Promise<pb.TokenInfo[]> {
  return (await loadAll<TokenRecord>(ctx.backend, keys.tokens)).map((t) => tokenInfo(t.value));
}

export async function deleteToken(ctx: AuthContext, id: string, actor: string): Promise<void> {
  const matches = (await loadAll<TokenRecord>(ctx.backend, keys.tokens)).filter((t) => id.length >= 8 && t.value.id.startsWith(id));
  if (matches.length === 0) throw notFound(`token ${id}`);
  if (matches.length > 1) throw new MeziteError("ERR_USAGE", `token prefix ${id} is ambiguous: give more characters`);
  const t = matches[0]!.value;
  await ctx.backend.delete(keys.token(t.id));
  if (t.identityId) await ctx.backend.delete(keys.identityToken(t.identityId, t.id));
  await ctx.audit.emit({ type: "token.delete", actor, identity: t.identityName ?? "", detail: `id=${id.slice(0, 8)}` });
}

/** The ids of an identity's tokens, from the per-identity index. */
export async function tokenIdsOf(ctx: AuthContext, identityId: string): Promise<string[]> {
  return (await ctx.backend.range(keys.identityTokens(identityId))).map((i) => i.key.slice(keys.identityTokens(identityId).length));
}

/** An identity's own tokens, through the per-identity index. */
export async function tokensOf(ctx: AuthContext, identityId: string): Promise<TokenRecord[]> {
  const found = await Promise.all((await tokenIdsOf(ctx, identityId)).map((id) => load<TokenRecord>(ctx.backend, keys.token(id))));
  return found.filter((t) => t !== undefined).map((t) => t.value);
}

export function unknownToken(): MeziteError {
  return new MeziteError("ERR_TOKEN_UNKNOWN", "the join token is unknown or was deleted: ask an admin for a new one");
}

/**
 * Finds the token and checks the proof and its state. Failures are distinct codes for the
 * caller's exit code and the audit trail; none of them repeats anything secret.
 */
export async function checkToken(
  ctx: AuthContext,
  tokenId: string,
  type: TokenRecord["type"],
  proofData: Buffer,
  proof: Uint8Array,
): Promise<Loaded<TokenRecord>> {
  const found = await load<TokenRecord>(ctx.backend, keys.token(tokenId));
  if (!found || found.value.type !== type) throw unknownToken();
  const verifyKey = ed25519PublicFromRaw(Buffer.from(found.value.verifyKey, "base64"));
  if (!verifyProof(verifyKey, proofData, proof)) throw new MeziteError("ERR_BAD_PROOF", "the join request's token proof does not verify: the token is wrong or the request was altered");
  if (found.value.used) throw usedToken();
  if (found.value.expires <= ctx.now()) throw new MeziteError("ERR_TOKEN_EXPIRED", "the join token has expired: ask an admin for a new one");
  return found;
}

function usedToken(): MeziteError {
  return new MeziteError("ERR_TOKEN_USED", "the join token was already used: tokens work once; ask an admin for a new one (mezctl agent-identities add-token)");
}

/** Marks the token used: the compare-and-swap that makes a token work exactly once. */
function markUsed(ctx: AuthContext, token: Loaded<TokenRecord>): WriteOp {
  return { op: "cas", key: keys.token(token.value.id), revision: token.revision, value: encode({ ...token.value, used: true, usedAt: ctx.now() }), expires: tokenKeptUntil(token.value) };
}

/**
 * Commits a join's writes, the token's use among them: a lost race for the token writes nothing.
 * `onConflict` turns a failed create or compare-and-swap of the join's own ops into its error
 * when the token itself is still unused (e.g. a node name another join claimed first).
 */
export async function commitJoin(ctx: AuthContext, token: Loaded<TokenRecord>, ops: WriteOp[], onConflict?: () => Promise<MeziteError>): Promise<void> {
  try {
    await ctx.backend.write([markUsed(ctx, token), ...ops]);
  } catch (e) {
    if (!isMeziteError(e, "ERR_COMPARE_FAILED") && !isMeziteError(e, "ERR_ALREADY_EXISTS")) throw e;
    const now = await load<TokenRecord>(ctx.backend, keys.token(token.value.id));
    if (!now) throw unknownToken();
    if (now.revision !== token.revision) throw usedToken();
    if (onConflict) throw await onConflict();
    throw e;
  }
}
