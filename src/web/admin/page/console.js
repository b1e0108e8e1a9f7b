// syncstore console: signs in with the admin token, then draws /admin/api/overview every
// few seconds and sends the controls (each confirmed first) with the session's CSRF
// token. Everything from the server is put in the page as text (never as HTML).
"use strict";

(function () {
  const REFRESH_MS = 4000;
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let timer = null;
  let last = null; // the last overview
  const cards = new Map(); // node URL -> its card's parts

  // ---- small helpers -----------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function pad(n) { return String(n).padStart(2, "0"); }
  function when(ms) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }
  function num(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    return Number(n).toLocaleString("en-US");
  }
  function pct(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return `${(x * 100).toFixed(digits === undefined ? 1 : digits)}%`;
  }
  function ms(x) {
    if (x === null || x === undefined) return "–";
    return `${num(Math.round(x))} ms`;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
  }

  // A message from an action stays a while before "updated …" replaces it.
  let statusUntil = 0;
  function status(text, bad, keepMs) {
    statusUntil = Date.now() + (keepMs === undefined ? 8000 : keepMs);
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }

  // A table row whose cells carry their column's name (shown on a phone).
  function row(labels, cells) {
    return el("tr", {}, ...cells.map((c, i) => {
      const td = c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c);
      if (labels[i]) td.dataset.label = labels[i];
      return td;
    }));
  }

  // ---- the API -------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && csrf) headers["X-Csrf-Token"] = csrf;
    const r = await fetch(`/admin/api/${path}`, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, data, retryAfter: r.headers.get("Retry-After") };
  }

  // ---- confirmation --------------------------------------------------------------------

  function confirmAction(title, text, yes) {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = yes || "Confirm";
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-yes").removeEventListener("click", onYes);
        $("confirm-no").removeEventListener("click", onNo);
        d.removeEventListener("cancel", onNo);
        if (d.open) d.close();
        resolve(answer);
      };
      const onYes = () => done(true);
      const onNo = () => done(false);
      $("confirm-yes").addEventListener("click", onYes);
      $("confirm-no").addEventListener("click", onNo);
      d.addEventListener("cancel", onNo);
      d.showModal();
    });
  }

  // Confirms, sends, reports, refreshes.
  async function act(title, text, path, body, yes) {
    if (!(await confirmAction(title, text, yes))) {
      status("cancelled");
      return null;
    }
    const r = await api("POST", path, body);
    if (r.status === 401) { showLogin("Your session ended: sign in again."); return null; }
    if (r.status >= 400) {
      const msg = (r.data && r.data.error) || `HTTP ${r.status}`;
      status(`refused: ${msg}`, true);
      return null;
    }
    status((r.data && r.data.message) || "done");
    refresh();
    return r.data;
  }

  // ---- sign-in -------------------------------------------------------------------------

  function showLogin(message) {
    csrf = null;
    if (timer) { clearInterval(timer); timer = null; }
    $("console").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    status("");
    $("token").focus();
  }

  function showConsole(session) {
    csrf = session.csrf;
    $("login").hidden = true;
    $("console").hidden = false;
    $("logout").hidden = false;
    $("login-error").textContent = "";
    refresh();
    if (!timer) timer = setInterval(refresh, REFRESH_MS);
  }

  async function login(ev) {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    $("login-button").disabled = true;
    try {
      const r = await api("POST", "login", { token });
      if (r.status === 200) {
        $("token").value = "";
        showConsole(r.data);
      } else if (r.status === 429) {
        $("login-error").textContent =
          `Too many attempts: try again in ${r.retryAfter || "a few"} seconds.`;
      } else if (r.status === 403 && r.data && r.data.error === "wrong admin token") {
        $("login-error").textContent = "Wrong admin token: refused.";
      } else {
        $("login-error").textContent = (r.data && r.data.error) || `HTTP ${r.status}`;
      }
    } catch (e) {
      $("login-error").textContent = `The server cannot be reached (${e.message}).`;
    } finally {
      $("login-button").disabled = false;
    }
  }

  async function logout() {
    await api("POST", "logout", {});
    showLogin("Signed out.");
  }

  // ---- nodes ---------------------------------------------------------------------------

  // A node's state: the server's (down, draining, paused, rollout, serving), or stale
  // when a node that should be serving stopped reporting.
  const STATE_LABELS = {
    down: "down", draining: "draining", paused: "paused by the guard",
    rollout: "in rollout", serving: "serving", stale: "stale",
  };
  function nodeState(n, ov) {
    let s = n.state || "serving";
    const live = ov && ov.drains.some((d) => d.node === n.node && d.status === "running");
    if (live && s !== "down") return ["draining", "draining live"];
    if (n.stale && (s === "serving" || s === "rollout")) s = "stale";
    return [s, STATE_LABELS[s] || s];
  }

  function makeCard(url) {
    const parts = {};
    parts.badge = el("span", { class: "badge" });
    parts.reason = el("p", { class: "reason" });
    parts.figures = el("dl", { class: "figures" });
    parts.chart = svg("svg", {
      class: "chart", viewBox: "0 0 600 84", preserveAspectRatio: "none",
      role: "img", "aria-label": `requests and p99 of ${url} over the last hour`,
    });
    parts.legend = el("div", { class: "legend" });
    parts.percent = el("input", {
      class: "share",
      type: "number", min: "0", max: "100", step: "0.01", inputmode: "decimal",
      "aria-label": `share of new users for ${url}, percent`,
    });
    parts.setShare = el("button", { type: "button", class: "small set-share", text: "Set share" });
    parts.resume = el("button", { type: "button", class: "small resume", text: "Resume" });
    parts.down = el("button", { type: "button", class: "small quiet down" });
    parts.drainFlag = el("button", { type: "button", class: "small quiet drain-flag" });
    parts.drainLive = el("button", { type: "button", class: "small quiet drain-live", text: "Drain live" });
    parts.root = el("article", { class: "card node", "data-node": url },
      el("div", { class: "node-head" }, el("span", { class: "node-url", text: url }), parts.badge),
      parts.reason, parts.figures, parts.chart, parts.legend,
      el("div", { class: "actions" },
        el("label", {}, "Share", parts.percent, "%"), parts.setShare, parts.resume,
        parts.down, parts.drainFlag, parts.drainLive));

    parts.setShare.addEventListener("click", () => {
      const n = cards.get(url).node;
      const want = parts.percent.value.trim();
      if (want === "") { status("type a share of new users, 0 to 100", true); return; }
      act("Change the rollout",
        `Send ${want}% of new users to ${url} (now ${(n.percent_bp / 100).toFixed(2)}%)? ` +
        "Users already assigned stay where they are.",
        "rollout", { node: url, percent: want }, "Set share")
        .then((ok) => { if (ok) parts.percent.value = ""; });
    });
    parts.resume.addEventListener("click", () => {
      const n = cards.get(url).node;
      const why = n.pause_reason ? ` It was paused because: ${n.pause_reason}.` : "";
      act("Resume the rollout", `Let ${url} take new users again?${why}`,
        "resume", { node: url }, "Resume");
    });
    parts.down.addEventListener("click", () => {
      const n = cards.get(url).node;
      if (n.downed) {
        act("Mark the node up", `Mark ${url} up: it serves its users again and may take new ones.`,
          "node", { node: url, action: "up" }, "Mark up");
      } else {
        act("Mark the node down",
          `Mark ${url} down: its users get another node (and a new uid: Firefox uploads ` +
          "its data again) at their next sign-in, and it takes no new users.",
          "node", { node: url, action: "down" }, "Mark down");
      }
    });
    parts.drainFlag.addEventListener("click", () => {
      const n = cards.get(url).node;
      if (n.draining) {
        act("Stop draining", `Stop draining ${url}: it keeps the users it still has.`,
          "node", { node: url, action: "undrain" }, "Stop draining");
      } else {
        act("Drain the node",
          `Drain ${url}: it takes no new users, and its users get another node (and a new ` +
          "uid: Firefox uploads its data again) at their next sign-in.",
          "node", { node: url, action: "drain" }, "Drain");
      }
    });
    parts.drainLive.addEventListener("click", () => {
      const n = cards.get(url).node;
      act("Drain the node live",
        `Move all ${num(n.users)} users of ${url}, with their data, to the other serving ` +
        "nodes now (each user's writes pause for a moment)? It takes no new users from now on; " +
        "the progress shows under Moves and drains.",
        "drain", { node: url }, "Drain live");
    });
    return parts;
  }

  function figure(label, value) {
    return el("div", {}, el("dt", { text: label }), el("dd", { text: value }));
  }

  function drawChart(parts, minutes, now) {
    const c = parts.chart;
    while (c.firstChild) c.removeChild(c.firstChild);
    const W = 600, H = 84, SLOTS = 60;
    const end = Math.floor(now / 60000);
    const slot = new Array(SLOTS).fill(null);
    for (const m of minutes || []) {
      const i = SLOTS - 1 - (end - Math.floor(m.minute / 60000));
      if (i >= 0 && i < SLOTS) slot[i] = m;
    }
    const maxReq = Math.max(1, ...slot.map((m) => (m ? m.requests : 0)));
    const p99 = (m) => (m && m.p99_us !== null && m.p99_us !== undefined ? m.p99_us / 1000 : null);
    const maxP99 = Math.max(1, ...slot.map((m) => p99(m) || 0));
    const bw = W / SLOTS;
    const title = svg("title", {});
    title.textContent = `last hour: up to ${maxReq} requests a minute, p99 up to ${Math.round(maxP99)} ms`;
    c.append(title);
    let line = "";
    slot.forEach((m, i) => {
      if (!m) return;
      const h = (m.requests / maxReq) * (H - 4);
      c.append(svg("rect", { class: "req", x: (i * bw + 1).toFixed(1), y: (H - h).toFixed(1),
        width: (bw - 2).toFixed(1), height: h.toFixed(1) }));
      if (m.errors > 0) {
        const e = Math.max(2, (m.errors / maxReq) * (H - 4));
        c.append(svg("rect", { class: "err", x: (i * bw + 1).toFixed(1), y: (H - e).toFixed(1),
          width: (bw - 2).toFixed(1), height: e.toFixed(1) }));
      }
      if (p99(m) !== null) {
        // A step across the minute's slot, so that one minute alone shows too.
        const y = (H - 2 - (p99(m) / maxP99) * (H - 8)).toFixed(1);
        line += `${line ? "L" : "M"}${(i * bw).toFixed(1)} ${y} L${((i + 1) * bw).toFixed(1)} ${y} `;
      }
    });
    if (line) c.append(svg("path", { class: "p99", d: line }));
    parts.legend.replaceChildren(
      el("span", {}, el("span", { class: "k req" }), `requests/min (max ${num(maxReq)})`),
      el("span", {}, el("span", { class: "k p99" }), `p99 (max ${num(Math.round(maxP99))} ms)`),
      el("span", {}, el("span", { class: "k err" }), "5xx"),
      el("span", { text: "last 60 min" }));
  }

  function renderNodes(ov) {
    const holder = $("nodes");
    const seen = new Set();
    for (const n of ov.nodes) {
      seen.add(n.node);
      let parts = cards.get(n.node);
      if (!parts) {
        parts = makeCard(n.node);
        cards.set(n.node, parts);
        holder.append(parts.root);
      }
      parts.node = n;
      const [cls, label] = nodeState(n, ov);
      parts.badge.className = `badge ${cls}`;
      parts.badge.textContent = label;
      parts.root.dataset.state = cls;
      let reason = "";
      if (n.paused_at) reason = `Paused by the canary guard ${ago(n.paused_at, ov.now_ms)}: ${n.pause_reason || "?"}`;
      else if (n.suspect_since) reason = `Suspect since ${ago(n.suspect_since, ov.now_ms)}: ${n.suspect_reason || ""}`;
      else if (n.stale) reason = n.health ? `No health report since ${ago(n.health.reported_at, ov.now_ms)}.` : "It never reported its health.";
      parts.reason.textContent = reason;
      parts.reason.hidden = !reason;
      parts.reason.classList.toggle("paused", !!n.paused_at);
      const h = n.health;
      const rate = h ? h.requests : null;
      parts.figures.replaceChildren(
        figure("users / capacity", `${num(n.users)} / ${num(n.capacity)}`),
        figure("share of new users", pct(n.share, 1)),
        figure("rollout", `${(n.percent_bp / 100).toFixed(2)}%`),
        figure("requests/min", h ? num(rate) : "–"),
        figure("p99", h && rate ? ms(h.p99_us / 1000) : "–"),
        figure("5xx rate", h && rate ? pct(h.errors / rate, 2) : "–"),
        figure("open files", h ? num(h.open_users) : "–"),
        figure("disk free", h ? bytes(h.disk_free) : "–"),
        figure("reported", h ? ago(h.reported_at, ov.now_ms) : "never"));
      drawChart(parts, n.minutes, ov.now_ms || Date.now());
      parts.resume.hidden = !(n.paused_at || n.suspect_since);
      parts.down.textContent = n.downed ? "Mark up" : "Mark down";
      parts.drainFlag.textContent = n.draining ? "Stop draining" : "Drain";
      parts.drainLive.disabled = ov.drains.some((d) => d.node === n.node && d.status === "running");
    }
    for (const [url, parts] of cards) {
      if (!seen.has(url)) { parts.root.remove(); cards.delete(url); }
    }
    const counts = {};
    for (const n of ov.nodes) { const s = nodeState(n, ov)[1]; counts[s] = (counts[s] || 0) + 1; }
    let summary = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ");
    if (ov.guard) {
      summary += ` · canary guard: pauses a node in rollout after ${ov.guard.window_secs} s of ` +
        `5xx > ${pct(ov.guard.error_rate, 1)} and ${ov.guard.error_factor}× the others', or p99 > ` +
        `${ov.guard.p99_factor}× (and > ${ov.guard.p99_floor_ms} ms); last ran ${ago(ov.guard.at, ov.now_ms)}`;
    } else {
      summary += " · canary guard: has not run";
    }
    $("nodes-summary").textContent = summary;
  }

  // ---- moves and drains ----------------------------------------------------------------

  function bar(done, total, cls) {
    const share = total > 0 ? Math.min(1, done / total) : 1;
    const b = el("div", {
      class: `bar ${cls || ""}`, role: "progressbar", "aria-valuemin": "0",
      "aria-valuemax": String(total), "aria-valuenow": String(done),
    });
    const fill = el("span", {});
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    b.append(fill);
    return b;
  }

  function renderWork(ov) {
    const w = $("work");
    const items = [];
    // Every drain not done, and the done ones of the last day (at most 5).
    let doneShown = 0;
    const drains = ov.drains.filter((d) => d.status !== "done" ||
      (ov.now_ms - (d.finished_at || 0) < 86400000 && doneShown++ < 5));
    for (const d of drains) {
      const cls = { done: "done", stalled: "stalled", failed: "stalled" }[d.status] || "";
      const state = {
        running: "running",
        done: `finished ${ago(d.finished_at, ov.now_ms)}`,
        failed: `ended with ${num(d.failed)} failed${d.last_error ? ` (${d.last_error})` : ""}: run it again`,
        stalled: `stalled: no progress since ${ago(d.updated_at, ov.now_ms)}; run it again to resume`,
      }[d.status] || d.status;
      items.push(el("div", { class: "work-item drain", "data-node": d.node, "data-status": d.status },
        el("div", { class: "row" },
          el("span", { class: "what" }, el("strong", { text: "Live drain " }), d.node,
            ` (via ${d.via} ${d.who}, started ${ago(d.started_at, ov.now_ms)})`),
          el("span", { class: "muted", text: `${num(d.moved)} of ${num(d.total)} users moved` +
            (d.failed ? `, ${num(d.failed)} failed` : "") + ` · ${state}` })),
        bar(d.moved, d.total, cls)));
    }
    for (const m of ov.moves) {
      // pending_moves.started_at is written in seconds by the moving node (cluster.rs).
      const since = m.started_at < 1e11 ? m.started_at * 1000 : m.started_at;
      items.push(el("div", { class: "work-item move" },
        el("div", { class: "row" },
          el("span", { class: "what", text: `Moving user ${m.uid} from ${m.from || "?"} to ${m.to || "?"}` }),
          el("span", { class: "muted", text: `since ${ago(since, ov.now_ms)}` }))));
    }
    if (!items.length) items.push(el("p", { class: "empty", text: "No moves or drains in progress." }));
    w.replaceChildren(...items);
  }

  // ---- rollout rules -------------------------------------------------------------------

  function renderRules(ov) {
    const open = ov.signups !== "closed";
    $("signups-state").textContent = open ? "open" : "closed";
    $("signups-toggle").textContent = open ? "Close sign-ups" : "Open sign-ups";
    $("signups-toggle").dataset.open = open ? "1" : "0";
    const body = $("lists").tBodies[0];
    const rows = ov.lists.map((l) => {
      const unlist = el("button", { type: "button", class: "small quiet", text: "Unlist" });
      unlist.addEventListener("click", () => act("Take off the list",
        `Take ${l.who} off the ${l.kind}-list of ${l.node}?`, "list",
        { node: l.node, list: "unlist", who: [l.who] }, "Unlist"));
      return row(["Node", "List", "User", ""], [l.node, l.kind, l.who, unlist]);
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "4", text: "No lists." })));
    body.replaceChildren(...rows);
    const sel = $("list-node");
    const names = ov.nodes.map((n) => n.node);
    const have = Array.from(sel.options).map((o) => o.value);
    if (names.join("\n") !== have.join("\n")) {
      const keep = sel.value;
      sel.replaceChildren(...names.map((u) => el("option", { value: u, text: u })));
      if (names.includes(keep)) sel.value = keep;
    }
  }

  function toggleSignups() {
    const open = $("signups-toggle").dataset.open === "1";
    if (open) {
      act("Close sign-ups", "Refuse every new user at the tokenserver (existing users keep syncing)?",
        "signups", { open: false }, "Close sign-ups");
    } else {
      act("Open sign-ups", "Let the tokenserver assign new users to nodes again?",
        "signups", { open: true }, "Open sign-ups");
    }
  }

  function addToList(ev) {
    ev.preventDefault();
    const node = $("list-node").value;
    const kind = $("list-kind").value;
    const who = $("list-who").value.split(/[\s,]+/).filter((w) => w);
    if (!node || !who.length) return;
    act(`Add to the ${kind}-list`,
      `${kind === "allow" ? "Always send" : "Never send"} ${who.join(", ")} to ${node}` +
      `${kind === "allow" ? " (when they are new users)" : ""}?`,
      "list", { node, list: kind, who }, "Add")
      .then((ok) => { if (ok) $("list-who").value = ""; });
  }

  // ---- accounts ------------------------------------------------------------------------

  function renderAccounts(ov) {
    const a = ov.accounts;
    $("accounts-section").hidden = !a;
    if (!a) return;
    $("accounts-count").textContent = num(a.count);
    $("accounts-signups").textContent = a.signups;
    const rows = (a.invites || []).map((i) => row(["Created", "Expires", "Used", "By"], [
      el("td", { class: "nowrap", text: when(i.created_at) }),
      el("td", { class: "nowrap", text: when(i.expires_at) }),
      el("td", { class: "nowrap", text: i.used_at ? when(i.used_at) :
        (i.expires_at <= (ov.now_ms || Date.now()) ? "expired" : "unused") }),
      i.used_by || "–"]));
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "4", text: "No invites." })));
    $("invites").tBodies[0].replaceChildren(...rows);
  }

  async function createInvite(ev) {
    ev.preventDefault();
    const valid = $("invite-valid").value;
    const data = await act("Create an invite",
      `Create a single-use invite code, valid for ${$("invite-valid").selectedOptions[0].text}? ` +
      "It is shown once.", "invite", { valid_for: valid }, "Create");
    if (data && data.code) {
      $("invite-code").textContent = data.code;
      $("invite-result").hidden = false;
    }
  }

  // ---- audit log -----------------------------------------------------------------------

  function renderAudit(ov) {
    const rows = ov.audit.map((r) => row(["When", "Via", "Who", "Action", "Target", "Detail"], [
      el("td", { class: "nowrap", text: when(r.at) }), el("td", { class: "nowrap", text: r.via }),
      el("td", { class: "nowrap", text: r.who }), el("td", { class: "nowrap", text: r.action }),
      el("td", { class: "nowrap", text: r.target || "" }), r.detail || ""]));
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "6", text: "Nothing yet." })));
    $("audit").tBodies[0].replaceChildren(...rows);
  }

  // ---- the overview --------------------------------------------------------------------

  // The overview as the renderers read it.
  function normalize(ov) {
    return {
      now_ms: ov.now || Date.now(),
      guard: ov.guard || null,
      nodes: ov.nodes || [],
      lists: ov.lists || [],
      signups: ov.signups || "open",
      drains: ov.drains || [],
      moves: ov.moves || [],
      audit: ov.audit || [],
      accounts: ov.accounts || null,
    };
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing || !csrf) return;
    refreshing = true;
    try {
      const r = await api("GET", "overview");
      if (r.status === 401) { showLogin("Your session ended: sign in again."); return; }
      if (r.status !== 200) { status(`overview: ${(r.data && r.data.error) || r.status}`, true); return; }
      last = normalize(r.data);
      renderNodes(last);
      renderWork(last);
      renderRules(last);
      renderAccounts(last);
      renderAudit(last);
      if (Date.now() > statusUntil) status(`updated ${when(Date.now()).slice(11)} UTC`, false, 0);
    } catch (e) {
      status(`the server cannot be reached (${e.message})`, true);
    } finally {
      refreshing = false;
    }
  }

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("signups-toggle").addEventListener("click", toggleSignups);
    $("list-form").addEventListener("submit", addToList);
    $("invite-form").addEventListener("submit", createInvite);
    try {
      const r = await api("GET", "session");
      if (r.status === 200) showConsole(r.data);
      else showLogin("");
    } catch (e) {
      showLogin(`The server cannot be reached (${e.message}).`);
    }
  });
})();
