// The lb console: reads the admin API of the listener that served it, every second, and
// acts only through the admin API's existing endpoints. No framework, no build step.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120;
const TOKEN_KEY = "lb-admin-token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  page: "overview",
  prev: null,      // the previous /stats reading
  history: [],     // overview points: {t, rps, errors, p99}
  routeRates: {},  // route name -> {rps, eps}
  timer: null,
  busy: false,
  again: false,    // a refresh was asked for while one ran
  generation: 0,   // bumped when the page changes: a reading for an old page is dropped
};

// Thrown to drop a reading that came back after the page changed.
class Stale extends Error {}

// ---------- DOM helpers (text only: nothing from the API is parsed as HTML) ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(headers, rows, attrs) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) =>
      el("th", { class: h.startsWith("#") ? "num" : "" }, h.replace(/^#/, ""))))),
    el("tbody", {}, rows.map((r) => el("tr", r.attrs || {}, r.cells.map((c, i) =>
      el("td", { class: headers[i] && headers[i].startsWith("#") ? "num" : "" }, c))))));
}

function tile(label, value, id, small) {
  return el("div", { class: "tile" },
    el("div", { class: "label" }, label),
    el("div", { class: small ? "value small" : "value", id }, value));
}

function badge(text, kind) { return el("span", { class: "badge " + (kind || "") }, text); }

function fmtRate(x) { return x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) : x.toFixed(1); }
function fmtPct(x) { return x === null || x === undefined || isNaN(x) ? "–" : (x * 100).toFixed(x < 0.1 ? 2 : 1) + "%"; }
function fmtMs(x) { return x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) + " ms" : x.toFixed(0) + " ms"; }
function fmtDuration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}
function fmtTime(unix) { return unix ? new Date(unix * 1000).toLocaleString() : "–"; }

// ---------- the admin API ----------

class AuthError extends Error {}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const init = { method, headers, cache: "no-store", signal: AbortSignal.timeout(8000) };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new Error(`lb's admin API is not answering (${e.message})`);
  }
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON: said below */ }
  if (res.status === 401) throw new AuthError((data && data.reason) || "unauthorized");
  if (!res.ok) {
    const why = data ? (data.reason || data.error) : res.statusText;
    throw new Error(`${method} ${path}: ${res.status} ${why}`);
  }
  return data;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg;
  e.hidden = !msg;
}

function showNotice(msg) {
  const n = document.getElementById("notice");
  n.textContent = msg;
  n.hidden = !msg;
  if (msg) setTimeout(() => { if (n.textContent === msg) n.hidden = true; }, 6000);
}

function askToken(refused) {
  document.getElementById("login").hidden = false;
  document.getElementById("page").hidden = true;
  document.getElementById("login-why").textContent = refused
    ? "The token was refused: lb answered 401. Enter the admin token from [admin] token."
    : "This lb asks for its admin token ([admin] token in its config).";
  if (refused) {
    showError("Unauthorized: the admin token was refused.");
    document.getElementById("error").dataset.poll = "1";
  }
  document.getElementById("status").textContent = "signed out";
}

// ---------- charts ----------

