/**
 * The dashboard's static files, all served from the service itself (nothing from another host):
 * its own small stylesheet and script, and uPlot (the chart) from node_modules, or from the
 * standalone executable's assets (scripts/release.mjs).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

export interface Asset {
  type: string;
  body: Buffer;
  etag: string;
}

const APP_CSS = `
:root{--fg:#1d2330;--muted:#6b7385;--line:#dde1e8;--bg:#f6f7f9;--accent:#2457c5;--bad:#b42318;--ok:#137a3a}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;gap:1rem;align-items:center;padding:.6rem 1.2rem;background:#fff;border-bottom:1px solid var(--line);flex-wrap:wrap}
.brand{font-weight:700}.cluster{color:var(--muted)}nav{display:flex;gap:.8rem;flex:1}nav a{color:var(--fg);text-decoration:none;padding:.2rem .1rem}
nav a[aria-current]{border-bottom:2px solid var(--accent)}.who{color:var(--muted)}
main{padding:1rem 1.2rem;max-width:1200px}h1{font-size:1.3rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#fafbfc;font-weight:600}th a{color:inherit}td.num{text-align:right}a{color:var(--accent)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:.8rem}.card{background:#fff;border:1px solid var(--line);padding:.8rem;color:inherit;text-decoration:none}
td time{white-space:nowrap}
.card b{display:block;font-size:1.6rem}.muted{color:var(--muted)}.bad{color:var(--bad)}.ok{color:var(--ok)}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;border:1px solid currentColor}
form.inline{display:inline}form.bar{display:flex;gap:.5rem;margin:.5rem 0 1rem;align-items:center;flex-wrap:wrap}
input,select,button{font:inherit;padding:.25rem .5rem}button{cursor:pointer;background:#fff;border:1px solid var(--line)}
button.danger{color:var(--bad)}button.link{border:0;background:none;color:var(--accent);padding:0}
.pager{display:flex;gap:1rem;margin:.6rem 0}.flash{background:#eef4ff;border:1px solid #c9d8fb;padding:.5rem .8rem;margin-bottom:1rem}
.secret{font-family:ui-monospace,monospace;background:#fff;border:1px solid var(--line);padding:.5rem;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;background:#fff;border:1px solid var(--line);padding:.8rem}dt{color:var(--muted)}dd{margin:0}
code{font-family:ui-monospace,monospace;font-size:.9em}#chart{background:#fff;border:1px solid var(--line);padding:.5rem;min-height:260px}
`;

/** Draws the renewals chart, and keeps the audit table live; no inline script anywhere. */
const APP_JS = `"use strict";
(function(){
  var chart=document.getElementById("chart");
  if(chart&&window.uPlot){
    var d=JSON.parse(chart.getAttribute("data-series"));
    new window.uPlot({width:Math.max(320,chart.clientWidth-16),height:240,
      series:[{},{label:"renewals/min",stroke:"#2457c5"},{label:"failed/min",stroke:"#b42318"}],
      axes:[{},{label:"per minute"}]},[d.t,d.ok,d.failed],chart);
  }
  var live=document.getElementById("live");
  var rows=document.getElementById("audit-rows");
  if(live&&rows){
    var timer;
    var tick=function(){
      var u=new URL(location.href);u.searchParams.set("rows","1");
      fetch(u.toString(),{credentials:"same-origin",cache:"no-store"}).then(function(r){return r.ok?r.text():Promise.reject(r.status)})
        .then(function(t){rows.innerHTML=t;}).catch(function(){live.checked=false;});
    };
    var set=function(){clearInterval(timer);if(live.checked)timer=setInterval(tick,3000);};
    live.addEventListener("change",set);set();
  }
})();
`;

function asset(type: string, body: Buffer): Asset {
  return { type, body, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 16)}"` };
}

/** uPlot's file: an asset of the standalone executable, else from node_modules. */
function uplotFile(name: string): Buffer {
  try {
    const require = createRequire(import.meta.url);
    const sea = require("node:sea") as { isSea(): boolean; getAsset(k: string): ArrayBuffer };
    if (sea.isSea()) return Buffer.from(sea.getAsset(name));
  } catch {
    // not a standalone executable
  }
  return readFileSync(createRequire(import.meta.url).resolve(`uplot/dist/${name}`));
}

let cache: Map<string, Asset> | undefined;

/** Path under /assets/ to asset, loaded once. */
export function assets(): Map<string, Asset> {
  cache ??= new Map([
    ["app.css", asset("text/css; charset=utf-8", Buffer.from(APP_CSS))],
    ["app.js", asset("text/javascript; charset=utf-8", Buffer.from(APP_JS))],
    ["uplot.js", asset("text/javascript; charset=utf-8", uplotFile("uPlot.iife.min.js"))],
    ["uplot.css", asset("text/css; charset=utf-8", uplotFile("uPlot.min.css"))],
  ]);
  return cache;
}
