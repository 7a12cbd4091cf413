"""The dashboard's one page: HTML, CSS and script, no outside resources.  Every value from the
store is put in the page with ``textContent`` (never parsed as HTML), so a job name cannot inject."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gpuq</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
 #updated { color: #666; font-size: .9em; }
 .gpus { display: flex; flex-wrap: wrap; gap: .6em; }
 .gpu { border: 1px solid #ccc; border-radius: 6px; padding: .5em .7em; min-width: 15em; }
 .gpu .title { font-weight: 600; } .gpu .mem { color: #555; font-size: .9em; }
 .bar { height: 6px; background: #eee; border-radius: 3px; margin: .3em 0; overflow: hidden; }
 .bar > div { height: 100%; background: #4a7; }
 .gpu ul { margin: .2em 0 0; padding-left: 1.1em; } .idle { color: #999; }
 table { border-collapse: collapse; } td, th { padding: .2em .7em .2em 0; text-align: left; vertical-align: top; }
 th { border-bottom: 1px solid #ccc; } .reason { color: #555; }
 svg text { font-size: 11px; fill: #333; }
</style>
</head>
<body>
<h1>gpuq <span id="updated">loading…</span></h1>
<h2>GPUs</h2><div id="gpus" class="gpus"></div>
<h2>Queue <span id="queue-count"></span></h2>
<table id="queue"><thead><tr><th>job</th><th>user</th><th>name</th><th>state</th><th>GPUs</th><th>waiting because</th></tr></thead><tbody></tbody></table>
<h2>Usage per user</h2>
<table id="usage"><thead><tr><th>user</th><th>decayed GPU-hours</th><th>share</th><th>running</th><th>waiting</th><th>GPUs in use</th></tr></thead><tbody></tbody></table>
<h2>Who held which GPU (last 24 hours)</h2><div id="timeline"></div>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function mib(x) { return x >= 1024 ? (x / 1024).toFixed(1) + " GiB" : Math.round(x) + " MiB"; }
function dur(s) { s = Math.max(0, Math.floor(s || 0)); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? h + "h" + String(m).padStart(2, "0") : m + "m" + String(s % 60).padStart(2, "0"); }
function color(user) { let h = 0; for (const c of user) h = (h * 31 + c.charCodeAt(0)) % 360; return "hsl(" + h + ",55%,60%)"; }

function renderGpus(d) {
  const box = document.getElementById("gpus"); box.replaceChildren();
  for (const n of d.nodes) for (const g of n.gpus) {
    const card = el("div", {"class": "gpu", "data-node": n.node, "data-gpu": g.index});
    card.append(el("div", {"class": "title"}, (d.nodes.length > 1 ? n.node + ":" : "") + "GPU " + g.index +
                   (n.simulated ? " (SIMULATED)" : "")));
    card.append(el("div", {"class": "mem"}, g.name + " · used " + mib(g.mem_used_mib) + " · reserved " +
                   mib(g.reserved_mib) + " of " + mib(g.mem_total_mib) + (g.util_pct == null ? "" : " · " + g.util_pct + "%")));
    const bar = el("div", {"class": "bar"}), fill = el("div");
    fill.style.width = Math.min(100, 100 * Math.max(g.mem_used_mib, g.reserved_mib) / (g.mem_total_mib || 1)) + "%";
    bar.append(fill); card.append(bar);
    const ul = el("ul");
    if (!g.jobs.length) ul.append(el("li", {"class": "idle"}, "idle"));
    for (const j of g.jobs) ul.append(el("li", {"data-job": j.id, "data-user": j.user},
                                         "job " + j.id + " · " + j.user + " · " + j.name + " · " + dur(j.elapsed_s)));
    card.append(ul); box.append(card);
  }
}
function renderQueue(d) {
  const body = document.querySelector("#queue tbody"); body.replaceChildren();
  document.getElementById("queue-count").textContent = "(" + d.queue_total + " waiting)";
  for (const j of d.queue) {
    const tr = el("tr", {"data-job": j.id});
    for (const v of [j.array || j.id, j.user, j.name, j.state, j.gpus]) tr.append(el("td", {}, v));
    tr.append(el("td", {"class": "reason"}, j.reason));
    body.append(tr);
  }
}
function renderUsage(d) {
  const body = document.querySelector("#usage tbody"); body.replaceChildren();
  for (const u of d.usage) {
    const tr = el("tr", {"data-user": u.user});
    for (const v of [u.user, (u.usage_gpu_s / 3600).toFixed(2), u.share_norm == null ? "-" : (100 * u.share_norm).toFixed(0) + "%",
                     u.running_jobs, u.pending_jobs, u.gpus_in_use]) tr.append(el("td", {}, v));
    body.append(tr);
  }
}
function renderTimeline(d) {
  const box = document.getElementById("timeline"); box.replaceChildren();
  const rows = []; for (const n of d.nodes) for (const g of n.gpus) rows.push([n.node, g.index]);
  for (const h of d.timeline) for (const g of h.gpus) if (!rows.some(r => r[0] === h.node && r[1] === g)) rows.push([h.node, g]);
  const W = 900, left = 90, rowH = 22, H = rows.length * rowH + 24, span = d.now - d.since;
  const svg = el("svg:svg", {"width": W, "height": H, "role": "img"});
  rows.forEach((r, i) => svg.append(el("svg:text", {"x": 0, "y": i * rowH + 15}, (d.nodes.length > 1 ? r[0] + ":" : "") + "GPU " + r[1])));
  for (let k = 0; k <= 24; k += 6) {
    const x = left + (W - left - 10) * k / 24;
    svg.append(el("svg:text", {"x": x - 10, "y": H - 4}, k === 24 ? "now" : "-" + (24 - k) + "h"));
  }
  for (const h of d.timeline) for (const g of h.gpus) {
    const i = rows.findIndex(r => r[0] === h.node && r[1] === g);
    const x0 = left + (W - left - 10) * Math.max(0, h.start - d.since) / span;
    const x1 = left + (W - left - 10) * Math.max(0, h.end - d.since) / span;
    const rect = el("svg:rect", {"x": x0, "y": i * rowH + 3, "width": Math.max(2, x1 - x0), "height": rowH - 6,
                                 "fill": color(h.user), "data-job": h.job, "data-user": h.user, "data-gpu": g});
    rect.append(el("svg:title", {}, "job " + h.job + " · " + h.user + " · " + new Date(h.start * 1000).toLocaleString() +
                   " to " + new Date(h.end * 1000).toLocaleString()));
    svg.append(rect);
  }
  box.append(svg);
}
async function refresh() {
  try {
    const r = await fetch("api/dashboard.json", {cache: "no-store"});
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || r.status);
    renderGpus(d); renderQueue(d); renderUsage(d); renderTimeline(d);
    const u = document.getElementById("updated");
    u.textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString();
    u.setAttribute("data-now", d.now);
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the gpuq daemon (" + e.message + "); retrying";
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
"""
