/* fil-heartbeat status page: one node's page.
 *
 * Draws the state timeline (24 h or 7 days) and the lag over time as SVG from
 * /api/v1/nodes/{peer_id}/history, lists the recent transitions and source errors, and
 * refreshes the node's figures from /api/v1/nodes/{peer_id} every 5 s. Without a history
 * endpoint (404) or before any history it says "no history yet".
 */
(function () {
  "use strict";
  var doc = document;
  doc.documentElement.classList.remove("no-js");
  var body = doc.body;
  if (body.dataset.page !== "node") return;

  var DASH = "\u2014";
  var SVG = "http://www.w3.org/2000/svg";
  var WORDS = {
    in_consensus: "in consensus", lagging: "lagging", forked: "forked", stalled: "stalled",
    syncing: "syncing", source_down: "source down", down: "down"
  };
  var peer = body.dataset.peer;
  var base = "/api/v1/nodes/" + encodeURIComponent(peer);
  var skew = (Number(body.dataset.now) || Date.now() / 1000) - Date.now() / 1000;
  var windowSeconds = 86400;

  function word(s) { return WORDS[s] || String(s || "").replace(/_/g, " "); }
  function secs(v) {
    if (v === null || v === undefined) return DASH;
    if (v < 10) return v.toFixed(1) + " s";
    if (v < 120) return Math.round(v) + " s";
    if (v < 7200) return Math.round(v / 60) + " min";
    if (v < 172800) return Math.round(v / 3600) + " h";
    return Math.round(v / 86400) + " d";
  }
  function frac(v) {
    if (v === null || v === undefined) return DASH;
    return v >= 1 ? "100 %" : (Math.floor(v * 1000) / 10).toFixed(1) + " %";
  }
  function stamp(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"; }
  function el(name, attrs, parent, text) {
    var e = name.indexOf("svg:") === 0 ? doc.createElementNS(SVG, name.slice(4)) : doc.createElement(name);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    if (parent) parent.append(e);
    return e;
  }
  function quiet(parent, text) {
    parent.textContent = "";
    el("p", { class: "quiet" }, parent, text);
  }
  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 404) return null;
        if (!r.ok) throw new Error(url + ": " + r.status);
        return r.json();
      });
  }

  var timeline = doc.getElementById("timeline");
  var lag = doc.getElementById("lag");
  var transitions = doc.getElementById("transitions");
  var errors = doc.getElementById("errors");
  var W = 800, L = 44, R = 8;

  function timeAxis(svg, since, until, y, H) {
    var span = until - since;
    var steps = [60, 300, 900, 3600, 3 * 3600, 86400];
    var step = steps.filter(function (x) { return span / x <= 12; })[0] || 86400;
    var x = function (t) { return L + (W - L - R) * (t - since) / span; };
    for (var t = Math.ceil(since / step) * step; t <= until; t += step) {
      el("svg:line", { x1: x(t), x2: x(t), y1: 0, y2: y, class: "grid" }, svg);
      var d = new Date(t * 1000);
      var label = step >= 86400 ? d.toISOString().slice(5, 10) : d.toISOString().slice(11, 16);
      el("svg:text", { x: x(t), y: H - 4, class: "axis", "text-anchor": "middle" }, svg, label);
    }
    return x;
  }

  function drawTimeline(h, since, until) {
    timeline.textContent = "";
    var H = 56, barY = 6, barH = 26;
    var svg = el("svg:svg", { viewBox: "0 0 " + W + " " + H, class: "chart-svg", role: "img",
      "aria-label": "State from " + stamp(since) + " to " + stamp(until) }, timeline);
    var x = timeAxis(svg, since, until, barY + barH, H);
    el("svg:rect", { x: L, y: barY, width: W - L - R, height: barH, class: "unknown" }, svg)
      .append(el("svg:title", {}, null, "no data"));
    var tr = (h.transitions || []).slice().sort(function (a, b) { return a.at - b.at; });
    for (var i = 0; i < tr.length; i++) {
      var from = Math.max(since, tr[i].at);
      var to = i + 1 < tr.length ? tr[i + 1].at : until;
      if (to <= since || from >= until) continue;
      var r = el("svg:rect", { x: x(from), y: barY, width: Math.max(0.5, x(Math.min(to, until)) - x(from)),
        height: barH, class: "seg s-" + tr[i].state }, svg);
      el("svg:title", {}, r, word(tr[i].state) + " from " + stamp(tr[i].at) +
        (tr[i].error ? ": " + tr[i].error : ""));
    }
    (h.gaps || []).forEach(function (g) {
      var from = Math.max(since, g.from), to = Math.min(until, g.to);
      if (to <= from) return;
      var r = el("svg:rect", { x: x(from), y: barY, width: Math.max(0.5, x(to) - x(from)), height: barH,
        class: "gap" }, svg);
      el("svg:title", {}, r, "aggregator down " + stamp(g.from) + " to " + stamp(g.to) +
        " (not counted in uptime)");
    });
    var legend = el("p", { class: "legend" }, timeline);
    Object.keys(WORDS).forEach(function (s) {
      el("span", { class: "state s-" + s }, legend, word(s));
      legend.append(" ");
    });
    el("span", { class: "gap-key" }, legend, "aggregator down");
  }

  function drawLag(h, since, until) {
    lag.textContent = "";
    var pts = (h.heights || []).filter(function (p) { return p.lag !== null && p.lag !== undefined; })
      .sort(function (a, b) { return a.at - b.at; });
    if (!pts.length) { quiet(lag, "No lag recorded in this window."); return; }
    var H = 160, T = 8, B = 22;
    var max = Math.max(5, Math.max.apply(null, pts.map(function (p) { return p.lag; })));
    var svg = el("svg:svg", { viewBox: "0 0 " + W + " " + H, class: "chart-svg", role: "img",
      "aria-label": "Lag in epochs, at most " + max }, lag);
    var x = timeAxis(svg, since, until, H - B, H);
    var y = function (v) { return T + (H - T - B) * (1 - v / max); };
    [0, Math.round(max / 2), max].forEach(function (v) {
      el("svg:line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
      el("svg:text", { x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, svg, String(v));
    });
    var d = pts.map(function (p, i) { return (i ? "L" : "M") + x(Math.max(since, p.at)).toFixed(1) + "," + y(p.lag).toFixed(1); });
    el("svg:path", { d: d.join(" "), class: "line" }, svg);
  }

  function listTransitions(h) {
    var tr = (h.transitions || []).slice().sort(function (a, b) { return b.at - a.at; }).slice(0, 50);
    if (!tr.length) { quiet(transitions, "No transitions in this window."); return; }
    transitions.textContent = "";
    var t = el("table", { class: "transitions" }, transitions);
    var head = el("tr", {}, el("thead", {}, t));
    ["When", "State", "Source error"].forEach(function (c) { el("th", { scope: "col" }, head, c); });
    var tb = el("tbody", {}, t);
    tr.forEach(function (x) {
      var row = el("tr", {}, tb);
      el("td", {}, row, stamp(x.at));
      el("span", { class: "state s-" + x.state }, el("td", {}, row), word(x.state));
      el("td", { class: "err" }, row, x.error || DASH);
    });
  }

  function listErrors(h) {
    var seen = new Map();
    (h.transitions || []).forEach(function (x) {
      if (x.error) seen.set(x.error, Math.max(seen.get(x.error) || 0, x.at));
    });
    var now = errors.querySelector("p");
    errors.textContent = "";
    if (now) errors.append(now);
    if (!seen.size) return;
    var ul = el("ul", { class: "errors" }, errors);
    Array.from(seen.entries()).sort(function (a, b) { return b[1] - a[1]; }).slice(0, 20)
      .forEach(function (e) {
        var li = el("li", {}, ul);
        el("span", { class: "err" }, li, e[0]);
        li.append(" (last " + stamp(e[1]) + ")");
      });
  }

  function loadHistory() {
    var until = Math.floor(Date.now() / 1000 + skew), since = until - windowSeconds;
    getJSON(base + "/history?since=" + since + "&until=" + until).then(function (h) {
      if (!h || (!(h.transitions || []).length && !(h.heights || []).length)) {
        quiet(timeline, "No history yet.");
        quiet(lag, "No history yet.");
        quiet(transitions, "No history yet.");
        body.dataset.history = "none";
        return;
      }
      body.dataset.history = "yes";
      // A node known for less than the window: the charts start shortly before its data.
      var first = until;
      (h.transitions || []).concat(h.heights || []).forEach(function (x) { first = Math.min(first, x.at); });
      if (h.state_at_since) first = since;
      var from = Math.max(since, first - Math.max(10, (until - first) * 0.05));
      drawTimeline(h, from, until);
      drawLag(h, from, until);
      listTransitions(h);
      listErrors(h);
      if (h.uptime) {
        var key = windowSeconds === 86400 ? "24h" : "7d";
        var row = doc.querySelector('#uptime tr[data-window="' + key + '"]');
        if (row) {
          row.cells[1].textContent = frac(h.uptime.available);
          row.cells[2].textContent = frac(h.uptime.healthy);
        }
      }
    }, function () {
      quiet(timeline, "No history yet (the history could not be read).");
      body.dataset.history = "error";
    });
  }

  function refreshNode() {
    getJSON(base).then(function (n) {
      if (!n) return;
      var st = doc.getElementById("node-state");
      st.className = "state s-" + n.state;
      st.textContent = word(n.state);
      body.dataset.state = n.state;
      var set = function (f, text) {
        var dd = doc.querySelector('#details [data-f="' + f + '"]');
        if (dd && dd.textContent !== text) dd.textContent = text;
      };
      set("height", n.height ? String(n.height) : DASH);
      set("lag", n.lag_epochs === null || n.lag_epochs === undefined ? DASH : String(n.lag_epochs));
      set("version", n.version || DASH);
      set("source_state", n.source_state || DASH);
      set("delay", secs(n.head_delay_p50) + " / " + secs(n.head_delay_p90));
      set("head_age", n.head_timestamp ? secs(Math.max(0, Date.now() / 1000 + skew - n.head_timestamp)) : DASH);
    }, function () { /* kept */ });
  }

  doc.querySelectorAll(".tabs button").forEach(function (b) {
    b.addEventListener("click", function () {
      windowSeconds = Number(b.dataset.window);
      doc.querySelectorAll(".tabs button").forEach(function (o) {
        o.setAttribute("aria-pressed", o === b ? "true" : "false");
      });
      loadHistory();
    });
  });
  loadHistory();
  setInterval(loadHistory, 60000);
  setInterval(refreshNode, 5000);
})();
