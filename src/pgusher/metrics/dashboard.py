"""The live dashboard: one self-contained page that polls /api/snapshot every two seconds.

Strategy: no external assets (it must work on a host without internet access) and no
templating on the server: the page fetches the JSON snapshot and builds the DOM itself.
Application and user names come from clients, so they are only ever set as text, never as
markup.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgusher dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1d2733; background: #f6f8fa; }
 h1 { font-size: 1.4em; margin: 0 0 .2em 0; }
 h2 { font-size: 1.1em; margin: 1.4em 0 .5em 0; }
 #status { color: #57606a; margin-bottom: 1em; }
 .cards { display: flex; gap: 1em; flex-wrap: wrap; }
 .card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .6em 1em;
         min-width: 9em; }
 .card .v { font-size: 1.5em; font-weight: 600; }
 .card .k { color: #57606a; font-size: .85em; }
 table { border-collapse: collapse; background: #fff; border: 1px solid #d0d7de; }
 th, td { padding: .35em .7em; border-bottom: 1px solid #eaeef2; text-align: right; }
 th { background: #eef1f4; font-weight: 600; }
 td.name, th.name { text-align: left; }
 .bar { background: #eaeef2; width: 12em; height: .9em; border-radius: 3px; position: relative; }
 .bar > div { background: #2f81f7; height: 100%; border-radius: 3px; }
 .bar.warn > div { background: #d1242f; }
 .cols { display: flex; gap: 2em; flex-wrap: wrap; }
 .waiting { color: #d1242f; font-weight: 600; }
</style>
</head>
<body>
<h1>pgusher</h1>
<div id="status">connecting&hellip;</div>
<div class="cards" id="cards"></div>
<h2>Pools</h2>
<table id="pools"><thead><tr>
 <th class="name">database</th><th class="name">user</th><th class="name">mode</th>
 <th>clients active</th><th>clients waiting</th><th>servers in use / limit</th>
 <th class="name"></th><th>idle</th><th>max wait (s)</th>
</tr></thead><tbody></tbody></table>
<div class="cols">
 <div><h2>Top applications by connections</h2>
  <table id="by-conn"><thead><tr><th class="name">application</th><th>clients</th>
  <th>peak</th><th>waiting</th><th>servers held</th><th class="name"></th></tr></thead>
  <tbody></tbody></table></div>
 <div><h2>Top applications by transaction time</h2>
  <table id="by-time"><thead><tr><th class="name">application</th><th>xact time (s)</th>
  <th>transactions</th><th>queries</th><th>wait (s)</th><th class="name"></th></tr></thead>
  <tbody></tbody></table></div>
</div>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function bar(row, fraction, warn) {
  const td = document.createElement("td");
  const outer = document.createElement("div");
  outer.className = warn ? "bar warn" : "bar";
  const inner = document.createElement("div");
  inner.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + "%";
  outer.appendChild(inner);
  td.appendChild(outer);
  row.appendChild(td);
}
function fill(id, items, build) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    build(row, item);
    body.appendChild(row);
  }
}
function card(k, v) {
  const d = document.createElement("div");
  d.className = "card";
  const vv = document.createElement("div"); vv.className = "v"; vv.textContent = String(v);
  const kk = document.createElement("div"); kk.className = "k"; kk.textContent = k;
  d.appendChild(vv); d.appendChild(kk);
  return d;
}
let previous = null;
function render(s) {
  document.getElementById("status").textContent =
    s.version + (s.paused ? " \\u2014 PAUSED" : "") + " \\u2014 updated " +
    new Date(s.time * 1000).toLocaleTimeString();
  const waiting = s.pools.reduce((n, p) => n + p.cl_waiting, 0);
  const inUse = s.pools.reduce((n, p) => n + p.sv_active, 0);
  // Rates between this snapshot and the previous one (the console's averages are per
  // stats_period, too slow for a live page).
  const xacts = s.applications.reduce((n, a) => n + a.transactions, 0);
  const queries = s.applications.reduce((n, a) => n + a.queries, 0);
  let xactRate = "-", queryRate = "-";
  if (previous && s.time > previous.time) {
    const dt = s.time - previous.time;
    xactRate = Math.max(0, Math.round((xacts - previous.xacts) / dt));
    queryRate = Math.max(0, Math.round((queries - previous.queries) / dt));
  }
  previous = {time: s.time, xacts: xacts, queries: queries};
  const maxWait = s.pools.reduce((n, p) => Math.max(n, p.maxwait_seconds), 0);
  const cards = document.getElementById("cards");
  cards.replaceChildren(card("clients", s.clients), card("clients waiting", waiting),
    card("servers in use", inUse), card("transactions/s", xactRate),
    card("queries/s", queryRate), card("longest wait now (s)", maxWait.toFixed(3)));
  fill("pools", s.pools, (row, p) => {
    cell(row, p.database, "name"); cell(row, p.user, "name"); cell(row, p.pool_mode, "name");
    cell(row, p.cl_active);
    cell(row, p.cl_waiting, p.cl_waiting > 0 ? "waiting" : "");
    const limit = p.max_db_connections > 0 ? Math.min(p.pool_size, p.max_db_connections)
                                           : p.pool_size;
    cell(row, p.sv_active + " / " + limit);
    bar(row, limit > 0 ? p.sv_active / limit : 0, p.cl_waiting > 0);
    cell(row, p.sv_idle); cell(row, p.maxwait_seconds.toFixed(3));
  });
  const apps = s.applications.slice();
  const maxConn = Math.max(1, ...apps.map(a => a.clients));
  fill("by-conn", apps.slice(0, 10), (row, a) => {
    cell(row, a.application, "name"); cell(row, a.clients); cell(row, a.clients_peak);
    cell(row, a.clients_waiting, a.clients_waiting > 0 ? "waiting" : "");
    cell(row, a.server_connections); bar(row, a.clients / maxConn, false);
  });
  apps.sort((x, y) => y.xact_time_seconds - x.xact_time_seconds);
  const maxTime = Math.max(1e-9, ...apps.map(a => a.xact_time_seconds));
  fill("by-time", apps.slice(0, 10), (row, a) => {
    cell(row, a.application, "name"); cell(row, a.xact_time_seconds.toFixed(3));
    cell(row, a.transactions); cell(row, a.queries); cell(row, a.wait_seconds.toFixed(3));
    bar(row, a.xact_time_seconds / maxTime, false);
  });
}
async function refresh() {
  try {
    const r = await fetch("/api/snapshot", {cache: "no-store"});
    render(await r.json());
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach pgusher: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
