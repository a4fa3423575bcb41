/**
 * The dashboard's pages (SPEC §18), rendered on the server from the same operations the admin API
 * runs. Listings read one page of the backend's range at a time (keyset paging by key), so a
 * page costs the same with 100 identities or 100,000 (SPEC §20).
 */
import type * as pb from "../api/gen/mezite/v1/common_pb.js";
import { getCaStatus } from "../auth/admin/ca-rotation.js";
import { statusOf } from "../auth/admin/identities.js";
import { listLocks } from "../auth/admin/locks.js";
import type { AuditEvent } from "../auth/audit.js";
import type { AuthContext } from "../auth/context.js";
import { activeLocks } from "../auth/locks.js";
import { decode, keys, loadAll, type IdentityRecord, type InstanceRecord, type NodeRecord, type StoredRole } from "../auth/records.js";
import { tokensOf } from "../auth/tokens.js";
import { principalsFor } from "../rbac/access.js";
import { Html, html, postForm, query, when } from "./html.js";
import type { Session } from "./sessions.js";

export const PAGE_SIZE = 50;
/** How far back the overview's chart reaches, and the most renewal events it reads for it. */
export const CHART_HOURS = 3;
const CHART_MAX_EVENTS = 500_000;

/** A search prefix or page cursor that could be part of a name: anything else matches nothing. */
const NAME_PART = /^[a-z0-9._-]{0,63}$/;

function lockBadge(locked: boolean): Html {
  return locked ? html`<span class="badge bad">locked</span>` : html`<span class="badge ok">active</span>`;
}

// ---- overview

export async function overview(ctx: AuthContext): Promise<Html> {
  const now = ctx.now();
  const [identities, instances, nodes, locks, cas, chart] = await Promise.all([
    ctx.backend.count(keys.identities),
    ctx.backend.count(keys.instances),
    ctx.backend.count(keys.nodes),
    activeLocks(ctx.backend, now).then((l) => l.length),
    getCaStatus(ctx),
    renewalsPerMinute(ctx, now),
  ]);
  const card = (n: number, label: string, href: string) => html`<a class="card" href="${href}"><b>${n}</b>${label}</a>`;
  return html`<section class="cards">${card(identities, "agent identities", "/identities")}${card(instances, "instances", "/identities")}${card(nodes, "nodes", "/nodes")}${card(locks, "active locks", "/locks")}</section>
<h2>Renewals per minute, last ${CHART_HOURS} h</h2>
<p class="muted">${chart.okTotal} renewals, <span class="${chart.failedTotal ? "bad" : ""}">${chart.failedTotal} failed</span>${chart.truncated ? " (the oldest events were not read: too many)" : ""}.</p>
<div id="chart" data-series="${JSON.stringify({ t: chart.t, ok: chart.ok, failed: chart.failed })}"></div>
<h2>Certificate authorities</h2>
<table><thead><tr><th>CA</th><th>phase</th><th>mode</th><th>phase started</th><th>next step</th><th>keys (holders of each)</th></tr></thead><tbody>
${cas.map((c) => caRow(c, now))}</tbody></table>`;
}

function caRow(c: import("../api/gen/mezite/v1/admin_pb.js").CaStatus, now: number): Html {
  const behind = c.keys.find((k) => k.signing) ? c.holdersTotal - (c.keys.find((k) => k.signing)?.holders ?? 0) : 0;
  return html`<tr><td>${c.type}</td><td>${c.phase}</td><td>${c.mode || "-"}</td><td>${c.phaseStarted ? when(c.phaseStarted, now) : "-"}</td><td>${c.nextPhaseAt ? when(c.nextPhaseAt, now) : "-"}</td>
<td>${c.keys.map((k) => html`<div><code>${k.sshFingerprint}</code> ${k.role}${k.signing ? ", signing" : ""}: ${k.holders}</div>`)}${c.phase !== "standby" && behind > 0 ? html`<div class="bad">${behind} of ${c.holdersTotal} not yet on the signing key</div>` : ""}</td></tr>`;
}

