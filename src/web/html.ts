/**
 * Server-rendered HTML for the dashboard: every value goes through `esc` (text and attributes
 * alike), pages carry no inline script or style, and the few scripts are same-origin files, so
 * a strict Content-Security-Policy holds.
 */
import type { Session } from "./sessions.js";

/** Raw HTML: what `html` and the renderers produce; everything else is escaped. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function esc(v: unknown): string {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

type Part = Html | string | number | bigint | boolean | undefined | null | Part[];

function part(p: Part): string {
  if (p instanceof Html) return p.text;
  if (Array.isArray(p)) return p.map(part).join("");
  if (p === undefined || p === null || p === false) return "";
  return esc(p);
}

/** Tagged template: interpolated values are escaped unless they are Html (or arrays of it). */
export function html(strings: TemplateStringsArray, ...values: Part[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += part(values[i]) + strings[i + 1]!;
  return new Html(out);
}

/** A query string from the non-empty fields, for links. */
export function query(fields: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** "3m ago" / "in 2h", with the exact time as the title. */
export function when(ms: number | bigint, now: number): Html {
  const t = Number(ms);
  if (!t) return html`<span class="muted">never</span>`;
  const d = t - now;
  const a = Math.abs(d);
  const rel = a < 60_000 ? `${Math.round(a / 1000)}s` : a < 3_600_000 ? `${Math.round(a / 60_000)}m` : a < 172_800_000 ? `${Math.round(a / 3_600_000)}h` : `${Math.round(a / 86_400_000)}d`;
  return html`<time datetime="${new Date(t).toISOString()}" title="${new Date(t).toISOString()}">${d < 0 ? `${rel} ago` : `in ${rel}`}</time>`;
}

/** A POST form with the session's CSRF token: every state change goes through one. */
export function postForm(session: Session, action: string, label: string, fields: Html | string = "", cls = ""): Html {
  return html`<form method="post" action="${action}" class="inline"><input type="hidden" name="csrf" value="${session.csrf}">${typeof fields === "string" ? new Html(fields) : fields}<button type="submit" class="${cls}">${label}</button></form>`;
}

const NAV: [string, string][] = [
  ["/", "Overview"],
  ["/identities", "Agent identities"],
  ["/nodes", "Nodes"],
  ["/locks", "Locks"],
  ["/audit", "Audit"],
];

export interface PageOptions {
  /** Which nav entry is current. */
  nav: string;
  /** Extra same-origin scripts (paths under /assets/). */
  scripts?: string[];
  styles?: string[];
}

export function page(title: string, cluster: string, session: Session | undefined, body: Html, o: PageOptions): string {
  const nav = NAV.map(([href, label]) => html`<a href="${href}"${new Html(o.nav === href ? ' aria-current="page"' : "")}>${label}</a>`);
  return `<!doctype html>${html`<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · ${cluster} · Mezite</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/app.css">${(o.styles ?? []).map((s) => html`<link rel="stylesheet" href="${s}">`)}
${(o.scripts ?? []).map((s) => html`<script src="${s}" defer></script>`)}</head>
<body><header><span class="brand">Mezite</span><span class="cluster">${cluster}</span><nav>${nav}</nav>
${session ? html`<span class="who" title="session ${session.id}">${session.admin}</span>${postForm(session, "/signout", "Sign out", "", "link")}` : ""}</header>
<main><h1>${title}</h1>${body}</main></body></html>`}`;
}
