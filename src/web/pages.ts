/**
 * The dashboard's pages (SPEC §18), rendered on the server from the same operations the admin API
 * runs. Listings read one page of the backend's range at a time (keyset paging by key), so a
 * page costs the same with 100 identities or 100,000 (SPEC §20).
 */
import type * as pb from "../api/gen/mezite/v1/common_pb.js";
import { create } from "@bufbuild/protobuf";
import { CaKeyStatusSchema, CaStatusSchema, type CaStatus } from "../api/gen/mezite/v1/admin_pb.js";
import { getCaStatus } from "../auth/admin/ca-rotation.js";
import { CA_KINDS } from "../auth/cas.js";
import { NAME_PREFIX, readStatus, statusMaker } from "../auth/admin/identities.js";
import { listLocks } from "../auth/admin/locks.js";
import { listNodes } from "../auth/admin/nodes.js";
import { newestEvents, type AuditEvent } from "../auth/audit.js";
import type { AuthContext } from "../auth/context.js";
import { activeLocks } from "../auth/locks.js";
import { decode, keys, type IdentityRecord } from "../auth/records.js";
import { identityStartHint } from "../lib/hints.js";
import { Html, html, postForm, query, when } from "./html.js";
import { CHART_HOURS, type RenewalChart } from "./renewals.js";
import type { Session } from "./sessions.js";

export const PAGE_SIZE = 50;

function lockBadge(locked: boolean): Html {
  return locked ? html`<span class="badge bad">locked</span>` : html`<span class="badge ok">active</span>`;
}

/** An identity's state as `agent-identities ls` shows it: locked, active, awaiting join or no instance. */
function stateBadge(state: string): Html {
  return html`<span class="badge ${state === "locked" ? "bad" : state === "active" ? "ok" : "muted"}">${state}</span>`;
}

// ---- overview

/** What the overview keeps between views, per server: the renewals' counts, the CA holders' count. */
export interface OverviewState {
  renewals: RenewalChart;
  cas?: { at: number; cas: CaStatus[] };
}

export async function overview(ctx: AuthContext, state: OverviewState): Promise<Html> {
  const now = ctx.now();
  const [identities, instances, nodes, locks, cas, chart] = await Promise.all([
    ctx.backend.count(keys.identities),
    ctx.backend.count(keys.instances),
    ctx.backend.count(keys.nodes),
    activeLocks(ctx.backend, now).then((l) => l.length),
    caStatuses(ctx, state, now),
    state.renewals.series(now),
  ]);
  const card = (n: number, label: string, href: string) => html`<a class="card" href="${href}"><b>${n}</b>${label}</a>`;
  return html`<section class="cards">${card(identities, "agent identities", "/identities")}${card(instances, "instances", "/identities")}${card(nodes, "nodes", "/nodes")}${card(locks, "active locks", "/locks")}</section>
<h2>Renewals per minute, last ${CHART_HOURS} h</h2>
<p class="muted">${chart.okTotal} renewals, <span class="${chart.failedTotal ? "bad" : ""}">${chart.failedTotal} failed</span>${chart.completeFrom > chart.t[0]! * 1000 ? html` (minutes before ${when(chart.completeFrom, now)} not read: too many events)` : ""}.</p>
<div id="chart" data-series="${JSON.stringify({ t: chart.t, ok: chart.ok, failed: chart.failed })}"></div>
<h2>Certificate authorities</h2>
<table id="cas"><thead><tr><th>CA</th><th>phase</th><th>mode</th><th>phase started</th><th>next step</th><th>keys (holders of each during a rotation)</th></tr></thead><tbody>
${cas.map((c) => caRow(c, now))}</tbody></table>`;
}

/** How long the holders' count of a rotation (a scan of every instance and node) is reused. */
const CA_HOLDERS_TTL_MS = 15_000;