// A line chart: `lines` are {values, cls}; `limits` are {value, label}. Values may be null.
function chart(title, lines, limits, fmt, id) {
  const W = 560, H = 150, L = 48, R = 8, T = 10, B = 18;
  const all = lines.flatMap((l) => l.values).concat(limits.map((x) => x.value))
    .filter((v) => v !== null && v !== undefined && isFinite(v));
  const max = Math.max(1e-9, ...all) * 1.15;
  const n = Math.max(2, ...lines.map((l) => l.values.length));
  const x = (i) => L + (W - L - R) * i / (n - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const parts = [
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#c5cbd6" }),
    svg("text", { x: 4, y: T + 8, "font-size": 10, fill: "#6b7385" }, fmt(max)),
    svg("text", { x: 4, y: H - B, "font-size": 10, fill: "#6b7385" }, fmt(0)),
  ];
  for (const lim of limits) {
    if (lim.value === null || lim.value === undefined || !isFinite(lim.value)) continue;
    parts.push(svg("line", { x1: L, y1: y(lim.value), x2: W - R, y2: y(lim.value), stroke: "#c62828",
      "stroke-dasharray": "5 4", class: "limit" }));
    parts.push(svg("text", { x: W - R - 4, y: y(lim.value) - 3, "font-size": 10, fill: "#c62828",
      "text-anchor": "end" }, `${lim.label} ${fmt(lim.value)}`));
  }
  for (const l of lines) {
    const pts = [];
    l.values.forEach((v, i) => { if (v !== null && v !== undefined && isFinite(v)) pts.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
    const color = l.cls === "canary" ? "#d2691e" : "#2f5fd0";
    if (pts.length > 1) {
      parts.push(svg("polyline", { points: pts.join(" "), fill: "none", "stroke-width": 2,
        stroke: color, class: "series " + l.cls }));
    }
    // Points too: a window with one busy bucket is one point, which a line would not show.
    if (pts.length < 40) {
      for (const p of pts) {
        const [cx, cy] = p.split(",");
        parts.push(svg("circle", { cx, cy, r: 3, fill: color, class: "point " + l.cls }));
      }
    }
  }
  return el("div", { class: "chart", id },
    el("div", { class: "title" }, title),
    (() => { const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, parts); return s; })());
}

// ---------- reading /stats ----------

function sumClasses(series) {
  const c = [0, 0, 0, 0, 0];
  for (const s of series) s.classes.forEach((n, i) => { c[i] += n; });
  return c;
}

function quantile(buckets, bounds, q) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = Math.ceil(total * q);
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i];
    if (seen >= rank) return i < bounds.length ? bounds[i] * 1000 : bounds[bounds.length - 1] * 1000;
  }
  return null;
}

// Turns two /stats readings into rates: overall and per route.
function digest(cur, prev) {
  const out = { rps: null, errorShare: null, p99: null, routes: {} };
  // A reading from another process, or too old to make a current rate of, is no base.
  if (!prev || prev.pid !== cur.pid || cur.now_unix_ms - prev.now_unix_ms > 3 * POLL_MS) return out;
  const dt = (cur.now_unix_ms - prev.now_unix_ms) / 1000;
  if (dt <= 0) return out;
  const before = new Map(prev.series.map((s) => [s.route + "\u0000" + s.cluster, s]));
  const buckets = new Array(cur.duration_bounds_seconds.length + 1).fill(0);
  let total = 0, errors = 0;
  for (const s of cur.series) {
    const p = before.get(s.route + "\u0000" + s.cluster);
    const dc = s.classes.map((n, i) => n - (p ? p.classes[i] : 0));
    const n = dc.reduce((a, b) => a + b, 0);
    total += n; errors += dc[4];
    s.buckets.forEach((b, i) => { buckets[i] += b - (p ? p.buckets[i] : 0); });
    const r = out.routes[s.route] || (out.routes[s.route] = { rps: 0, eps: 0 });
    r.rps += n / dt; r.eps += dc[4] / dt;
  }
  out.rps = total / dt;
  out.errorShare = total ? errors / total : 0;
  out.p99 = quantile(buckets, cur.duration_bounds_seconds, 0.99);
  return out;
}

// ---------- pages ----------

const pages = {};

