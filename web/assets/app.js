// deployex dashboard: live updates (SSE), actions, log follow, terminal.
// Data from the server is only ever inserted with textContent, never as HTML.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  // The app this page is about: its API prefix (`/api/v1` or
  // `/api/v1/apps/{app}`), set by the server on <body>.
  const API = () => document.body.dataset.api || "/api/v1";

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  let toastTimer = null;
  function toast(msg, ok) {
    const t = $("#toast");
    if (!t) return;
    t.textContent = msg;
    t.className = ok ? "show ok" : "show err";
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = ""; }, 5000);
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    try {
      const r = await fetch(path, opts);
      let j = null;
      try { j = await r.json(); } catch (_) { j = null; }
      return { ok: r.ok, status: r.status, json: j };
    } catch (e) {
      return { ok: false, status: 0, json: { error: String(e) } };
    }
  }

  function outcome(what, r) {
    if (r.ok) toast(what + ": done", true);
    else toast(what + " failed (" + r.status + "): " + ((r.json && r.json.error) || "error"), false);
  }

  function fmtUptime(s) {
    if (s === null || s === undefined) return "—";
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + sec + "s";
    return sec + "s";
  }
  // Binary units, as erlang:memory counts (same as pages.rs fmt_bytes).
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n / 1024, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return v.toFixed(1) + " " + units[u];
  }
  function fmtDurationMs(ms) {
    return ms < 60000 ? (ms / 1000).toFixed(1) + " s" : fmtUptime(Math.floor(ms / 1000));
  }
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));
  const human = (v) => dash(v).replace(/_/g, " ");

  function setField(card, key, value) {
    const f = card.querySelector('[data-f="' + key + '"]');
    if (f && f.textContent !== value) f.textContent = value;
  }

  // ------------------------------------------------------------ dashboard
  function updateDashboard(s) {
    const banner = $("#deploying");
    if (banner) {
      if (s.deploying) {
        banner.textContent = "Deploying " + s.deploying.version + " to instance " + s.deploying.instance + ": " + s.deploying.step;
        banner.hidden = false;
      } else banner.hidden = true;
    }
    const stale = $("#stale");
    if (stale) stale.hidden = !s.stale;
    const dx = $("#deployex");
    if (dx) {
      setField(dx, "version", s.deployex.version);
      setField(dx, "distribution", s.deployex.tls ? "mutual TLS" : "plain TCP");
      const dxTls = dx.querySelector('[data-f="tls"]');
      if (dxTls) dxTls.hidden = !s.deployex.tls;
      const last = s.deploy_durations && s.deploy_durations.last;
      setField(dx, "last_deploy", last ? fmtDurationMs(last.duration_ms) + " (" + last.version + " on " + last.instance + ")" : "—");
      setField(dx, "uptime", fmtUptime(s.deployex.uptime_s));
      setField(dx, "mode", s.manual_version ? s.mode + " (" + s.manual_version + ")" : s.mode);
      setField(dx, "desired_version", dash(s.desired_version));
      const g = s.ghosted_versions || [];
      setField(dx, "last_ghosted", dash(g[g.length - 1]));
      const err = dx.querySelector('[data-f="last_error"]');
      if (err) { err.hidden = !s.last_error; err.textContent = dash(s.last_error); }
      const ul = $("#ghosted");
      if (ul && ul.dataset.v !== JSON.stringify(g)) {
        ul.dataset.v = JSON.stringify(g);
        ul.replaceChildren(...g.map((v) => {
          const li = el("li");
          li.append(el("span", null, v), " ");
          const b = el("button", null, "Un-ghost");
          b.dataset.action = "unghost";
          b.dataset.version = v;
          li.append(b);
          return li;
        }));
      }
    }
    for (const i of s.instances) {
      const card = $('[data-instance="' + i.instance + '"].instance');
      if (!card) { location.reload(); return; }
      card.classList.toggle("stale", !!i.stale);
      const badge = card.querySelector('[data-f="state"]');
      if (badge) { badge.dataset.state = i.state; badge.textContent = human(i.state); }
      setField(card, "version", dash(i.version));
      setField(card, "otp_connected", i.otp_connected ? "connected" : "not connected");
      const tls = card.querySelector('[data-f="tls"]');
      if (tls) tls.hidden = !i.tls;
      const b = i.beam;
      setField(card, "beam_memory", b ? fmtBytes(b.memory_bytes) : "—");
      setField(card, "beam_processes", b ? String(b.processes) : "—");
      setField(card, "beam_run_queue", b ? String(b.run_queue) : "—");
      setField(card, "beam_reductions", b ? dash(b.reductions_per_s) : "—");
      setField(card, "last_deployment", human(i.last_deployment));
      setField(card, "crash_restarts", String(i.crash_restarts));
      setField(card, "forced_restarts", String(i.forced_restarts));
      setField(card, "liveness_restarts", String(i.liveness_restarts || 0));
      setField(card, "watchdog_restarts", String(i.watchdog_restarts || 0));
      setField(card, "last_restart_reason", dash(i.last_restart_reason));
      setField(card, "boot", dash(i.boot));
      setField(card, "uptime", fmtUptime(i.uptime_s));
      setField(card, "port", String(i.port));
      setField(card, "node", i.node);
      setField(card, "os_pid", dash(i.os_pid));
      for (const k of ["crash_restarts", "forced_restarts", "liveness_restarts", "watchdog_restarts"]) {
        const f = card.querySelector('[data-k="' + k + '"]');
        if (f) f.classList.toggle("warn", i[k] > 0);
      }
      const err = card.querySelector('[data-f="last_error"]');
      if (err) { err.hidden = !i.last_error; err.textContent = dash(i.last_error); }
    }
  }

  function live(path, onData) {
    const es = new EventSource(path);
    es.onmessage = (e) => {
      try { onData(JSON.parse(e.data)); } catch (err) { console.error(err); }
    };
    es.onerror = () => { document.body.classList.add("offline"); };
    es.onopen = () => { document.body.classList.remove("offline"); };
    return es;
  }

  function initDashboard() {
    document.addEventListener("click", async (ev) => {
      const b = ev.target.closest("[data-action]");
      if (!b) return;
      const a = b.dataset.action;
      if (a === "restart") {
        const i = b.dataset.instance;
        if (!confirm("Restart instance " + i + "?")) return;
        outcome("Restart of instance " + i, await api("POST", API() + "/instances/" + encodeURIComponent(i) + "/restart"));
      } else if (a === "pin") {
        const v = $("#pin-version") && $("#pin-version").value;
        if (!v) { toast("No version to pin", false); return; }
        if (!confirm("Pin version " + v + " (manual mode)?")) return;
        outcome("Pin " + v, await api("POST", API() + "/mode", { mode: "manual", version: v }));
      } else if (a === "automatic") {
        if (!confirm("Go back to automatic mode?")) return;
        outcome("Automatic mode", await api("POST", API() + "/mode", { mode: "automatic" }));
      } else if (a === "unghost") {
        const v = b.dataset.version;
        if (!confirm("Un-ghost version " + v + "?")) return;
        outcome("Un-ghost " + v, await api("DELETE", API() + "/ghosted/" + encodeURIComponent(v)));
      }
    });
    live(API() + "/status/stream", updateDashboard);
    // The timeline: the newest events, every 5 s (text nodes only).
    const timeline = $("#events");
    let lastEvent = null;
    const refreshEvents = async () => {
      const r = await api("GET", API() + "/events?limit=10");
      if (!r.ok || !Array.isArray(r.json)) return;
      const top = r.json.length ? r.json[0].id : null;
      if (top === lastEvent) return;
      lastEvent = top;
      timeline.replaceChildren(...r.json.map((e) => {
        const li = el("li", "event");
        li.dataset.event = e.event;
        li.append(el("span", "at", e.at), " ", el("span", "badge kind", e.event.replace(/_/g, " ")));
        if (e.instance !== null && e.instance !== undefined) li.append(" ", el("span", "instance", "instance " + e.instance));
        if (e.version) li.append(" ", el("span", "version", e.version));
        li.append(" ", el("span", "message", e.message));
        return li;
      }));
    };
    if (timeline) setInterval(refreshEvents, 5000);
  }

  // ------------------------------------------------------------- overview
  // One row per app (pages/overview.rs), refreshed from GET /api/v1/apps;
  // the same words as the server's rendering.
  function appAlerts(s) {
    const out = [];
    if (s.stale) out.push("some actors did not answer in time");
    if (s.last_error) out.push(s.last_error);
    const down = s.instances.filter((i) => i.state !== "running").length;
    if (down > 0) out.push(down + " of " + s.instances.length + " instances not running");
    if (s.ghosted_versions.length) out.push("ghosted: " + s.ghosted_versions.join(", "));
    if (s.deploying) out.push("deploying " + s.deploying.version + " to instance " + s.deploying.instance);
    return out;
  }
  function initOverview() {
    const refresh = async () => {
      const r = await api("GET", "/api/v1/apps");
      if (!r.ok || !Array.isArray(r.json)) { document.body.classList.add("offline"); return; }
      document.body.classList.remove("offline");
      for (const s of r.json) {
        const row = $$("#apps tr[data-app]").find((tr) => tr.dataset.app === s.app);
        if (!row) { location.reload(); return; } // an app added by a reload
        const set = (k, v) => { const c = row.querySelector('[data-f="' + k + '"]'); if (c) c.textContent = v; return c; };
        const versions = [];
        for (const i of s.instances) if (i.version && !versions.includes(i.version)) versions.push(i.version);
        set("versions", versions.join(", "));
        set("mode", s.mode);
        const states = row.querySelector('[data-f="states"]');
        if (states) states.replaceChildren(...s.instances.flatMap((i) => {
          const b = el("span", "badge", i.instance + ": " + i.state.replace(/_/g, " "));
          b.dataset.state = i.state;
          b.title = "instance " + i.instance;
          return [b, " "];
        }));
        const l = s.deploy_durations && s.deploy_durations.last;
        set("last_deploy", l ? l.version + " to instance " + l.instance + " in " + fmtDurationMs(l.duration_ms) + " (" + l.finished_at + ")" : "—");
        const a = appAlerts(s);
        const cell = set("alerts", a.length ? a.join("; ") : "—");
        if (cell) cell.classList.toggle("warn", a.length > 0);
      }
      document.body.dataset.overviewRefreshes = String(Number(document.body.dataset.overviewRefreshes || 0) + 1);
    };
    setInterval(refresh, 2000);
  }

  // --------------------------------------------------------------- actors
  const SHOWN_MESSAGES = 3;
  const openActors = new Set();
  function actorNode(a) {
    const li = el("li", "actor");
    const head = el("div", "actor-head" + (a.in_flight ? " stuck" : ""));
    head.append(el("strong", null, a.name), " ", el("span", "mono", a.id), " ");
    const badge = el("span", "badge", a.status);
    badge.dataset.state = a.status;
    head.append(badge, " ", el("span", "restarts" + (a.restarts > 0 ? " warn" : ""), "restarts: " + a.restarts));
    li.append(head);
    const msgs = el("ul", "msgs");
    const row = (m, inflight) => {
      const r = el("li", "msg" + (inflight ? " inflight" : ""));
      r.append(el("span", "kind", m.kind), " ", el("span", "summary", m.summary), " ", el("span", "at", m.at), " ",
        el("span", "us", m.handling_us === null || m.handling_us === undefined ? "in flight" : m.handling_us + " µs"));
      return r;
    };
    // In flight + the 3 latest messages stay in view; the rest of the ring
    // (up to 256) folds into a <details> whose open state survives updates.
    if (a.in_flight) msgs.append(row(a.in_flight, true));
    const all = a.messages || [];
    for (const m of all.slice(0, SHOWN_MESSAGES)) msgs.append(row(m, false));
    li.append(msgs);
    if (all.length > SHOWN_MESSAGES) {
      const more = el("details", "more-msgs");
      more.open = openActors.has(a.name);
      more.addEventListener("toggle", () => {
        if (more.open) openActors.add(a.name); else openActors.delete(a.name);
      });
      more.append(el("summary", null, (all.length - SHOWN_MESSAGES) + " older messages"));
      const rest = el("ul", "msgs");
      for (const m of all.slice(SHOWN_MESSAGES)) rest.append(row(m, false));
      more.append(rest);
      li.append(more);
    }
    if (a.children && a.children.length) {
      const ul = el("ul", "tree");
      for (const c of a.children) ul.append(actorNode(c));
      li.append(ul);
    }
    return li;
  }

  function initActors() {
    const root = $("#actors");
    live("/api/v1/debug/actors/stream", (a) => root.replaceChildren(actorNode(a)));
  }

  // ----------------------------------------------------------------- logs
  const MAX_LOG_LINES = 5000;
  function initLogs() {
    const pre = $("#log");
    const notice = $("#log-notice");
    const follow = $("#follow");
    const scroll = () => { if (!follow || follow.checked) window.scrollTo(0, document.body.scrollHeight); };
    scroll();
    if (!pre.dataset.ws) return; // deployex's in-memory log: not followed
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + pre.dataset.ws;
    // The stream reconnects by itself (deployex restarted, network blip):
    // backoff 0.5 s doubling to 10 s; on reconnect the server sends the last
    // lines again, which replace what the page shows (no duplicates).
    let ws = null, attempt = 0, resync = false, leaving = false, reconnecting = false;
    const connect = () => {
      ws = new WebSocket(url);
      ws.onopen = () => {
        attempt = 0;
        if (reconnecting) { notice.hidden = true; reconnecting = false; }
      };
      ws.onmessage = (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch (_) { return; }
        if (m.notice !== undefined) {
          notice.textContent = m.notice;
          notice.hidden = false;
        }
        if (m.lines) {
          if (resync) { pre.replaceChildren(); resync = false; }
          const frag = document.createDocumentFragment();
          for (const l of m.lines) {
            const span = el("span", "line" + (l.level ? " lv-" + l.level : ""));
            for (const s of l.segs) {
              if (s.c) span.append(el("span", s.c, s.t));
              else span.append(document.createTextNode(s.t));
            }
            span.append(document.createTextNode("\n"));
            frag.append(span);
          }
          pre.append(frag);
          while (pre.childElementCount > MAX_LOG_LINES) pre.firstElementChild.remove();
          scroll();
        }
      };
      ws.onclose = () => {
        if (leaving) return;
        attempt += 1;
        const delay = Math.min(10000, 500 * 2 ** Math.min(attempt - 1, 5));
        notice.textContent = "Disconnected from the log stream: reconnecting in " + (delay / 1000) +
          " s (attempt " + attempt + ")" + (attempt > 5 ? "; reload the page if this persists (session expired?)" : "") + "…";
        notice.hidden = false;
        reconnecting = true;
        resync = true;
        setTimeout(connect, delay);
      };
    };
    connect();
    window.addEventListener("pagehide", () => { leaving = true; if (ws) ws.close(); });
  }

  // ------------------------------------------------------------- terminal
  function initTerminal() {
    const box = $("#terminal");
    const status = $("#term-status");
    if (typeof Terminal === "undefined" || typeof FitAddon === "undefined") {
      status.textContent = "terminal assets failed to load";
      return;
    }
    const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + box.dataset.ws;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const enc = new TextEncoder();
    const sendSize = () => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ cols: term.cols, rows: term.rows }));
    };
    ws.onopen = () => { status.textContent = "connected"; sendSize(); term.focus(); };
    ws.onmessage = (e) => {
      if (e.data instanceof ArrayBuffer) { term.write(new Uint8Array(e.data)); return; }
      try {
        const m = JSON.parse(e.data);
        if (m.notice) { status.textContent = m.notice; term.write("\r\n\x1b[33m[" + m.notice + "]\x1b[0m\r\n"); }
      } catch (_) { /* ignore */ }
    };
    ws.onclose = () => { status.textContent = (status.textContent || "") + " (closed)"; };
    term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
    term.onResize(sendSize);
    window.addEventListener("resize", () => fit.fit());
    window.addEventListener("pagehide", () => ws.close());
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "dashboard") initDashboard();
    else if (page === "overview") initOverview();
    else if (page === "actors") initActors();
    else if (page === "logs") initLogs();
    else if (page === "terminal") initTerminal();
    for (const f of $$("form[data-confirm]")) {
      f.addEventListener("submit", (e) => { if (!confirm(f.dataset.confirm)) e.preventDefault(); });
    }
  });
})();
