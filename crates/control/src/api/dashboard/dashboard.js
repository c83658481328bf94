// Tarmac dashboard: reads the control plane's API (same origin) and draws services,
// workloads, routes, edges, a topology graph, charts over time and a live tap.
// Plain DOM and SVG; names and paths are always set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const HISTORY_POINTS = 90;
const TAP_ROWS = 200;
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f778ba", "#39c5cf", "#ff7b72", "#a5d6ff"];
const SVG = "http://www.w3.org/2000/svg";

const state = {
  window: "1m",
  history: new Map(), // service -> [{t, rps, success, p50, p99}]
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
  table("edges", ["FROM", "TO", "mTLS", ...GOLDEN_HEAD, ...RESILIENCE_HEAD], edges, (r, m) =>
    el("tr", { "data-edge": `${r.src_workload}>${r.dst_service || r.dst_target}`, "data-rps": r.rps },
      el("td", {}, name(r.src_namespace, r.src_workload)),
      el("td", {}, r.dst_service ? name(r.dst_namespace, r.dst_service) : r.dst_target),
      el("td", { class: r.secured_rate === 1 ? "good" : r.secured_rate ? "warn" : "" }, pct(r.secured_rate)),
      ...goldenCells(r, m), ...resilienceCells(r)));
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
function renderGraph(edges, workloads, services) {
  const box = document.getElementById("graph");
  const live = edges.filter((e) => e.requests > 0);
  if (live.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "No traffic between workloads in the window yet."));
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

function remember(services) {
  const t = Date.now();
  for (const s of services) {
    const h = state.history.get(s.name) || [];
    h.push({ t, rps: s.rps, success: s.success_rate, p50: s.latency_ms_p50, p99: s.latency_ms_p99 });
    while (h.length > HISTORY_POINTS) h.shift();
    state.history.set(s.name, h);
  }
}

function chart(id, series, { min = 0, max, format, dashed = [] }) {
  const box = document.getElementById(id);
  const W = 420, H = 180, L = 44, B = 18, T = 8, R = 8;
  const points = series.flatMap((s) => s.points.filter((p) => p.v !== null && p.v !== undefined));
  if (points.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "waiting for data"));
    return;
  }
  const t0 = Math.min(...points.map((p) => p.t)), t1 = Math.max(...points.map((p) => p.t), t0 + 1);
  const top = max !== undefined ? max : Math.max(...points.map((p) => p.v), 1e-9) * 1.15;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - min) / (top - min || 1)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  for (const f of [0, 0.5, 1]) {
    const v = min + f * (top - min);
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, format(v)));
  }
  root.append(svg("text", { x: L, y: H - 4 }, `${Math.round((t1 - t0) / 1000)} s`));
  for (const s of series) {
    const pts = s.points.filter((p) => p.v !== null && p.v !== undefined);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": dashed.includes(s) ? "5 4" : "" }));
    const last = pts[pts.length - 1];
    root.append(svg("circle", { cx: x(last.t), cy: y(last.v), r: 2.5, fill: s.color }));
  }
  box.replaceChildren(root);
}

function renderCharts() {
  const names = [...state.history.keys()].sort();
  const series = (key) => names.map((n) => ({ name: n, color: color(n), points: state.history.get(n).map((p) => ({ t: p.t, v: p[key] })) }));
  chart("chart-rps", series("rps"), { format: (v) => v.toFixed(1) });
  chart("chart-success", series("success"), { min: 0, max: 1, format: (v) => `${Math.round(v * 100)}%` });
  const p50 = series("p50"), p99 = series("p99");
  chart("chart-latency", [...p50, ...p99], { format: (v) => v.toFixed(v < 10 ? 1 : 0), dashed: p50 });
  document.getElementById("legend").replaceChildren(...names.map((n) => el("span", { style: `--c:${color(n)}` }, n)));
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
    renderGraph(edges.rows, workloads.rows, services.rows);
    remember(services.rows);
    renderCharts();
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

function addTapEvent(e) {
  const body = document.querySelector("#tap tbody");
  if (e.dropped) {
    document.getElementById("tap-note").textContent = `Fell behind: ${e.dropped} events dropped (traffic was never slowed).`;
    return;
  }
  const time = new Date(e.ts_ms).toLocaleTimeString(undefined, { hour12: false }) + `.${String(e.ts_ms % 1000).padStart(3, "0")}`;
  const tone = e.status >= 500 ? "bad" : e.status >= 400 ? "warn" : "good";
  body.prepend(el("tr", { class: "tap-event", "data-workload": e.workload, "data-status": e.status },
    el("td", {}, time),
    el("td", {}, `${e.workload}-${e.replica}`),
    el("td", { title: e.client_id || e.source || "" }, e.direction === "outbound" ? `→ ${e.target}` : e.client_id ? `← ${e.client_id.replace(/^spiffe:\/\/[^/]+\//, "")}` : "← in (plaintext)"),
    el("td", {}, e.method),
    el("td", {}, e.authority),
    el("td", { class: "path", title: e.path }, e.path),
    el("td", { class: tone, title: e.policy ? `${e.audit ? "audit: would be refused by" : "refused by"} ${e.policy}` : "" },
      e.grpc_status !== null && e.grpc_status !== undefined ? `${e.status} / grpc ${e.grpc_status}` : e.status,
      e.policy ? ` (${e.audit ? "audit: " : ""}${e.policy})` : ""),
    el("td", { class: "num" }, ms(e.duration_ms))));
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
for (const id of ["tap-target", "tap-path", "tap-status"]) document.getElementById(id).addEventListener("change", restartTap);
document.getElementById("tap-toggle").addEventListener("click", (e) => {
  state.tapping = !state.tapping;
  e.target.textContent = state.tapping ? "Pause" : "Resume";
  restartTap();
});

refresh();
restartTap();
