// Tarmac dashboard: reads the control plane's API (same origin) and draws services,
// workloads, routes, edges, a topology graph (live, or at any 10 s of the last hour),
// charts of the last hour and a live tap whose traced requests link to their trace.
// Plain DOM and SVG; names and paths are always set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
// The control plane records a point every 10 s: reading more often shows nothing new.
const HISTORY_MS = 10000;
const TAP_ROWS = 200;
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f778ba", "#39c5cf", "#ff7b72", "#a5d6ff"];
const SVG = "http://www.w3.org/2000/svg";

const state = {
  window: "1m",
  // GET /api/v1/history/{service,route,edge}: {timestamps_ms, series: [{..., rps: [...]}]}
  history: { service: null, route: null, edge: null },
  historyKind: "service",
  // The topology at a past point (its timestamp), or null: live, over the window.
  graphAt: null,
  live: { edges: [], workloads: [], services: [] },
  // p99 latency (ms) per workload and per service over the window: what "slow" means in the tap.
  p99: { workload: new Map(), service: new Map() },
  colors: new Map(),
  tapping: true,
  tapGeneration: 0,
};

// --- small helpers -----------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const name = (ns, n) => (!ns || ns === "default" ? n : `${ns}/${n}`);
const pct = (v) => (v === null || v === undefined ? "-" : `${(v * 100).toFixed(2)}%`);
const rps = (v) => `${(v || 0).toFixed(1)}`;
const ms = (v) => (v === null || v === undefined ? "-" : v >= 10 ? `${v.toFixed(0)} ms` : `${v.toFixed(2)} ms`);
const health = (v) => (v === null || v === undefined ? "" : v >= 0.99 ? "good" : v >= 0.9 ? "warn" : "bad");
const healthColor = (v) => (v === null || v === undefined ? "var(--muted)" : `var(--${health(v)})`);

function color(service) {
  if (!state.colors.has(service)) state.colors.set(service, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(service);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// --- tables ------------------------------------------------------------------

// FORBIDDEN: refused by an AuthorizationPolicy or the default policy; LIMITED: by a
// rate limit (docs/policy.md). Counted by the called workload's sidecar.
const GOLDEN_HEAD = ["SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", "FORBIDDEN", "LIMITED"];
// Counted by callers' sidecars: retries made, retries the retry budget denied, endpoints
// ejected by circuit breaking, requests a concurrency limit shed.
const RESILIENCE_HEAD = ["RETRIES", "DENIED", "EJECTED", "SHED"];
const NUMERIC = new Set([...GOLDEN_HEAD, ...RESILIENCE_HEAD]);

function resilienceCells(r) {
  const cell = (v, tone) => el("td", { class: `num ${v > 0 ? tone : ""}` }, v || 0);
  return [cell(r.retries, "warn"), cell(r.retries_denied_by_budget, "bad"), cell(r.ejections, "bad"), cell(r.shed, "bad")];
}

function goldenCells(r, maxRps) {
  const bar = el("span", { class: "bar", style: `width:${maxRps > 0 ? Math.round((40 * r.rps) / maxRps) : 0}px` });
  return [
    el("td", { class: `num ${health(r.success_rate)}` }, pct(r.success_rate)),
    el("td", { class: "num" }, rps(r.rps), bar),
    el("td", { class: "num" }, ms(r.latency_ms_p50)),
    el("td", { class: "num" }, ms(r.latency_ms_p95)),
    el("td", { class: "num" }, ms(r.latency_ms_p99)),
    el("td", { class: "num" }, r.requests),
    el("td", { class: `num ${r.denied ? "warn" : ""}` }, r.denied || 0),
    el("td", { class: `num ${r.rate_limited ? "warn" : ""}` }, r.rate_limited || 0),
  ];
}

function table(id, head, rows, makeRow) {
  const t = document.getElementById(id);
  const thead = el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { class: NUMERIC.has(h) ? "num" : "" }, h))));
  const tbody = el("tbody");
  if (rows.length === 0) tbody.append(el("tr", {}, el("td", { colspan: head.length, class: "empty" }, "nothing yet")));
  const maxRps = Math.max(0, ...rows.map((r) => r.rps || 0));
  for (const r of rows) tbody.append(makeRow(r, maxRps));
  t.replaceChildren(thead, tbody);
}