/** Renewal audit events per minute since CHART_HOURS ago: successes and failures. */
async function renewalsPerMinute(ctx: AuthContext, now: number) {
  const minutes = CHART_HOURS * 60;
  const start = Math.floor(now / 60_000) * 60_000 - (minutes - 1) * 60_000;
  const ok = new Array<number>(minutes).fill(0);
  const failed = new Array<number>(minutes).fill(0);
  let read = 0;
  let truncated = false;
  for await (const events of ctx.audit.list(start, "agent_identity.renew", 0)) {
    for (const e of events) {
      const i = Math.floor((e.time - start) / 60_000);
      if (i < 0 || i >= minutes) continue;
      (e.success ? ok : failed)[i]!++;
    }
    read += events.length;
    if (read >= CHART_MAX_EVENTS) {
      truncated = true;
      break;
    }
  }
  const t = ok.map((_, i) => (start + i * 60_000) / 1000);
  const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
  return { t, ok, failed, okTotal: sum(ok), failedTotal: sum(failed), truncated };
}

// ---- agent identities

export interface IdentityQuery {
  q: string;
  after: string;
}

/** One page of identities whose names start with q, after the cursor, in name order. */
export async function identityPage(ctx: AuthContext, iq: IdentityQuery): Promise<{ rows: pb.AgentIdentityStatus[]; next: string | undefined }> {
  if (!NAME_PART.test(iq.q) || !NAME_PART.test(iq.after)) return { rows: [], next: undefined };
  const prefix = keys.identities + iq.q;
  const items = await ctx.backend.range(prefix, { limit: PAGE_SIZE + 1, ...(iq.after ? { startAfter: keys.identity(iq.after) } : {}) });
  const page = items.slice(0, PAGE_SIZE).map((i) => decode<IdentityRecord>(i));
  const now = ctx.now();
  const [locks, roles] = await Promise.all([activeLocks(ctx.backend, now), loadAll<StoredRole>(ctx.backend, keys.roles)]);
  const roleBy = new Map(roles.map((r) => [r.value.role, r.value]));
  const rows = await Promise.all(
    page.map(async (id) => {
      const [instances, tokens] = await Promise.all([loadAll<InstanceRecord>(ctx.backend, keys.instancesOf(id.id)), tokensOf(ctx, id.id)]);
      const rs = id.roles.map((r) => roleBy.get(r)).filter((r) => r !== undefined);
      return statusOf(id, instances.map((i) => i.value), tokens, locks, rs, now, principalsFor(rs));
    }),
  );
  return { rows, next: items.length > PAGE_SIZE ? page[page.length - 1]!.name : undefined };
}

export function identitiesView(iq: IdentityQuery, res: { rows: pb.AgentIdentityStatus[]; next: string | undefined }, now: number): Html {
  return html`<form class="bar" method="get" action="/identities"><label>Name starts with <input name="q" value="${iq.q}" autocomplete="off" spellcheck="false"></label><button type="submit">Search</button>
${iq.q || iq.after ? html`<a href="/identities">clear</a>` : ""}</form>
<table id="identities"><thead><tr><th>name ↑</th><th>roles</th><th>status</th><th>instances</th><th>generation</th><th>last seen</th><th>cert expiry</th><th>token</th></tr></thead><tbody>
${res.rows.length === 0 ? html`<tr><td colspan="8" class="muted">no agent identity${iq.q ? html` starts with “${iq.q}”` : ""}</td></tr>` : ""}
${res.rows.map(
  (s) => html`<tr><td><a href="/identities/${encodeURIComponent(s.name)}">${s.name}</a></td><td>${s.roles.join(", ")}</td><td>${lockBadge(s.locked)}</td><td class="num">${s.instances.length}</td>
<td class="num">${s.generation}</td><td>${when(s.lastSeen, now)}</td><td>${when(s.certExpires, now)}</td><td>${s.tokenState}</td></tr>`,
)}</tbody></table>
<div class="pager">${iq.after ? html`<a href="/identities${query({ q: iq.q })}">« first page</a>` : ""}${res.next ? html`<a rel="next" href="/identities${query({ q: iq.q, after: res.next })}">next page »</a>` : ""}</div>
<p class="muted">In name order, ${PAGE_SIZE} a page, read from the backend a page at a time.</p>`;
}

// ---- one identity

