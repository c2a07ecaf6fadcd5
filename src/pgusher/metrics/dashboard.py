"""The live dashboard: one self-contained page that polls /api/snapshot every two seconds.

Strategy: no external assets (it must work on a host without internet access) and no
templating on the server: the page fetches the JSON snapshot and builds the DOM itself.
Application and user names come from clients, so they are only ever set as text, never as
markup. The 15 minutes of history come with the snapshot (metrics/history.py keeps them in
the pooler), so a page opened now shows the recent past at once; sparklines are inline SVG.
The layout is a grid that puts databases and pools beside the applications on a wide
window and below them on a narrow one; tables take the width of their column. A process in
a fleet also shows its members (SHOW FLEET's rows) below.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgusher dashboard</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 * { box-sizing: border-box; }
 body { font-family: system-ui, sans-serif; margin: 0; padding: 1em 1.5em; color: #1d2733;
        background: #f6f8fa; }
 header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; }
 h1 { font-size: 1.4em; margin: 0; }
 h2 { font-size: 1.05em; margin: 0 0 .5em 0; }
 #version { color: #57606a; }
 #clock { margin-left: auto; font-variant-numeric: tabular-nums; color: #57606a; }
 #status { color: #57606a; margin: .3em 0 .8em 0; min-height: 1.2em; }
 .cards { display: grid; gap: .8em; margin-bottom: 1em;
          grid-template-columns: repeat(auto-fill, minmax(10em, 1fr)); }
 .card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .5em .9em; }
 .card .v { font-size: 1.5em; font-weight: 600; font-variant-numeric: tabular-nums; }
 .card .k { color: #57606a; font-size: .85em; }
 .card.alert .v { color: #d1242f; }
 main { display: grid; gap: 1em; grid-template-columns: minmax(0, 1fr); }
 @media (min-width: 1200px) {
   main { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
   #databases-panel { grid-column: 1; grid-row: 1; }
   #pools-panel { grid-column: 1; grid-row: 2; }
   #applications-panel { grid-column: 2; grid-row: 1 / span 2; }
   #fleet-panel { grid-column: 1 / span 2; grid-row: 3; }
 }
 .panel { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .7em;
          overflow-x: auto; align-self: start; }
 table { border-collapse: collapse; width: 100%; font-size: .92em; }
 th, td { padding: .25em .4em; border-bottom: 1px solid #eaeef2; text-align: right;
          white-space: nowrap; font-variant-numeric: tabular-nums; }
 th { background: #eef1f4; font-weight: 600; font-size: .92em; white-space: normal; }
 td.name, th.name { text-align: left; }
 td.list { text-align: left; white-space: normal; color: #57606a; font-size: .9em; }
 .bar { background: #eaeef2; width: 4.5em; height: .9em; border-radius: 3px;
        display: inline-block; vertical-align: middle; margin-left: .4em; }
 .bar > div { background: #2f81f7; height: 100%; border-radius: 3px; }
 .bar.warn > div { background: #d1242f; }
 .waiting { color: #d1242f; font-weight: 600; }
 .badge { display: inline-block; font-size: .75em; font-weight: 600; padding: .05em .45em;
          border-radius: 1em; margin-right: .3em; letter-spacing: .03em; }
 .badge.paused { background: #fff1c2; color: #7d4e00; border: 1px solid #d4a72c; }
 .badge.disabled { background: #ffebe9; color: #a40e26; border: 1px solid #ff8182; }
 .badge.idle { background: #eef1f4; color: #57606a; border: 1px solid #d0d7de; }
 .badge.ok { background: #dafbe1; color: #116329; border: 1px solid #4ac26b; }
 svg.spark { display: block; }
 svg.spark .a { fill: none; stroke: #2f81f7; stroke-width: 1.5; }
 svg.spark .b { fill: none; stroke: #d1242f; stroke-width: 1.5; }
 .legend { color: #57606a; font-size: .8em; font-weight: normal; }
 .legend .a { color: #2f81f7; } .legend .b { color: #d1242f; }
</style>
</head>
<body>
<header>
 <h1>pgusher</h1><span id="version"></span><span id="global-state"></span>
 <span id="clock"></span>
</header>
<div id="status">connecting&hellip;</div>
<div class="cards" id="cards"></div>
<main>
 <section class="panel" id="databases-panel"><h2>Databases</h2>
  <table id="databases"><thead><tr><th class="name">database</th><th class="name">state</th>
  <th class="name">mode</th><th>clients</th><th>servers / max</th><th>pool size</th>
  <th>pools</th></tr></thead><tbody></tbody></table></section>
 <section class="panel" id="pools-panel"><h2>Pools <span class="legend">last 15 min:
  <span class="a">servers in use</span>, <span class="b">clients waiting</span></span></h2>
  <table id="pools"><thead><tr><th class="name">database</th><th class="name">user</th>
  <th class="name">mode</th><th class="name">state</th><th>active</th><th>waiting</th>
  <th>servers in use / limit</th><th>idle</th><th>max wait (s)</th>
  <th class="name">history</th></tr></thead><tbody></tbody></table></section>
 <section class="panel" id="applications-panel"><h2>Applications <span class="legend">last
  15 min: <span class="a">transactions/s</span>, <span class="b">clients waiting</span></span>
  </h2>
  <table id="applications"><thead><tr><th class="name">application</th>
  <th class="name">databases</th><th class="name">users</th><th>clients</th><th>peak</th>
  <th>waiting</th><th>servers</th><th>xact/s</th><th>xact time (s)</th><th>queries</th>
  <th class="name">history</th></tr></thead><tbody></tbody></table></section>
 <section class="panel" id="fleet-panel" hidden><h2>Fleet <span class="legend">members
  sharing a budget of server connections per database, as this pooler last read them</span>
  </h2>
  <table id="fleet"><thead><tr><th class="name">database</th><th class="name">member</th>
  <th>demand</th><th>share</th><th>grant / budget</th><th>live</th><th>heartbeat age (s)</th>
  </tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function bar(td, fraction, warn) {
  const outer = document.createElement("div");
  outer.className = warn ? "bar warn" : "bar";
  const inner = document.createElement("div");
  inner.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + "%";
  outer.appendChild(inner);
  td.appendChild(outer);
}
function badges(row, states) {
  const td = document.createElement("td");
  td.className = "name state";
  for (const [cls, text] of states) {
    const b = document.createElement("span");
    b.className = "badge " + cls;
    b.textContent = text;
    td.appendChild(b);
  }
  row.appendChild(td);
}
const SVG = "http://www.w3.org/2000/svg";
function spark(row, a, b, title) {
  // Two series over the same times: a (blue) and b (red), each on its own scale from zero.
  const td = document.createElement("td");
  td.className = "name";
  const w = 120, h = 26;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  for (const [values, cls] of [[a, "a"], [b, "b"]]) {
    if (values.length < 2) continue;
    const top = Math.max(1e-9, ...values);
    const line = document.createElementNS(SVG, "polyline");
    const step = (w - 2) / (values.length - 1);
    line.setAttribute("points", values.map((v, i) =>
      (1 + i * step).toFixed(1) + "," + (h - 2 - (h - 4) * v / top).toFixed(1)).join(" "));
    line.setAttribute("class", cls);
    svg.appendChild(line);
  }
  const t = document.createElementNS(SVG, "title");
  t.textContent = title;
  svg.appendChild(t);
  td.appendChild(svg);
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
function card(k, v, alert) {
  const d = document.createElement("div");
  d.className = alert ? "card alert" : "card";
  const vv = document.createElement("div"); vv.className = "v"; vv.textContent = String(v);
  const kk = document.createElement("div"); kk.className = "k"; kk.textContent = k;
  d.appendChild(vv); d.appendChild(kk);
  return d;
}
function two(n) { return String(n).padStart(2, "0"); }
function fullTime(date) {
  // 2026-12-02 13:44:11 +01:00 Europe/Paris: the browser's zone, with its offset.
  const off = -date.getTimezoneOffset();
  const sign = off < 0 ? "-" : "+";
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  return date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) +
    " " + two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds()) +
    " " + sign + two(Math.floor(Math.abs(off) / 60)) + ":" + two(Math.abs(off) % 60) +
    (zone ? " " + zone : "");
}
function series(ring, name, live) {
  // The stored points, then the value now, so the line ends at the present.
  const values = ring && ring[name] ? ring[name].slice() : [];
  values.push(live);
  return values;
}
let previous = null;
function render(s) {
  const when = new Date(s.time * 1000);
  document.getElementById("clock").textContent = fullTime(when);
  document.getElementById("version").textContent =
    s.version + (s.workers ? " \u2014 " + s.workers + " workers" : "");
  const global = document.getElementById("global-state");
  global.replaceChildren();
  if (s.paused) {
    const b = document.createElement("span");
    b.className = "badge paused"; b.textContent = "PAUSED";
    global.appendChild(b);
  }
  const hist = s.history || {times: [], pools: {}, applications: {}};
  const minutes = hist.times.length > 1
    ? ((hist.times[hist.times.length - 1] - hist.times[0]) / 60).toFixed(1) : "0";
  document.getElementById("status").textContent =
    "updated " + fullTime(when) + " \u2014 history: " + hist.times.length +
    " points over " + minutes + " min";
  const waiting = s.pools.reduce((n, p) => n + p.cl_waiting, 0);
  const inUse = s.pools.reduce((n, p) => n + p.sv_active, 0);
  // Rates between this snapshot and the previous one (the console's averages are per
  // stats_period, too slow for a live page).
  const xacts = s.applications.reduce((n, a) => n + a.transactions, 0);
  const queries = s.applications.reduce((n, a) => n + a.queries, 0);
  const perApp = {};
  for (const a of s.applications) perApp[a.application] = a.transactions;
  let xactRate = "-", queryRate = "-";
  const appRate = {};
  if (previous && s.time > previous.time) {
    const dt = s.time - previous.time;
    xactRate = Math.max(0, Math.round((xacts - previous.xacts) / dt));
    queryRate = Math.max(0, Math.round((queries - previous.queries) / dt));
    for (const a of s.applications) {
      const before = previous.perApp[a.application];
      if (before !== undefined) {
        appRate[a.application] = Math.max(0, (a.transactions - before) / dt);
      }
    }
  }
  previous = {time: s.time, xacts: xacts, queries: queries, perApp: perApp};
  const maxWait = s.pools.reduce((n, p) => Math.max(n, p.maxwait_seconds), 0);
  const f = s.failures || {};
  const serverFailures = (f.server_connect || 0) + (f.server_login || 0);
  document.getElementById("cards").replaceChildren(
    card("clients", s.clients), card("clients waiting", waiting, waiting > 0),
    card("servers in use", inUse), card("transactions/s", xactRate),
    card("queries/s", queryRate), card("longest wait now (s)", maxWait.toFixed(3)),
    card("failed logins", f.auth || 0, (f.auth || 0) > 0),
    card("refused (limits)", f.refusals || 0, (f.refusals || 0) > 0),
    card("server connect/login failures", serverFailures, serverFailures > 0),
    card("query_wait_timeout", f.query_wait_timeouts || 0, (f.query_wait_timeouts || 0) > 0));
  fill("databases", s.databases || [], (row, d) => {
    cell(row, d.database, "name");
    const states = [];
    if (d.paused) states.push(["paused", "PAUSED"]);
    if (d.disabled) states.push(["disabled", "DISABLED"]);
    if (!d.pool_count) states.push(["idle", "not used yet"]);
    if (!states.length) states.push(["ok", "active"]);
    badges(row, states);
    cell(row, d.pool_mode, "name"); cell(row, d.clients);
    cell(row, d.server_connections + " / " + (d.max_db_connections || "\u221e"));
    cell(row, d.pool_size); cell(row, d.pool_count);
  });
  fill("pools", s.pools, (row, p) => {
    cell(row, p.database, "name"); cell(row, p.user, "name"); cell(row, p.pool_mode, "name");
    const states = [];
    if (p.paused) states.push(["paused", "PAUSED"]);
    if (p.disabled) states.push(["disabled", "DISABLED"]);
    badges(row, states);
    cell(row, p.cl_active);
    cell(row, p.cl_waiting, p.cl_waiting > 0 ? "waiting" : "");
    const limit = p.max_db_connections > 0 ? Math.min(p.pool_size, p.max_db_connections)
                                           : p.pool_size;
    bar(cell(row, p.sv_active + " / " + limit), limit > 0 ? p.sv_active / limit : 0,
        p.cl_waiting > 0);
    cell(row, p.sv_idle); cell(row, p.maxwait_seconds.toFixed(3));
    const ring = hist.pools[p.database + "/" + p.user];
    const a = series(ring, "sv_active", p.sv_active), b = series(ring, "cl_waiting", p.cl_waiting);
    spark(row, a, b, "servers in use: max " + Math.max(...a) + "; clients waiting: max " +
          Math.max(...b));
  });
  fill("applications", s.applications, (row, a) => {
    cell(row, a.application, "name");
    cell(row, (a.databases || []).join(", "), "list");
    cell(row, (a.users || []).join(", "), "list");
    cell(row, a.clients); cell(row, a.clients_peak);
    cell(row, a.clients_waiting, a.clients_waiting > 0 ? "waiting" : "");
    cell(row, a.server_connections);
    const rate = appRate[a.application];
    cell(row, rate === undefined ? "-" : rate.toFixed(1));
    cell(row, a.xact_time_seconds.toFixed(3)); cell(row, a.queries);
    const ring = hist.applications[a.application];
    const x = series(ring, "xact_rate", rate === undefined ? 0 : rate);
    const w = series(ring, "waiting", a.clients_waiting);
    spark(row, x, w, "transactions/s: max " + Math.max(...x).toFixed(1) +
          "; clients waiting: max " + Math.max(...w));
  });
  const fleet = s.fleet || [];
  document.getElementById("fleet-panel").hidden = fleet.length === 0;
  fill("fleet", fleet, (row, m) => {
    cell(row, m.database, "name");
    cell(row, m.instance + (m.self ? " (this pooler)" : ""), "name");
    cell(row, m.demand, m.demand > m.granted ? "waiting" : "");
    cell(row, m.share < 0 ? "-" : m.share);
    bar(cell(row, m.granted + " / " + m.budget), m.budget > 0 ? m.granted / m.budget : 0,
        m.demand > m.granted);
    cell(row, m.live); cell(row, Number(m.heartbeat_age).toFixed(1));
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