pages.overview = {
  build(root) {
    root.append(
      el("div", { class: "tiles" },
        tile("Requests/s", "–", "ov-rps"),
        tile("Error share (5xx)", "–", "ov-errors"),
        tile("p99 latency", "–", "ov-p99"),
        tile("Open connections", "–", "ov-conns"),
        tile("Config version", "–", "ov-version", true),
        tile("Config source", "–", "ov-source", true),
        tile("Uptime", "–", "ov-uptime", true),
        tile("Last reload", "–", "ov-reload", true)),
      el("div", { class: "card" }, el("h2", {}, "Traffic"), el("div", { class: "charts", id: "ov-charts" })),
      el("div", { class: "card" }, el("h2", {}, "Workers"), el("div", { id: "ov-workers" })));
  },
  async refresh(check) {
    const cur = await api("GET", "/stats");
    check();
    const d = digest(cur, state.prev);
    state.prev = cur;
    if (d.rps !== null) {
      state.history.push({ rps: d.rps, errors: d.errorShare, p99: d.p99 });
      if (state.history.length > HISTORY) state.history.shift();
    }
    const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v; };
    set("ov-rps", fmtRate(d.rps));
    set("ov-errors", fmtPct(d.errorShare));
    set("ov-p99", fmtMs(d.p99));
    set("ov-conns", cur.workers.reduce((a, w) => a + w.active, 0));
    set("ov-version", cur.version.slice(0, 12) + " · loaded " + fmtTime(cur.loaded_at_unix));
    set("ov-source", cur.source);
    set("ov-uptime", fmtDuration(cur.uptime_seconds) + (cur.draining ? " (draining)" : ""));
    const r = cur.last_reload;
    const reload = document.getElementById("ov-reload");
    if (reload) {
      reload.replaceChildren(!r ? "none since start"
        : r.ok ? el("span", {}, badge("ok", "ok"), " ", r.version.slice(0, 12), " at ", fmtTime(r.at_unix))
          : el("span", {}, badge("refused", "bad"), " at ", fmtTime(r.at_unix), el("br"), r.errors.join("; ")));
    }
    const h = state.history;
    document.getElementById("ov-charts").replaceChildren(
      chart("requests/s", [{ values: h.map((p) => p.rps), cls: "base" }], [], fmtRate, "chart-rps"),
      chart("error share", [{ values: h.map((p) => p.errors), cls: "canary" }], [], fmtPct, "chart-errors"),
      chart("p99", [{ values: h.map((p) => p.p99), cls: "base" }], [], fmtMs, "chart-p99"));
    document.getElementById("ov-workers").replaceChildren(table(["worker", "#open connections", "#accepted"],
      cur.workers.map((w) => ({ cells: [w.worker, w.active, w.accepted] }))));
  },
};

// The question for POST /explain. A request pasted whole into the headers box (request line,
// then header lines, as a log or a capture shows it) gives the method and URL as well.
function explainQuestion(method, url, text, client) {
  let lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l);
  const first = lines.length ? lines[0].match(/^([A-Za-z]+)\s+(\S+)(\s+HTTP\/[0-9.]+)?$/) : null;
  if (first) {
    method = first[1].toUpperCase();
    lines = lines.slice(1);
    url = first[2];
  }
  return { method, url, headers: lines, client };
}