export function identityView(s: pb.AgentIdentityStatus, session: Session, now: number, flash: Html | undefined): Html {
  const base = `/identities/${encodeURIComponent(s.name)}`;
  return html`${flash ? html`<div class="flash">${flash}</div>` : ""}
<dl><dt>status</dt><dd>${lockBadge(s.locked)}</dd><dt>roles</dt><dd>${s.roles.join(", ")}</dd>
<dt>principals</dt><dd>${s.principals.length ? s.principals.join(", ") : html`<span class="bad">${s.principalsError || "none"}</span>`}</dd>
<dt>generation</dt><dd>${s.generation}</dd><dt>last seen</dt><dd>${when(s.lastSeen, now)}${s.lastAddress ? html` from <code>${s.lastAddress}</code>` : ""}</dd>
<dt>cert expiry</dt><dd>${when(s.certExpires, now)}</dd><dt>created</dt><dd>${when(s.created, now)}</dd><dt>newest token</dt><dd>${s.tokenState}</dd><dt>id</dt><dd><code>${s.id}</code></dd></dl>
<h2>Actions</h2>
<p>${
    s.locks.some((l) => l.targetKind === "agent_identity")
      ? postForm(session, `${base}/unlock`, "Unlock")
      : postForm(session, `${base}/lock`, "Lock", html`<input name="reason" placeholder="reason" maxlength="200"> `, "danger")
  }
 ${postForm(session, `${base}/tokens`, "Add a join token (new instance)")}</p>
<h2>Instances</h2>
<table id="instances"><thead><tr><th>id</th><th>status</th><th>join method</th><th>address</th><th>generation</th><th>last seen</th><th>cert expiry</th><th>CI claims</th><th></th></tr></thead><tbody>
${s.instances.length === 0 ? html`<tr><td colspan="9" class="muted">no instance yet: a daemon joins with a token</td></tr>` : ""}
${s.instances.map(
  (i) => html`<tr><td><code>${i.id}</code></td><td>${lockBadge(i.locked)}</td><td>${i.joinMethod}</td><td><code>${i.address}</code></td><td class="num">${i.generation}</td>
<td>${when(i.lastSeen, now)}</td><td>${when(i.certExpires, now)}</td><td>${Object.entries(i.claims).map(([k, v]) => html`<div><span class="muted">${k}</span> ${v}</div>`)}</td>
<td>${postForm(session, `${base}/instances/${encodeURIComponent(i.id)}/end`, "End", "", "danger")}</td></tr>`,
)}</tbody></table>
<p class="muted">Host name, OS, architecture and mezd version appear here once daemons report them.</p>
<h2>Locks</h2>
${s.locks.length === 0 ? html`<p class="muted">none</p>` : html`<table><thead><tr><th>target</th><th>reason</th><th>created</th><th>expires</th></tr></thead><tbody>${s.locks.map((l) => html`<tr><td>${l.targetKind} ${l.target}</td><td>${l.reason}</td><td>${when(l.created, now)}</td><td>${l.expires ? when(l.expires, now) : "when removed"}</td></tr>`)}</tbody></table>`}`;
}

export function tokenView(name: string, token: string, authAddr: string, expires: number, now: number): Html {
  return html`<div class="flash">This is the only time the token is shown: copy it now. It works once, ${when(expires, now)}.</div>
<p class="secret" id="token">${token}</p>
<p>On the machine: <code>mezd identity start --auth-server=${authAddr} --token=&lt;token&gt; --destination-dir=/var/lib/mezite/identity</code></p>
<p><a href="/identities/${encodeURIComponent(name)}">back to ${name}</a></p>`;
}

// ---- nodes, locks