function renderTables(services, workloads, routes, edges) {
  table("services", ["SERVICE", ...GOLDEN_HEAD, ...RESILIENCE_HEAD], services, (r, m) =>
    el("tr", { "data-service": r.name, "data-rps": r.rps, "data-retries": r.retries || 0 },
      el("td", {}, name(r.namespace, r.name)), ...goldenCells(r, m), ...resilienceCells(r)));
  table("workloads", ["WORKLOAD", "MESHED", ...GOLDEN_HEAD], workloads, (r, m) =>
    el("tr", { "data-workload": r.name, "data-rps": r.rps }, el("td", {}, name(r.namespace, r.name)), el("td", {}, r.meshed || "-"), ...goldenCells(r, m)));
  table("routes", ["SERVICE", "ROUTE", ...GOLDEN_HEAD, ...RESILIENCE_HEAD], routes, (r, m) =>
    el("tr", { "data-route": r.name, "data-rps": r.rps, "data-retries": r.retries || 0 },
      el("td", {}, name(r.namespace, r.service)), el("td", {}, r.name), ...goldenCells(r, m), ...resilienceCells(r)));
  table("edges", ["FROM", "TO", "LAST HOUR", "mTLS", ...GOLDEN_HEAD, ...RESILIENCE_HEAD], edges, (r, m) =>
    el("tr", { "data-edge": `${r.src_workload}>${r.dst_service || r.dst_target}`, "data-rps": r.rps },
      el("td", {}, name(r.src_namespace, r.src_workload)),
      el("td", {}, r.dst_service ? name(r.dst_namespace, r.dst_service) : r.dst_target),
      el("td", {}, sparkline(edgeHistory(r))),
      el("td", { class: r.secured_rate === 1 ? "good" : r.secured_rate ? "warn" : "" }, pct(r.secured_rate)),
      ...goldenCells(r, m), ...resilienceCells(r)));
}

// The history series of an edge row (same caller, same destination), if kept.
function edgeHistory(r) {
  const h = state.history.edge;
  if (!h) return null;
  return h.series.find((s) => s.src_namespace === r.src_namespace && s.src_workload === r.src_workload && s.dst_target === r.dst_target) || null;
}

// Requests per second over the last hour, small: gaps (nothing recorded) break the line.
function sparkline(series) {
  const W = 120, H = 22;
  if (!series) return el("span", { class: "muted" }, "-");
  const values = series.rps;
  const top = Math.max(...values.filter((v) => v !== null), 1e-9);
  // The newest point at the right edge, an hour across (capacity points).
  const capacity = state.history.edge ? state.history.edge.capacity : values.length;
  const x = (i) => W - ((values.length - 1 - i) / Math.max(capacity - 1, 1)) * W;
  const y = (v) => H - 2 - (v / top) * (H - 4);
  let d = "", pen = false, points = 0;
  const root = svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
    if (values[i - 1] == null && values[i + 1] == null) root.append(svg("circle", { cx: x(i), cy: y(v), r: 1.5, fill: "var(--accent)" }));
    pen = true;
    points += 1;
  });
  root.setAttribute("data-points", points);
  root.append(svg("path", { d: d.trim() || "M0,0", fill: "none", stroke: "var(--accent)", "stroke-width": 1.5 }));
  return root;
}

function renderSummary(services, check) {
  const total = services.reduce((a, r) => a + (r.rps || 0), 0);
  const requests = services.reduce((a, r) => a + (r.requests || 0), 0);
  const successes = services.reduce((a, r) => a + (r.successes || 0), 0);
  const worst = services.filter((r) => r.latency_ms_p99 !== null).reduce((a, r) => Math.max(a, r.latency_ms_p99), 0);
  const cards = [
    ["services", services.length],
    ["requests / s", total.toFixed(1)],
    ["success rate", requests ? pct(successes / requests) : "-"],
    ["worst p99", worst ? ms(worst) : "-"],
    ["retries", services.reduce((a, r) => a + (r.retries || 0), 0)],
    ["retries denied by budget", services.reduce((a, r) => a + (r.retries_denied_by_budget || 0), 0)],
    ["endpoints ejected", services.reduce((a, r) => a + (r.ejections || 0), 0)],
    ["shed by limits", services.reduce((a, r) => a + (r.shed || 0), 0)],
    ["proxies", check ? check.proxies.length : "-"],
    ["config generation", check ? check.generation : "-"],
  ];
  document.getElementById("summary").replaceChildren(
    ...cards.map(([label, value]) => el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value))));
  const pill = document.getElementById("health");
  if (!check) {
    pill.className = "pill fail";
    pill.textContent = "control plane unreachable";
    return;
  }
  const failed = check.checks.filter((c) => !c.ok);
  pill.className = `pill ${failed.length ? "fail" : "ok"}`;
  pill.textContent = failed.length ? `${failed.length} check${failed.length > 1 ? "s" : ""} failing` : "all checks pass";
  pill.title = check.checks.map((c) => `${c.ok ? "√" : "×"} ${c.name}: ${c.detail}`).join("\n");
}