pages.routes = {
  build(root) {
    const method = el("select", { id: "ex-method" }, ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].map((m) => el("option", {}, m)));
    const form = el("form", { id: "explain-form", class: "explain" },
      el("label", { for: "ex-method" }, "Method"), method,
      el("label", { for: "ex-url" }, "URL"), el("input", { id: "ex-url", placeholder: "http://shop.example.com/api/orders/42" }),
      el("label", { for: "ex-headers" }, "Headers"), el("textarea", { id: "ex-headers", rows: 4, placeholder: "X-Canary: true\n(or paste a whole request: GET /api/orders/42 HTTP/1.1, then its headers)" }),
      el("label", { for: "ex-client" }, "Client address"), el("input", { id: "ex-client", placeholder: "127.0.0.1" }),
      el("span"), el("div", {}, el("button", { type: "submit", id: "ex-go" }, "Explain")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = document.getElementById("ex-out");
      try {
        const x = await api("POST", "/explain", explainQuestion(method.value,
          document.getElementById("ex-url").value, document.getElementById("ex-headers").value,
          document.getElementById("ex-client").value));
        out.replaceChildren(el("pre", { id: "ex-text" }, x.text));
      } catch (e) {
        if (e instanceof AuthError) return askToken(true);
        out.replaceChildren(el("div", { class: "banner error", id: "ex-text" }, e.message));
      }
    });
    root.append(
      el("div", { class: "card" }, el("h2", {}, "Routes"), el("div", { id: "routes-table" })),
      el("div", { class: "card" }, el("h2", {}, "Explain a request"),
        el("p", { class: "muted" }, "What lb would do with a request, planned on the live config (no rate-limit token is spent, no split decision counted)."),
        form, el("div", { id: "ex-out" })));
  },
  async refresh(check) {
    const [routes, cur] = await Promise.all([api("GET", "/routes"), api("GET", "/stats")]);
    check();
    const d = digest(cur, state.prev);
    state.prev = cur;
    if (d.rps !== null) state.routeRates = d.routes;
    const totals = {};
    for (const s of cur.series) {
      const t = totals[s.route] || (totals[s.route] = [0, 0]);
      t[0] += s.classes.reduce((a, b) => a + b, 0); t[1] += s.classes[4];
    }
    const rows = routes.routes.map((r) => {
      const rate = state.routeRates[r.name] || { rps: 0, eps: 0 };
      const t = totals[r.name] || [0, 0];
      const a = r.action;
      const action = a.versions ? "versions: " + Object.entries(a.versions).map(([v, c]) => `${v} → ${c}`).join(", ")
        : a.cluster !== undefined ? "→ " + a.cluster : a.redirect !== undefined ? "redirect " + a.redirect : "respond " + a.respond;
      const match = el("ul", { class: "matchers" }, (r.matchers || []).map((m) => el("li", {}, m)));
      return { attrs: { "data-route": r.name }, cells: [r.name, match, action,
        r.deprecated ? badge("deprecated", "warn") : "", fmtRate(rate.rps), fmtRate(rate.eps), t[0], t[1]] };
    });
    document.getElementById("routes-table").replaceChildren(
      table(["route", "matches", "action", "", "#req/s", "#5xx/s", "#requests", "#5xx"], rows, { id: "routes" }));
  },
};

pages.clusters = {
  build(root) { root.append(el("div", { id: "clusters" })); },
  async refresh(check) {
    const data = await api("GET", "/clusters");
    check();
    document.getElementById("clusters").replaceChildren(...data.clusters.map((c) =>
      el("div", { class: "card", "data-cluster": c.name },
        el("h2", {}, c.name, " ", el("span", { class: "muted" }, `${c.balancer} · ${c.in_flight} in flight · ${c.connections} connections`)),
        table(["endpoint", "health", "breaker", "#in flight", "#connections", "#ejections", "ejected for", "#requests", "#failures"],
          c.endpoints.map((e) => ({ attrs: { "data-endpoint": e.addr }, cells: [
            e.target && e.target !== e.addr ? `${e.target} (${e.addr})` : e.addr,
            !e.healthy ? badge("down", "bad") : !e.available ? badge("ejected", "warn") : badge("healthy", "ok"),
            e.breaker === "closed" ? badge("closed", "ok") : badge(e.breaker, e.breaker === "open" ? "bad" : "warn"),
            e.in_flight, e.connections, e.ejections, e.ejected_for_ms ? fmtMs(e.ejected_for_ms) : "–", e.requests, e.failures] }))))));
  },
};

// The Releases page keeps each split's card and its buttons, and refreshes what is inside:
// a button replaced while it is being pressed would lose the click.
const splits = {}; // name -> the latest /splits entry

function splitButton(name, action, label) {
  return el("button", { "data-action": action, onclick: (ev) => {
    const s = splits[name];
    const act = ev.currentTarget.dataset.action;
    if (act === "weights") return askWeights(s);
    const what = ev.currentTarget.textContent;
    confirmThen(`${what} split "${name}"? This calls POST /splits/${name}/${act}.`, null, () => callSplit(name, act));
  } }, label);
}

