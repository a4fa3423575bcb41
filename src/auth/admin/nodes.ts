/** Nodes as the admin API sees them (SPEC §7, §13): list, node tokens (also to replace a node), rm. */
import { create } from "@bufbuild/protobuf";
import type { TokenVerifier } from "../../api/gen/mezite/v1/admin_pb.js";
import * as pb from "../../api/gen/mezite/v1/common_pb.js";
import { MeziteError, notFound } from "../../lib/errors.js";
import { LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN } from "../../rbac/names.js";
import type { AdminCaller, AuthContext } from "../context.js";
import { markRevocationsChanged } from "../locks.js";
import { revokeHostKey } from "../nodes.js";
import { decode, keys, load, type NodeClaim, type NodeRecord } from "../records.js";
import { newTokenRecord, storeToken } from "../tokens.js";

const PAGE_MAX = 1000;

export interface NodeListing {
  /** Nodes per page: 0 for all at once (what clients before paging ask), at most 1000. */
  pageSize?: number;
  /** The last page's nextPageToken; "" for the first page. */
  pageToken?: string;
  namePrefix?: string;
  /** Only nodes carrying every one of these labels with these values. */
  labels?: Record<string, string>;
}

/**
 * One page of nodes in name order, filtered on the server. Each call reads at most a page of
 * records, so a page may hold fewer nodes than asked (filtered out) and still name a next page.
 */
export async function listNodes(ctx: AuthContext, q: NodeListing = {}): Promise<{ nodes: pb.Node[]; nextPageToken: string }> {
  const size = q.pageSize ?? 0;
  if (size > PAGE_MAX) throw new MeziteError("ERR_USAGE", `page size ${size} is too large: at most ${PAGE_MAX}`);
  const token = q.pageToken ?? "";
  // A token is the last node name a page read: no "/", or it could reach past the nodes' keys.
  if (token.includes("/")) throw new MeziteError("ERR_USAGE", "invalid page token: pass the last reply's next_page_token");
  const prefix = q.namePrefix ?? "";
  if (prefix.includes("/")) throw new MeziteError("ERR_USAGE", `"${prefix.slice(0, 70)}" cannot begin a node name`);
  // One more than a page: a next page is named only when there is one.
  const items = await ctx.backend.range(keys.nodes + prefix, { ...(size ? { limit: size + 1 } : {}), ...(token ? { startAfter: keys.node(token) } : {}) });
  const more = size > 0 && items.length > size;
  const read = items.slice(0, size || items.length).map((i) => decode<NodeRecord>(i));
  const labels = Object.entries(q.labels ?? {});
  const nodes = read
    .filter((n) => labels.every(([k, v]) => n.labels[k] === v))
    .map((n) => create(pb.NodeSchema, { name: n.name, labels: n.labels, address: n.address, lastHeartbeat: BigInt(n.lastHeartbeat), hostCertExpires: BigInt(n.hostCertExpires), principals: n.principals }));
  return { nodes, nextPageToken: more ? read[read.length - 1]!.name : "" };
}

/** `tokens add --type=node [--replace=NAME]`: the labels the joining node gets, and nothing else. */
export async function addNodeToken(ctx: AuthContext, by: AdminCaller, labels: Record<string, string>, replaces: string, v: TokenVerifier | undefined): Promise<pb.TokenInfo> {
  for (const [k, val] of Object.entries(labels)) {
    if (!LABEL_KEY_PATTERN.test(k) || !LABEL_VALUE_PATTERN.test(val)) throw new MeziteError("ERR_USAGE", `invalid node label ${k.slice(0, 70)}=${val.slice(0, 70)}: use letters, digits and . _ - /`);
  }
  if (replaces && !(await ctx.backend.get(keys.node(replaces)))) throw notFound(`node "${replaces.slice(0, 260)}"`);
  return storeToken(ctx, newTokenRecord(ctx, v, { type: "node", labels, ...(replaces ? { replaces } : {}) }), by.audit.actor);
}

/**
 * `nodes rm NAME`: the node can no longer renew or heartbeat (its certificate names a node id
 * that is gone), leaves `nodes ls`, and its host key is listed as revoked to agents.
 */
export async function removeNode(ctx: AuthContext, by: AdminCaller, name: string): Promise<void> {
  let found = await load<NodeRecord>(ctx.backend, keys.node(name));
  for (let attempt = 1; ; attempt++) {
    if (!found) throw notFound(`node "${name.slice(0, 260)}"`);
    // Revoked first: there is no moment where the node is gone and its host key still trusted.
    await ctx.backend.write([revokeHostKey(found.value, ctx.now())]);
    if (await ctx.backend.deleteIf(keys.node(name), found.revision)) break;
    // Changed meanwhile. The same node (a heartbeat, every 30 s) is removed on a second try: a
    // failed rm must not leave a live node's host key revoked. Another node under the name (a
    // replacement) revoked this key itself when it joined.
    const now = await load<NodeRecord>(ctx.backend, keys.node(name));
    if (now && (now.value.id !== found.value.id || attempt === 5)) {
      throw new MeziteError("ERR_COMPARE_FAILED", `node "${name}" changed while being removed (a replacement joined?): look at mezctl nodes ls and retry`);
    }
    found = now;
  }
  const node = found.value;
  // Every service's change streams look at the revoked host keys when this mark moves: the node's
  // agent hears of its removal within seconds through whichever service it streams from.
  await markRevocationsChanged(ctx.backend);
  for (const p of new Set([node.name, ...node.principals].map((x) => x.toLowerCase()))) {
    const claim = await load<NodeClaim>(ctx.backend, keys.nodeClaim(p));
    if (claim?.value.nodeId === node.id) await ctx.backend.deleteIf(keys.nodeClaim(p), claim.revision);
  }
  await ctx.audit.emit({ type: "node.delete", ...by.audit, identity: name, detail: `node id ${node.id}` });
}
