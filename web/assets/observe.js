// deployex charts and observer: redraws the server-rendered SVG charts as
// new points arrive (SSE /api/v1/history/stream), shows values on hover,
// and drives the observer page (sortable, auto-refreshing process table,
// process details). Data from the server is only ever inserted with
// textContent, never as HTML.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const W = 300, H = 90, HOUR = 3600 * 1000;

  function fmt(v, unit) {
    if (v === null || v === undefined) return "—";
    if (unit === "bytes") {
      if (v < 1024) return Math.round(v) + " B";
      const units = ["KiB", "MiB", "GiB", "TiB"];
      let x = v / 1024, u = 0;
      while (x >= 1024 && u < units.length - 1) { x /= 1024; u++; }
      return x.toFixed(1) + " " + units[u];
    }
    if (unit === "pct") return Number(v).toFixed(1) + " %";
    return Number.isInteger(v) ? String(v) : Number(v).toFixed(2);
  }
  function fmtTime(ms) { return new Date(ms).toLocaleTimeString(); }

  // ---------------------------------------------------------- charts --
  // data[target] = { series: {name: [[t, v], ...]}, deploys: [[t, version], ...] }
  const data = {};

  function merge(target, s) {
    const d = data[target] || (data[target] = { series: {}, deploys: [] });
    for (const [name, pts] of Object.entries(s.series || {})) {
      const cur = d.series[name] || (d.series[name] = []);
      const lastT = cur.length ? cur[cur.length - 1][0] : -1;
      for (const p of pts) if (p[0] > lastT) cur.push(p);
      const cutoff = (cur.length ? cur[cur.length - 1][0] : 0) - HOUR;
      while (cur.length && cur[0][0] < cutoff) cur.shift();
    }
    for (const dep of s.deploys || []) {
      if (!d.deploys.some((x) => x[0] === dep[0] && x[1] === dep[1])) d.deploys.push(dep);
    }
  }

  function range(fig) {
    const d = data[fig.dataset.target];
    const names = fig.dataset.series.split(",");
    let t0 = Infinity, t1 = -Infinity, max = 0;
    for (const n of names) {
      const pts = (d && d.series[n]) || [];
      if (!pts.length) continue;
      t0 = Math.min(t0, pts[0][0]);
      t1 = Math.max(t1, pts[pts.length - 1][0]);
      for (const p of pts) max = Math.max(max, p[1]);
    }
    return { t0, t1, max: max > 0 ? max * 1.1 : 1, names, d };
  }

  function draw(fig) {
    const { t0, t1, max, names, d } = range(fig);
    if (!d || !isFinite(t0)) return;
    const span = Math.max(t1 - t0, 1);
    const unit = fig.dataset.unit;
    names.forEach((n) => {
      const pts = d.series[n] || [];
      const line = $('polyline[data-s="' + n + '"]', fig);
      if (line) {
        line.setAttribute("points", pts.map((p) =>
          ((p[0] - t0) / span * W).toFixed(1) + "," + (H - p[1] / max * (H - 4)).toFixed(1)).join(" "));
        line.dataset.n = String(pts.length);
      }
      const v = $('li[data-s="' + n + '"] .v', fig);
      if (v) v.textContent = pts.length ? fmt(pts[pts.length - 1][1], unit) : "—";
    });
    const g = $("g.deploys", fig);
    if (g) {
      while (g.firstChild) g.removeChild(g.firstChild);
      for (const [t, version] of d.deploys) {
        if (t < t0 || t > t1) continue;
        const x = ((t - t0) / span * W).toFixed(1);
        const l = document.createElementNS("http://www.w3.org/2000/svg", "line");
        l.setAttribute("class", "deploy");
        l.setAttribute("x1", x); l.setAttribute("x2", x);
        l.setAttribute("y1", "0"); l.setAttribute("y2", String(H));
        const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
        title.textContent = "deployed " + version;
        l.appendChild(title);
        g.appendChild(l);
      }
    }
    const m = $('[data-f="max"]', fig);
    if (m) m.textContent = fmt(max / 1.1, unit);
  }

  function hover(fig, ev) {
    const svg = $("svg", fig);
    const { t0, t1, names, d } = range(fig);
    const out = $('[data-f="hover"]', fig);
    const cursor = $("line.cursor", fig);
    if (!d || !isFinite(t0) || !out) return;
    const box = svg.getBoundingClientRect();
    const frac = Math.min(Math.max((ev.clientX - box.left) / Math.max(box.width, 1), 0), 1);
    const t = t0 + frac * (t1 - t0);
    const parts = [];
    let at = null;
    for (const n of names) {
      const pts = d.series[n] || [];
      if (!pts.length) continue;
      let best = pts[0];
      for (const p of pts) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      at = best[0];
      parts.push(n + " " + fmt(best[1], fig.dataset.unit));
    }
    const dep = d.deploys.find((x) => Math.abs(x[0] - t) < (t1 - t0) / 60);
    if (dep) parts.push("deployed " + dep[1]);
    out.textContent = at === null ? "" : fmtTime(at) + " · " + parts.join(" · ");
    if (cursor && at !== null) {
      const x = ((at - t0) / Math.max(t1 - t0, 1) * W).toFixed(1);
      cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
      cursor.setAttribute("visibility", "visible");
    }
  }

  async function initCharts() {
    const figs = $$("figure.chart");
    if (!figs.length) return;
    const targets = Array.from(new Set(figs.map((f) => f.dataset.target)));
    await Promise.all(targets.map(async (t) => {
      const api = document.body.dataset.api || "/api/v1";
      const url = t === "host" ? "/api/v1/host/history" : api + "/instances/" + encodeURIComponent(t) + "/history";
      try {
        const r = await fetch(url, { credentials: "same-origin" });
        if (r.ok) merge(t, await r.json());
      } catch (_) { /* keep the server-rendered chart */ }
    }));
    figs.forEach(draw);
    figs.forEach((f) => {
      const svg = $("svg", f);
      svg.addEventListener("mousemove", (ev) => hover(f, ev));
      svg.addEventListener("mouseleave", () => {
        const c = $("line.cursor", f);
        if (c) c.setAttribute("visibility", "hidden");
        const out = $('[data-f="hover"]', f);
        if (out) out.textContent = "";
      });
    });
    const live = $("[data-live]");
    if (!live || !window.EventSource) return;
    const es = new EventSource(live.dataset.live);
    es.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      const touched = new Set();
      if (msg.host) { merge("host", msg.host); touched.add("host"); }
      for (const [i, s] of Object.entries(msg.instances || {})) { merge(i, s); touched.add(i); }
      figs.filter((f) => touched.has(f.dataset.target)).forEach(draw);
      document.body.dataset.chartUpdates = String(Number(document.body.dataset.chartUpdates || 0) + 1);
    };
  }

  // -------------------------------------------------------- observer --
  function td(text, cls) {
    const e = document.createElement("td");
    if (cls) e.className = cls;
    e.textContent = text === null || text === undefined ? "—" : String(text);
    return e;
  }
  function pidButton(pid) {
    const b = document.createElement("button");
    b.className = "link pid";
    b.dataset.pid = pid;
    b.textContent = pid;
    return b;
  }

  function initObserver() {
    const section = $("#processes");
    if (!section) return;
    const i = section.dataset.instance;
    let sort = "memory";
    async function refresh() {
      try {
        const r = await fetch((document.body.dataset.api || "/api/v1") + "/instances/" + i + "/processes?sort=" + sort + "&limit=50", { credentials: "same-origin" });
        if (!r.ok) { document.body.dataset.procError = "HTTP " + r.status; return; }
        const list = await r.json();
        const body = $("#proc-rows");
        while (body.firstChild) body.removeChild(body.firstChild);
        for (const p of list) {
          const tr = document.createElement("tr");
          const c = document.createElement("td");
          c.appendChild(pidButton(p.pid));
          tr.appendChild(c);
          tr.appendChild(td(p.name));
          tr.appendChild(td(p.current_function, "mono"));
          tr.appendChild(td(p.initial_call, "mono"));
          tr.appendChild(td(p.memory, "num"));
          tr.appendChild(td(p.reductions, "num"));
          tr.appendChild(td(p.message_queue_len, "num"));
          body.appendChild(tr);
        }
        document.body.dataset.procRefreshes = String(Number(document.body.dataset.procRefreshes || 0) + 1);
      } catch (e) { document.body.dataset.procError = String(e); /* next tick */ }
    }
    $$("th.sort", section).forEach((th) => th.addEventListener("click", () => {
      sort = th.dataset.sort;
      $$("th.sort", section).forEach((x) => x.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", "descending");
      refresh();
    }));
    setInterval(() => { if ($("#auto-refresh").checked) refresh(); }, 2000);

    async function detail(pid) {
      const panel = $("#process-detail");
      const r = await fetch((document.body.dataset.api || "/api/v1") + "/instances/" + i + "/processes/" + encodeURIComponent(pid), { credentials: "same-origin" });
      let j = null;
      try { j = await r.json(); } catch (_) { j = null; }
      panel.hidden = false;
      $("#detail-pid").textContent = pid;
      const dl = $("#detail-fields");
      while (dl.firstChild) dl.removeChild(dl.firstChild);
      if (!r.ok || !j) {
        $("#detail-stack").textContent = "";
        $("#detail-state").textContent = (j && j.error) || ("failed: " + r.status);
        return;
      }
      for (const k of ["name", "status", "memory", "reductions", "message_queue_len", "total_heap_size", "trap_exit",
        "current_function", "initial_call", "$initial_call", "group_leader", "links", "monitors", "monitored_by", "dictionary_keys"]) {
        const div = document.createElement("div");
        div.className = "field";
        const dt = document.createElement("dt"); dt.textContent = k;
        const dd = document.createElement("dd");
        const v = j[k];
        dd.textContent = Array.isArray(v) ? (v.length ? v.join(", ") : "—") : (v === null || v === undefined ? "—" : String(v));
        div.appendChild(dt); div.appendChild(dd); dl.appendChild(div);
      }
      $("#detail-stack").textContent = (j.current_stacktrace || []).join("\n");
      $("#detail-state").textContent = j.state === null || j.state === undefined
        ? "(not an OTP process)" : j.state + (j.state_truncated ? "\n… (truncated)" : "");
      panel.scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("click", (ev) => {
      const b = ev.target.closest && ev.target.closest("button.pid");
      if (b && b.dataset.pid && b.dataset.pid.startsWith("<")) detail(b.dataset.pid);
    });
    const close = $("#detail-close");
    if (close) close.addEventListener("click", () => { $("#process-detail").hidden = true; });
  }

  document.addEventListener("DOMContentLoaded", () => {
    initCharts();
    initObserver();
  });
})();