function askWeights(s) {
  const inputs = s.targets.map((t) => el("input", { type: "number", min: 0, max: 100, step: "any", value: t.weight_percent, "data-target": t.name }));
  const extra = el("div", {}, s.targets.map((t, i) => el("label", {}, t.name, inputs[i])));
  confirmThen(`Set the weights of split "${s.name}" (percent, adding up to 100):`, extra, () => {
    const w = {};
    inputs.forEach((inp) => { w[inp.dataset.target] = Number(inp.value); });
    return callSplit(s.name, "weights", { weights: w });
  });
}

async function callSplit(name, action, body) {
  try {
    const r = await api("POST", `/splits/${encodeURIComponent(name)}/${action}`, body || {});
    const w = Object.entries(r.weights).map(([k, v]) => `${k} ${v}%`).join(", ");
    showError("");
    showNotice(`${name}: ${action} done; weights now ${w}`);
  } catch (e) {
    if (e instanceof AuthError) return askToken(true);
    showError(e.message);
    delete document.getElementById("error").dataset.poll;
  }
  refresh();
}

function confirmThen(text, extra, then) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  d.onclose = () => { if (d.returnValue === "ok") then(); };
  d.returnValue = "";
  d.showModal();
}

pages.releases = {
  build(root) { root.append(el("div", { id: "splits" })); },
  async refresh(check) {
    const data = await api("GET", "/splits");
    check();
    const root = document.getElementById("splits");
    if (!data.splits.length) {
      return root.replaceChildren(el("div", { class: "card muted" }, "No route has a split."));
    }
    const cards = data.splits.map((s) => {
      splits[s.name] = s;
      let card = document.getElementById("split-" + s.name);
      if (!card || card.parentNode !== root) card = splitCard(s.name);
      fillSplit(card, s);
      return card;
    });
    // Reorder or drop cards only when the set of splits changed.
    const now = Array.from(root.children);
    if (now.length !== cards.length || now.some((c, i) => c !== cards[i])) root.replaceChildren(...cards);
  },
};

function splitCard(name) {
  const part = (cls, tag) => el(tag || "div", { class: cls });
  return el("div", { class: "card", "data-split": name, id: "split-" + name },
    part("split-head"), part("split-bar"), part("split-targets"), part("split-legend"),
    part("split-charts charts"), part("split-decision", "p"),
    el("div", { class: "actions" },
      splitButton(name, "promote", "Promote"), splitButton(name, "rollback", "Roll back"),
      splitButton(name, "pause", "Pause"), splitButton(name, "weights", "Set weights")));
}