/**
 * Each CA's state. Who holds which key matters only during a rotation, and counting it reads every
 * instance and node, so in standby it is not counted, and during a rotation a count is reused for
 * CA_HOLDERS_TTL_MS.
 */
async function caStatuses(ctx: AuthContext, state: OverviewState, now: number): Promise<CaStatus[]> {
  if (CA_KINDS.every((k) => ctx.cas[k].phase === "standby")) {
    return CA_KINDS.map((k) =>
      create(CaStatusSchema, {
        type: k,
        phase: "standby",
        lastRotated: BigInt(ctx.cas[k].lastRotated ?? 0),
        keys: [create(CaKeyStatusSchema, { role: "current", sshFingerprint: ctx.cas[k].current.sshFingerprint, signing: true, trusted: true })],
      }),
    );
  }
  if (!state.cas || now - state.cas.at > CA_HOLDERS_TTL_MS || state.cas.at > now) state.cas = { at: now, cas: await getCaStatus(ctx) };
  return state.cas.cas;
}

function caRow(c: CaStatus, now: number): Html {
  const rotating = c.phase !== "standby";
  const behind = rotating ? c.holdersTotal - (c.keys.find((k) => k.signing)?.holders ?? 0) : 0;
  return html`<tr><td>${c.type}</td><td>${c.phase}</td><td>${c.mode || "-"}</td><td>${c.phaseStarted ? when(c.phaseStarted, now) : "-"}</td><td>${c.nextPhaseAt ? when(c.nextPhaseAt, now) : "-"}</td>
<td>${c.keys.map((k) => html`<div><code>${k.sshFingerprint}</code> ${k.role}${k.signing ? ", signing" : ""}${rotating ? `: ${k.holders}` : ""}</div>`)}${behind > 0 ? html`<div class="bad">${behind} of ${c.holdersTotal} not yet on the signing key</div>` : ""}${!rotating && c.lastRotated ? html`<div class="muted">last rotated ${when(c.lastRotated, now)}</div>` : ""}</td></tr>`;
}

// ---- agent identities

export interface IdentityQuery {
  q: string;
  /** Name order: "name" (a to z) or "-name" (z to a). */
  sort: "name" | "-name";
  /** The page after this name, in the sort order... */
  after: string;
  /** ...or the page before this one. */
  before: string;
}

export interface IdentityPage {
  rows: pb.AgentIdentityStatus[];
  next: string | undefined;
  prev: string | undefined;
}

/**
 * One page of identities whose names start with q, after (or before) a cursor, in name order
 * either way: one range read of the backend's index, whatever the fleet's size.
 */
export async function identityPage(ctx: AuthContext, iq: IdentityQuery): Promise<IdentityPage> {
  if (!NAME_PREFIX.test(iq.q) || !NAME_PREFIX.test(iq.after) || !NAME_PREFIX.test(iq.before)) return { rows: [], next: undefined, prev: undefined };
  const prefix = keys.identities + iq.q;
  const desc = iq.sort === "-name";
  const back = iq.before !== "";
  const cursor = back ? iq.before : iq.after;
  const items = await ctx.backend.range(prefix, { limit: PAGE_SIZE + 1, descending: back ? !desc : desc, ...(cursor ? { startAfter: keys.identity(cursor) } : {}) });
  const more = items.length > PAGE_SIZE;
  const page = items.slice(0, PAGE_SIZE).map((i) => decode<IdentityRecord>(i));
  if (back) page.reverse();
  const first = page[0]?.name;
  const last = page[page.length - 1]?.name;
  const next = back ? last : more ? last : undefined;
  const prev = back ? (more ? first : undefined) : cursor ? first : undefined;
  const status = await statusMaker(ctx);
  const rows = await Promise.all(page.map((id) => readStatus(ctx, status, id)));
  return { rows, next, prev };
}