// --- topology ----------------------------------------------------------------

// Nodes are workloads; a call to a service that selects one workload is an arrow to it,
// to a service selecting several (a canary, say) an arrow to the service, then to each.
function renderGraph(edges, workloads, services, when) {
  const box = document.getElementById("graph");
  const live = edges.filter((e) => e.requests > 0);
  if (live.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, when ? `No traffic between workloads in the 10 s before ${when}.` : "No traffic between workloads in the window yet."));
    return;
  }
  const nodes = new Map();
  const byWorkload = new Map(workloads.map((w) => [w.name, w]));
  const addNode = (id, kind, label, stats) => {
    if (!nodes.has(id)) nodes.set(id, { id, kind, label, stats, in: [], out: [] });
    return nodes.get(id);
  };
  const links = [];
  for (const e of live) {
    const src = addNode(`w:${e.src_workload}`, "workload", e.src_workload, byWorkload.get(e.src_workload));
    const targets = e.dst_workloads || [];
    if (targets.length === 1) {
      const dst = addNode(`w:${targets[0]}`, "workload", targets[0], byWorkload.get(targets[0]));
      links.push({ from: src, to: dst, e });
    } else {
      const label = e.dst_service || e.dst_target;
      const svcNode = addNode(`s:${label}`, "service", label, services.find((s) => s.name === e.dst_service));
      links.push({ from: src, to: svcNode, e });
      for (const w of targets) links.push({ from: svcNode, to: addNode(`w:${w}`, "workload", w, byWorkload.get(w)), e: null });
    }
  }
  for (const l of links) { l.from.out.push(l); l.to.in.push(l); }
  // Columns: the longest chain of callers before a node (bounded, so cycles end).
  const level = new Map([...nodes.keys()].map((k) => [k, 0]));
  for (let i = 0; i < nodes.size; i++) {
    for (const l of links) level.set(l.to.id, Math.max(level.get(l.to.id), Math.min(level.get(l.from.id) + 1, nodes.size)));
  }
  const columns = [];
  for (const n of nodes.values()) (columns[level.get(n.id)] ||= []).push(n);
  const W = 210, H = 54, GAPX = 150, GAPY = 36;
  const height = Math.max(...columns.map((c) => (c ? c.length : 0))) * (H + GAPY) + GAPY;
  const width = columns.length * (W + GAPX) - GAPX + 40;
  columns.forEach((col, x) => (col || []).sort((a, b) => a.label.localeCompare(b.label)).forEach((n, y) => {
    n.x = 20 + x * (W + GAPX);
    n.y = (height - col.length * (H + GAPY) + GAPY) / 2 + y * (H + GAPY);
  }));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  const defs = svg("defs");
  for (const c of ["good", "warn", "bad", "muted"]) {
    defs.append(svg("marker", { id: `arrow-${c}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: `var(--${c})` })));
  }
  root.append(defs);
  const maxRps = Math.max(...live.map((e) => e.rps), 0.001);
  for (const l of links) {
    const x1 = l.from.x + W, y1 = l.from.y + H / 2, x2 = l.to.x - 2, y2 = l.to.y + H / 2;
    const mid = (x1 + x2) / 2;
    const tone = l.e ? health(l.e.success_rate) || "muted" : "muted";
    const g = svg("g", { class: "edge" });
    if (l.e) {
      g.setAttribute("data-src", l.e.src_workload);
      g.setAttribute("data-dst", l.e.dst_service || l.e.dst_target);
      g.setAttribute("data-rps", l.e.rps);
    }
    g.append(svg("path", {
      d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
      stroke: `var(--${tone})`,
      "stroke-width": l.e ? 1.5 + (4 * l.e.rps) / maxRps : 1.2,
      "stroke-dasharray": l.e ? "" : "4 4",
      "marker-end": `url(#arrow-${tone})`,
    }));
    if (l.e) {
      const label = `${rps(l.e.rps)} rps · ${pct(l.e.success_rate)}`;
      g.append(svg("text", { x: mid, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, label));
      if (l.e.secured_rate !== null && l.e.secured_rate !== undefined) {
        g.append(svg("text", { x: mid, y: (y1 + y2) / 2 + 14, "text-anchor": "middle", class: "sub" }, `mTLS ${Math.round(l.e.secured_rate * 100)}%`));
      }
    }
    root.append(g);
  }
  for (const n of nodes.values()) {
    const s = n.stats;
    const g = svg("g", { class: `node ${n.kind}`, "data-node": n.label, transform: `translate(${n.x},${n.y})` });
    g.append(svg("rect", { width: W, height: H, rx: 8, stroke: n.kind === "service" ? "var(--muted)" : healthColor(s ? s.success_rate : null) }));
    g.append(svg("text", { x: 12, y: 22 }, n.kind === "service" ? `service ${n.label}` : n.label));
    const sub = s ? `${rps(s.rps)} rps · ${pct(s.success_rate)} · p99 ${ms(s.latency_ms_p99)}` : "";
    g.append(svg("text", { x: 12, y: 40, class: "sub" }, sub));
    root.append(g);
  }
  box.replaceChildren(root);
}

// --- charts ------------------------------------------------------------------

const clock = (t) => new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

// One line per series over the history's timestamps; a null value (a gap: nothing was
// recorded then; or no traffic, for rates and latencies) breaks the line.
function chart(id, times, series, { min = 0, max, format, dashed = [], span }) {
  const box = document.getElementById(id);
  const W = 420, H = 180, L = 44, B = 18, T = 8, R = 8;
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  if (times.length === 0 || values.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "waiting for data (a point every 10 s)"));
    return;
  }
  // The whole hour, the newest point at the right edge: a young history grows from there.
  const t1 = times[times.length - 1], t0 = Math.min(times[0], t1 - span);
  const top = max !== undefined ? max : Math.max(...values, 1e-9) * 1.15;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - min) / (top - min || 1)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  for (const f of [0, 0.5, 1]) {
    const v = min + f * (top - min);
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, format(v)));
  }
  root.append(svg("text", { x: L, y: H - 4 }, clock(t0)));
  root.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, clock(t1)));
  for (const s of series) {
    let d = "", pen = false, points = 0, last = null;
    const isolated = [];
    const present = (i) => i >= 0 && i < s.values.length && s.values[i] !== null && s.values[i] !== undefined;
    s.values.forEach((v, i) => {
      if (!present(i)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)} `;
      if (!present(i - 1) && !present(i + 1)) isolated.push([times[i], v]);
      pen = true;
      points += 1;
      last = [times[i], v];
    });
    if (!points) continue;
    // A point between gaps draws no line: a dot instead.
    for (const [t, v] of isolated) root.append(svg("circle", { cx: x(t), cy: y(v), r: 1.5, fill: s.color }));
    root.append(svg("path", {
      class: "series", "data-series": s.name, "data-points": points, d: d.trim(), fill: "none",
      stroke: s.color, "stroke-width": 2, "stroke-dasharray": dashed.includes(s) ? "5 4" : "",
    }));
    root.append(svg("circle", { cx: x(last[0]), cy: y(last[1]), r: 2.5, fill: s.color }));
  }
  box.replaceChildren(root);
}

function seriesName(kind, s) {
  return kind === "route" ? `${name(s.namespace, s.service)} ${s.name}` : name(s.namespace, s.name);
}

function renderCharts() {
  const kind = state.historyKind;
  const h = state.history[kind];
  const times = h ? h.timestamps_ms : [];
  const list = h ? [...h.series].sort((a, b) => seriesName(kind, a).localeCompare(seriesName(kind, b))) : [];
  const series = (key) => list.map((s) => ({ name: seriesName(kind, s), color: color(seriesName(kind, s)), values: s[key] }));
  const span = h ? h.capacity * h.resolution_seconds * 1000 : 0;
  chart("chart-rps", times, series("rps"), { format: (v) => v.toFixed(1), span });
  chart("chart-success", times, series("success_rate"), { min: 0, max: 1, format: (v) => `${Math.round(v * 100)}%`, span });
  const p50 = series("latency_ms_p50"), p99 = series("latency_ms_p99");
  chart("chart-latency", times, [...p50, ...p99], { format: (v) => v.toFixed(v < 10 ? 1 : 0), dashed: p50, span });
  document.getElementById("legend").replaceChildren(...list.map((s) => el("span", { style: `--c:${color(seriesName(kind, s))}` }, seriesName(kind, s))));
  const refused = h && h.series_refused ? ` · ${h.series_refused} series not kept (the control plane keeps at most 1024)` : "";
  document.getElementById("history-note").textContent = `every ${h ? h.resolution_seconds : 10} s, kept by the control plane for an hour${refused}`;
}

// --- the topology over time ----------------------------------------------------

// The slider's last position is "live" (the window's numbers); the others are the points
// of the edges' history, oldest first.
function renderTimeline() {
  const slider = document.getElementById("graph-time");
  const times = state.history.edge ? state.history.edge.timestamps_ms : [];
  slider.max = String(times.length);
  slider.disabled = times.length === 0;
  const at = state.graphAt === null ? -1 : times.indexOf(state.graphAt);
  if (state.graphAt !== null && at < 0) state.graphAt = null; // fell out of the hour
  slider.value = String(state.graphAt === null ? times.length : at);
  renderTopology();
}

function renderTopology() {
  const when = document.getElementById("graph-when");
  if (state.graphAt === null) {
    when.textContent = "live";
    renderGraph(state.live.edges, state.live.workloads, state.live.services);
    return;
  }
  const h = state.history.edge;
  const i = h.timestamps_ms.indexOf(state.graphAt);
  const at = new Date(state.graphAt).toLocaleTimeString(undefined, { hour12: false });
  when.textContent = at;
  if (h.series.length > 0 && h.series.every((s) => s.requests[i] === null)) {
    document.getElementById("graph").replaceChildren(el("p", { class: "empty" }, `Nothing was recorded at ${at} (the control plane was busy or not running).`));
    return;
  }
  const edges = h.series.map((s) => ({ ...s, requests: s.requests[i] || 0, rps: s.rps[i] || 0, success_rate: s.success_rate[i], secured_rate: s.secured_rate[i] }));
  renderGraph(edges, [], [], at);
}

async function refreshHistory() {
  try {
    const [service, route, edge] = await Promise.all(["service", "route", "edge"].map((k) => getJSON(`/api/v1/history/${k}`)));
    state.history = { service, route, edge };
    renderCharts();
    renderTimeline();
  } catch (e) {
    document.getElementById("history-note").textContent = `history unavailable: ${e.message}`;
  }
  setTimeout(refreshHistory, HISTORY_MS);
}

// --- refresh loop --------------------------------------------------------------

async function refresh() {
  const w = encodeURIComponent(state.window);
  try {
    const [services, workloads, routes, edges, check] = await Promise.all([
      getJSON(`/api/v1/stat/service?window=${w}`),
      getJSON(`/api/v1/stat/workload?window=${w}`),
      getJSON(`/api/v1/stat/route?window=${w}`),
      getJSON(`/api/v1/stat/edge?window=${w}`),
      getJSON("/api/v1/check").catch(() => null),
    ]);
    renderSummary(services.rows, check);
    renderTables(services.rows, workloads.rows, routes.rows, edges.rows);
    state.live = { edges: edges.rows, workloads: workloads.rows, services: services.rows };
    state.p99 = {
      workload: new Map(workloads.rows.map((r) => [r.name, r.latency_ms_p99])),
      service: new Map(services.rows.map((r) => [r.name, r.latency_ms_p99])),
    };
    if (state.graphAt === null) renderTopology();
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    renderSummary([], null);
    document.getElementById("updated").textContent = `cannot reach the control plane: ${e.message}`;
  }
  setTimeout(refresh, REFRESH_MS);
}

// --- live tap ----------------------------------------------------------------

function tapQuery() {
  const params = new URLSearchParams({ duration: "2s" });
  const target = document.getElementById("tap-target").value.trim();
  const path = document.getElementById("tap-path").value.trim();
  const status = document.getElementById("tap-status").value;
  if (target) params.set("target", target);
  if (path) params.set("path", path);
  if (status) params.set("status", status);
  return params.toString();
}

// Slow: at least the p99 of what it is counted under (the workload that received it, or
// the service that was called) over the window.
function isSlow(e) {
  const p99 = e.direction === "outbound" ? state.p99.service.get(e.target) : state.p99.workload.get(e.workload);
  return p99 !== null && p99 !== undefined && e.duration_ms >= p99;
}

// A traced request: a link to its trace in the user's trace UI (`--trace-url`), else its
// id, copied on click, to look up there.
function traceCell(e) {
  const id = typeof e.trace_id === "string" ? e.trace_id : "";
  if (!id) return el("td", { class: "muted" }, "");
  const short = `${id.slice(0, 8)}…`;
  if (typeof e.trace_url === "string" && /^https?:\/\//.test(e.trace_url)) {
    return el("td", {}, el("a", { class: "trace", href: e.trace_url, target: "_blank", rel: "noopener noreferrer", title: `trace ${id}`, "data-trace-id": id }, short));
  }
  const code = el("code", { class: "trace-id", title: `trace ${id} (click to copy)`, "data-trace-id": id }, id);
  code.addEventListener("click", () => {
    if (navigator.clipboard) navigator.clipboard.writeText(id).catch(() => {});
    window.getSelection().selectAllChildren(code);
  });
  return el("td", {}, code);
}

function addTapEvent(e) {
  const body = document.querySelector("#tap tbody");
  if (e.dropped) {
    document.getElementById("tap-note").textContent = `Fell behind: ${e.dropped} events dropped (traffic was never slowed).`;
    return;
  }
  const slow = isSlow(e);
  if (document.getElementById("tap-slow").checked && !slow) return;
  const time = new Date(e.ts_ms).toLocaleTimeString(undefined, { hour12: false }) + `.${String(e.ts_ms % 1000).padStart(3, "0")}`;
  const tone = e.status >= 500 ? "bad" : e.status >= 400 ? "warn" : "good";
  body.prepend(el("tr", { class: `tap-event${slow ? " slow" : ""}`, "data-workload": e.workload, "data-status": e.status },
    el("td", {}, time),
    el("td", {}, `${e.workload}-${e.replica}`),
    el("td", { title: e.client_id || e.source || "" }, e.direction === "outbound" ? `→ ${e.target}` : e.client_id ? `← ${e.client_id.replace(/^spiffe:\/\/[^/]+\//, "")}` : "← in (plaintext)"),
    el("td", {}, e.method),
    el("td", {}, e.authority),
    el("td", { class: "path", title: e.path }, e.path),
    el("td", { class: tone, title: e.policy ? `${e.audit ? "audit: would be refused by" : "refused by"} ${e.policy}` : "" },
      e.grpc_status !== null && e.grpc_status !== undefined ? `${e.status} / grpc ${e.grpc_status}` : e.status,
      e.policy ? ` (${e.audit ? "audit: " : ""}${e.policy})` : ""),
    el("td", { class: `num ${slow ? "warn" : ""}`, title: slow ? "at least the p99 over the window" : "" }, ms(e.duration_ms)),
    traceCell(e)));
  while (body.children.length > TAP_ROWS) body.lastChild.remove();
}

// Each request streams for 2 s (so it always ends) and the next follows at once.
async function tapLoop(generation) {
  while (state.tapping && generation === state.tapGeneration) {
    try {
      const response = await fetch(`/api/v1/tap?${tapQuery()}`, { cache: "no-store" });
      if (!response.ok) {
        const err = await response.json().catch(() => ({}));
        document.getElementById("tap-note").textContent = `Tap refused: ${err.error || response.status}`;
        await new Promise((r) => setTimeout(r, REFRESH_MS));
        continue;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line && generation === state.tapGeneration) addTapEvent(JSON.parse(line));
        }
      }
    } catch (e) {
      document.getElementById("tap-note").textContent = `Tap interrupted: ${e.message}`;
      await new Promise((r) => setTimeout(r, REFRESH_MS));
    }
  }
}

function restartTap() {
  state.tapGeneration += 1;
  if (state.tapping) tapLoop(state.tapGeneration);
}

document.getElementById("window").addEventListener("change", (e) => {
  state.window = e.target.value;
});
document.getElementById("history-kind").addEventListener("change", (e) => {
  state.historyKind = e.target.value;
  renderCharts();
});
document.getElementById("graph-time").addEventListener("input", (e) => {
  const times = state.history.edge ? state.history.edge.timestamps_ms : [];
  const i = Number(e.target.value);
  state.graphAt = i >= times.length ? null : times[i];
  renderTopology();
});
for (const id of ["tap-target", "tap-path", "tap-status"]) document.getElementById(id).addEventListener("change", restartTap);
document.getElementById("tap-toggle").addEventListener("click", (e) => {
  state.tapping = !state.tapping;
  e.target.textContent = state.tapping ? "Pause" : "Resume";
  restartTap();
});

refresh();
refreshHistory();
restartTap();