function fillSplit(card, s) {
  const q = (cls) => card.querySelector("." + cls);
  const a = s.analysis;
  const byName = Object.fromEntries(s.targets.map((t) => [t.name, t]));
  const base = a ? byName[a.baseline] : s.targets[0];
  const canary = a ? byName[a.canary] : s.targets[1];
  const state = s.rolled_back ? badge("rolled back", "bad") : s.paused ? badge("paused", "warn")
    : s.runtime_weights ? badge("weights set at runtime", "") : badge("as configured", "ok");
  q("split-head").replaceChildren(el("h2", {}, s.name, " ", el("span", { class: "muted" }, "route " + s.route), " ", state));
  q("split-bar").replaceChildren(el("div", { class: "weights", title: "current weights" },
    s.targets.map((t, i) => { const d = el("div", { class: "w" + (i % 4), title: `${t.name} ${t.weight_percent}%` }); d.style.width = t.weight_percent + "%"; return d; })));
  q("split-targets").replaceChildren(table(["target", "cluster", "#weight", "#configured", "#requests", "#errors", "#error share", "#p99"],
    s.targets.map((t) => ({ attrs: { "data-target": t.name }, cells: [t.name, t.cluster, t.weight_percent + "%", t.configured_percent + "%",
      t.window.requests, t.window.errors, fmtPct(t.window.error_rate), fmtMs(t.window.p99_ms)] }))));
  const charts = [];
  if (base && canary) {
    const lines = (f) => [{ values: base.series.map(f), cls: "base" }, { values: canary.series.map(f), cls: "canary" }];
    const rate = (b) => (b.requests ? b.error_rate : null);
    const errLimits = [];
    if (a && a.max_error_rate !== null) errLimits.push({ value: a.max_error_rate, label: "max" });
    if (a && a.max_error_rate_increase !== null) errLimits.push({ value: base.window.error_rate + a.max_error_rate_increase, label: "baseline +" + fmtPct(a.max_error_rate_increase) + " =" });
    const p99Limits = [];
    if (a && a.max_p99_ms !== null) p99Limits.push({ value: a.max_p99_ms, label: "max" });
    if (a && a.max_p99_ratio !== null && base.window.p99_ms !== null) p99Limits.push({ value: base.window.p99_ms * a.max_p99_ratio, label: `baseline ×${a.max_p99_ratio} =` });
    charts.push(
      chart(`error share over the last ${s.window_seconds}s, per ${s.window_seconds / 10}s`, lines(rate), errLimits, fmtPct, `chart-${s.name}-errors`),
      chart(`p99 over the last ${s.window_seconds}s`, lines((b) => b.p99_ms), p99Limits, fmtMs, `chart-${s.name}-p99`));
  }
  q("split-legend").replaceChildren(...(charts.length ? [el("div", { class: "legend" },
    el("span", { class: "base" }, "baseline " + base.name), el("span", { class: "canary" }, "canary " + canary.name),
    el("span", { class: "limit" }, "threshold"))] : []));
  q("split-charts").replaceChildren(...charts);
  const d = s.last_decision || {};
  q("split-decision").replaceChildren(
    s.promotion ? `Promotion step ${s.promotion_step + 1} of ${s.promotion.steps_percent.length} (${s.promotion.steps_percent.join("% → ")}%). ` : "",
    "Last decision: ", el("b", { class: "decision" }, d.action || "none"), d.reason ? ` — ${d.reason}` : "", d.at_unix ? ` (${fmtTime(d.at_unix)})` : "",
    s.last_verdict ? el("span", { class: "muted" }, ` · analysis: ${s.last_verdict}`) : "");
  const pause = card.querySelector("button[data-action=pause], button[data-action=resume]");
  pause.dataset.action = s.paused ? "resume" : "pause";
  pause.textContent = s.paused ? "Resume" : "Pause";
}

pages.kernel = {
  build(root) { root.append(el("div", { id: "kernel" })); },
  async refresh(check) {
    const k = await api("GET", "/steering");
    check();
    const counters = k.xdp ? Object.entries(k.xdp).map(([name, v]) => ({ cells: [name, v ? v.packets : "–", v ? v.bytes : "–"] })) : [];
    document.getElementById("kernel").replaceChildren(
      el("div", { class: "tiles" },
        tile("eBPF steering", k.status, "k-status", true), tile("Mode", k.mode, "k-mode", true),
        tile("Policy", k.policy, "k-policy", true), tile("Interfaces", (k.interfaces || []).join(", ") || "–", "k-ifaces", true)),
      el("div", { class: "card" }, el("h2", {}, "XDP verdicts"),
        counters.length ? table(["verdict", "#packets", "#bytes"], counters, { id: "xdp" }) : el("p", { class: "muted" }, "The XDP program is not running: " + k.status)),
      el("div", { class: "card" }, el("h2", {}, "Deny list"),
        k.deny && k.deny.length ? el("ul", { id: "deny" }, k.deny.map((p) => el("li", {}, p))) : el("p", { class: "muted" }, "empty")),
      el("div", { class: "card" }, el("h2", {}, "Connections per worker"),
        table(["worker", "#open", "#accepted"], k.workers.map((w) => ({ cells: [w.worker, w.active, w.accepted] })), { id: "k-workers" })));
  },
};