export function identitiesView(iq: IdentityQuery, res: IdentityPage, now: number): Html {
  const sort = iq.sort === "-name" ? "-name" : undefined;
  const flip = query({ q: iq.q, sort: iq.sort === "-name" ? undefined : "-name" });
  return html`<form class="bar" method="get" action="/identities"><label>Name starts with <input name="q" value="${iq.q}" autocomplete="off" spellcheck="false"></label>${sort ? html`<input type="hidden" name="sort" value="${sort}">` : ""}<button type="submit">Search</button>
${iq.q || iq.after || iq.before ? html`<a href="/identities">clear</a>` : ""}</form>
<table id="identities"><thead><tr><th><a id="sort-name" href="/identities${flip}" title="reverse the order">name ${sort ? "↓" : "↑"}</a></th><th>roles</th><th>status</th><th>instances</th><th>generation</th><th>last seen</th><th>cert expiry</th><th>token</th></tr></thead><tbody>
${res.rows.length === 0 ? html`<tr><td colspan="8" class="muted">no agent identity${iq.q ? html` starts with “${iq.q}”` : ""}</td></tr>` : ""}
${res.rows.map(
  (s) => html`<tr><td><a href="/identities/${encodeURIComponent(s.name)}">${s.name}</a></td><td>${s.roles.join(", ")}</td><td>${stateBadge(s.state)}</td><td class="num">${s.instances.length}</td>
<td class="num">${s.generation}</td><td>${when(s.lastSeen, now)}</td><td>${when(s.certExpires, now)}</td><td>${s.tokenState}</td></tr>`,
)}</tbody></table>
<div class="pager">${res.prev ? html`<a href="/identities${query({ q: iq.q, sort })}">« first</a><a rel="prev" href="/identities${query({ q: iq.q, sort, before: res.prev })}">‹ previous page</a>` : ""}${res.next ? html`<a rel="next" href="/identities${query({ q: iq.q, sort, after: res.next })}">next page ›</a>` : ""}</div>
<p class="muted">${PAGE_SIZE} a page in name order, each read from the backend's index on its own: as fast with 100,000 identities as with 100.</p>`;
}

// ---- one identity

export function identityView(s: pb.AgentIdentityStatus, session: Session, now: number, flash: Html | undefined): Html {
  const base = `/identities/${encodeURIComponent(s.name)}`;
  return html`${flash ? html`<div class="flash">${flash}</div>` : ""}
<dl><dt>status</dt><dd>${stateBadge(s.state)}</dd><dt>roles</dt><dd>${s.roles.join(", ")}</dd>
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
<table id="instances"><thead><tr><th>id</th><th>status</th><th>host</th><th>join method</th><th>address</th><th>principals</th><th>generation</th><th>last seen</th><th>cert expiry</th><th>CI claims</th><th></th></tr></thead><tbody>
${s.instances.length === 0 ? html`<tr><td colspan="11" class="muted">no instance yet: a daemon joins with a token</td></tr>` : ""}
${s.instances.map(
  (i) => html`<tr><td><code>${i.id}</code></td><td>${i.stale && !i.locked ? html`<span class="bad" title="certificates of a retired User CA key: add a token">stale</span>` : lockBadge(i.locked)}</td>
<td>${i.host ? html`${i.host.hostName}<div class="muted">${i.host.os}/${i.host.arch}, mezd ${i.host.version}</div>` : html`<span class="muted">not reported</span>`}</td><td>${i.joinMethod}</td><td><code>${i.address}</code></td><td>${i.principals.join(", ")}</td><td class="num">${i.generation}</td>
<td>${when(i.lastSeen, now)}</td><td>${when(i.certExpires, now)}</td><td>${Object.entries(i.claims).map(([k, v]) => html`<div><span class="muted">${k}</span> ${v}</div>`)}</td>
<td>${postForm(session, `${base}/instances/${encodeURIComponent(i.id)}/end`, "End", "", "danger")}</td></tr>`,
)}</tbody></table>
<h2>Locks</h2>
${s.locks.length === 0 ? html`<p class="muted">none</p>` : html`<table><thead><tr><th>target</th><th>reason</th><th>created</th><th>expires</th></tr></thead><tbody>${s.locks.map((l) => html`<tr><td>${l.targetKind} ${l.target}</td><td>${l.reason}</td><td>${when(l.created, now)}</td><td>${l.expires ? when(l.expires, now) : "when removed"}</td></tr>`)}</tbody></table>`}`;
}