export async function nodesView(ctx: AuthContext, after: string): Promise<Html> {
  const now = ctx.now();
  const items = await ctx.backend.range(keys.nodes, { limit: PAGE_SIZE + 1, ...(after && !after.includes("/") ? { startAfter: keys.node(after) } : {}) });
  const nodes = items.slice(0, PAGE_SIZE).map((i) => decode<NodeRecord>(i));
  const next = items.length > PAGE_SIZE ? nodes[nodes.length - 1]!.name : undefined;
  return html`<table id="nodes"><thead><tr><th>name ↑</th><th>labels</th><th>principals</th><th>address</th><th>last heartbeat</th><th>host cert expiry</th></tr></thead><tbody>
${nodes.length === 0 ? html`<tr><td colspan="6" class="muted">no nodes</td></tr>` : ""}
${nodes.map((n) => html`<tr><td>${n.name}</td><td>${Object.entries(n.labels).map(([k, v]) => html`<span class="badge">${k}=${v}</span> `)}</td><td>${n.principals.join(", ")}</td><td><code>${n.address}</code></td><td>${when(n.lastHeartbeat, now)}</td><td>${when(n.hostCertExpires, now)}</td></tr>`)}
</tbody></table><div class="pager">${after ? html`<a href="/nodes">« first page</a>` : ""}${next ? html`<a rel="next" href="/nodes${query({ after: next })}">next page »</a>` : ""}</div>`;
}

export async function locksView(ctx: AuthContext, session: Session): Promise<Html> {
  const now = ctx.now();
  const locks = await listLocks(ctx);
  return html`<table id="locks"><thead><tr><th>target</th><th>reason</th><th>created</th><th>expires</th><th></th></tr></thead><tbody>
${locks.length === 0 ? html`<tr><td colspan="5" class="muted">no active locks</td></tr>` : ""}
${locks.map((l) => html`<tr><td>${l.targetKind} ${l.targetKind === "agent_identity" ? html`<a href="/identities/${encodeURIComponent(l.target)}">${l.target}</a>` : html`<code>${l.target}</code>`}</td><td>${l.reason}</td><td>${when(l.created, now)}</td><td>${l.expires ? when(l.expires, now) : "when removed"}</td>
<td>${postForm(session, `/locks/${encodeURIComponent(l.id)}/remove`, "Remove")}</td></tr>`)}</tbody></table>`;
}

// ---- audit

export const AUDIT_WINDOWS: Record<string, number> = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 24 * 3_600_000, "7d": 7 * 24 * 3_600_000 };
const AUDIT_ROWS = 200;

/** The newest AUDIT_ROWS events of `type` (or its prefix) in the window, newest first. */
export async function auditEvents(ctx: AuthContext, type: string, window: string): Promise<AuditEvent[]> {
  const since = ctx.now() - (AUDIT_WINDOWS[window] ?? AUDIT_WINDOWS["1h"]!);
  const out: AuditEvent[] = [];
  for await (const page of ctx.audit.list(since, type, AUDIT_ROWS)) out.push(...page);
  return out.reverse();
}

export function auditRows(events: AuditEvent[], now: number): Html {
  if (events.length === 0) return html`<tr><td colspan="7" class="muted">no events</td></tr>`;
  return html`${events.map(
    (e) => html`<tr><td>${when(e.time, now)}</td><td>${e.type}</td><td>${e.success ? html`<span class="ok">ok</span>` : html`<span class="bad">${e.error || "failed"}</span>`}</td>
<td>${e.identity ? html`<a href="/identities/${encodeURIComponent(e.identity)}">${e.identity}</a>` : ""}${e.instance ? html` <code>${e.instance.slice(0, 8)}</code>` : ""}</td><td>${e.actor}</td><td><code>${e.remote_addr}</code></td><td>${e.detail}${e.serial ? ` serial ${e.serial}` : ""}</td></tr>`,
  )}`;
}

export function auditView(type: string, window: string, events: AuditEvent[], now: number): Html {
  const windows = Object.keys(AUDIT_WINDOWS);
  return html`<form class="bar" method="get" action="/audit"><label>Type <input name="type" value="${type}" placeholder="e.g. lock or agent_identity.renew"></label>
<label>Since <select name="since">${windows.map((w) => html`<option${new Html(w === window ? " selected" : "")}>${w}</option>`)}</select></label><button type="submit">Filter</button>
<label><input type="checkbox" id="live" checked> live</label></form>
<table><thead><tr><th>time ↓</th><th>type</th><th>result</th><th>identity</th><th>actor</th><th>remote</th><th>detail</th></tr></thead><tbody id="audit-rows">${auditRows(events, now)}</tbody></table>
<p class="muted">The newest ${AUDIT_ROWS} events, newest first; “live” refreshes them every 3 s.</p>`;
}