pages.certificates = {
  build(root) { root.append(el("div", { id: "certs" })); },
  async refresh(check) {
    const c = await api("GET", "/certificates");
    check();
    const now = Date.now() / 1000;
    document.getElementById("certs").replaceChildren(el("div", { class: "card" }, el("h2", {}, "Certificates in service"),
      c.certificates.length ? table(["listener", "names", "issuer", "expires", "key", "source", "sha256"],
        c.certificates.map((x) => {
          const days = Math.floor((x.not_after_unix - now) / 86400);
          return { cells: [x.listener, x.names.join(", "), x.issuer, el("span", {}, fmtTime(x.not_after_unix), " ",
            badge(`${days} days`, days < 14 ? "bad" : days < 30 ? "warn" : "ok")), x.key_type, x.source, (x.sha256 || "").slice(0, 16) + "…"] };
        }), { id: "cert-table" })
        : el("p", { class: "muted" }, "No listener serves TLS.")));
  },
};

pages.versions = {
  build(root) { root.append(el("div", { id: "versions" })); },
  async refresh(check) {
    const d = await api("GET", "/deprecations");
    check();
    const now = Date.now() / 1000;
    const kind = { active: "ok", deprecated: "warn", warning: "bad", sunset: "bad" };
    document.getElementById("versions").replaceChildren(el("div", { class: "card" },
      el("h2", {}, "Deprecated API versions and who still calls them"),
      d.versions.length ? table(["route", "version", "phase", "deprecated", "sunset", "successor", "consumers (requests, last seen)"],
        d.versions.map((v) => ({ attrs: { "data-version": `${v.route}/${v.version ?? ""}` }, cells: [
          v.route, v.version ?? el("span", { class: "muted" }, "the whole route"), badge(v.phase, kind[v.phase] || ""),
          fmtTime(v.deprecated_unix),
          v.sunset_unix ? el("span", {}, fmtTime(v.sunset_unix), " ", badge(`${Math.floor((v.sunset_unix - now) / 86400)} days`, "")) : "–",
          v.successor || "–",
          v.consumers.length ? el("ul", { class: "matchers" }, v.consumers.slice(0, 10).map((c) =>
            el("li", { "data-consumer": c.consumer }, `${c.consumer}: ${c.requests} (${fmtTime(c.last_seen_unix)})`)))
            : el("span", { class: "muted" }, "nobody yet"),
        ] })), { id: "versions-table" })
        : el("p", { class: "muted" }, "No route has a deprecated version.")));
  },
};

// ---------- the loop ----------

async function refresh() {
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  const generation = state.generation;
  try {
    await pages[state.page].refresh(() => { if (generation !== state.generation) throw new Stale(); });
    document.getElementById("login").hidden = true;
    document.getElementById("page").hidden = false;
    const error = document.getElementById("error");
    if (error.dataset.poll) { showError(""); delete error.dataset.poll; }
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof Stale) {
      // The page changed while this reading was on its way: the new page asks again.
    } else if (e instanceof AuthError) {
      askToken(Boolean(state.token));
    } else {
      showError(e.message);
      document.getElementById("error").dataset.poll = "1";
    }
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      refresh();
    }
  }
}

function show(page) {
  if (!pages[page]) page = "overview";
  state.page = page;
  state.generation += 1;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  const root = document.getElementById("page");
  root.replaceChildren();
  pages[page].build(root);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("confirm-cancel").addEventListener("click", () => document.getElementById("confirm").close("cancel"));
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    showError("");
    refresh();
  });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1) || "overview");
  state.timer = setInterval(refresh, POLL_MS);
});