export function tokenView(name: string, token: string, authAddr: string, expires: number, now: number): Html {
  return html`<div class="flash">This is the only time the token is shown: copy it now. It works once, ${when(expires, now)}.</div>
<p class="secret" id="token">${token}</p>
<p>On the machine, with the token in that file (never on a command line: arguments show in ps):</p>
${identityStartHint(authAddr, name).map((line) => html`<p><code>${line}</code></p>`)}
<p><a href="/identities/${encodeURIComponent(name)}">back to ${name}</a></p>`;
}

// ---- nodes, locks

export async function nodesView(ctx: AuthContext, after: string): Promise<Html> {
  const now = ctx.now();
  const { nodes, nextPageToken: next } = await listNodes(ctx, { pageSize: PAGE_SIZE, pageToken: after.includes("/") ? "" : after });
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

/** Events the audit page reads back at most, looking for AUDIT_ROWS of a type. */
const AUDIT_MAX_SCAN = 100_000;

/** The newest AUDIT_ROWS events of `type` (or its prefix) in the window, newest first, read backwards. */
export async function auditEvents(ctx: AuthContext, type: string, window: string): Promise<{ events: AuditEvent[]; complete: boolean }> {
  const since = ctx.now() - (AUDIT_WINDOWS[window] ?? AUDIT_WINDOWS["1h"]!);
  return newestEvents(ctx.backend, since, type, AUDIT_ROWS, AUDIT_MAX_SCAN);
}

export function auditRows({ events, complete }: { events: AuditEvent[]; complete: boolean }, now: number): Html {
  const more = complete ? "" : html`<tr><td colspan="7" class="muted">Only the newest ${AUDIT_MAX_SCAN.toLocaleString("en")} events were searched: narrow the window or use mezctl audit ls.</td></tr>`;
  if (events.length === 0) return html`<tr><td colspan="7" class="muted">no events</td></tr>${more}`;
  return html`${more}${events.map(
    (e) => html`<tr><td>${when(e.time, now)}</td><td>${e.type}</td><td>${e.success ? html`<span class="ok">ok</span>` : html`<span class="bad">${e.error || "failed"}</span>`}</td>
<td>${e.identity ? html`<a href="/identities/${encodeURIComponent(e.identity)}">${e.identity}</a>` : ""}${e.instance ? html` <code>${e.instance.slice(0, 8)}</code>` : ""}</td><td>${e.actor}</td><td><code>${e.remote_addr}</code></td><td>${e.detail}${e.serial ? ` serial ${e.serial}` : ""}</td></tr>`,
  )}`;
}

export function auditView(type: string, window: string, events: { events: AuditEvent[]; complete: boolean }, now: number): Html {
  const windows = Object.keys(AUDIT_WINDOWS);
  return html`<form class="bar" method="get" action="/audit"><label>Type <input name="type" value="${type}" placeholder="e.g. lock or agent_identity.renew"></label>
<label>Since <select name="since">${windows.map((w) => html`<option${new Html(w === window ? " selected" : "")}>${w}</option>`)}</select></label><button type="submit">Filter</button>
<label><input type="checkbox" id="live" checked> live</label></form>
<table><thead><tr><th>time ↓</th><th>type</th><th>result</th><th>identity</th><th>actor</th><th>remote</th><th>detail</th></tr></thead><tbody id="audit-rows">${auditRows(events, now)}</tbody></table>
<p class="muted">The newest ${AUDIT_ROWS} events, newest first; “live” refreshes them every 3 s.</p>`;
}

