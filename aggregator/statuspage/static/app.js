/* fil-heartbeat status page: the fleet page, kept live.
 *
 * The server renders the whole table (it shows the fleet with JavaScript off); this script
 * sorts, filters and pins rows, and applies the summarised feed (/api/v1/feed?mode=nodes:
 * one message a second with the nodes that changed). Changes are coalesced and applied at
 * most every 500 ms in one animation frame, touching only the cells whose text changed; ages
 * tick once a second for the rows on screen only. Without a WebSocket it polls
 * /api/v1/nodes; after an aggregator restart it reconnects with a backoff (1 s doubling to
 * 30 s, with jitter). Hand-written, no build step; common.js-free on purpose: one file.
 */
(function () {
  "use strict";
  var doc = document;
  doc.documentElement.classList.remove("no-js");
  var body = doc.body;
  if (body.dataset.page !== "fleet") return;

  var DASH = "\u2014";
  var STATE_WORDS = {
    in_consensus: "in consensus", lagging: "lagging", forked: "forked", stalled: "stalled",
    syncing: "syncing", source_down: "source down", down: "down"
  };
  var STATE_ORDER = ["down", "source_down", "forked", "stalled", "lagging", "syncing",
    "in_consensus"];
  var APPLY_EVERY = 500; // ms between two DOM updates at most
  var PIN_KEY = "fil-heartbeat.pinned";

  // -- formatting (as aggregator/statuspage/format.py) -------------------------------------
  function word(s) { return STATE_WORDS[s] || String(s || "").replace(/_/g, " "); }
  function rank(s) { var i = STATE_ORDER.indexOf(s); return i < 0 ? STATE_ORDER.length : i; }
  function secs(v, whole) {
    if (v === null || v === undefined) return DASH;
    if (v < 10 && !whole) return v.toFixed(1) + " s";
    if (v < 120) return Math.round(v) + " s";
    if (v < 7200) return Math.round(v / 60) + " min";
    if (v < 172800) return Math.round(v / 3600) + " h";
    return Math.round(v / 86400) + " d";
  }
  function age(at, now) {
    return at === null || at === undefined ? DASH : secs(Math.max(0, now - at), true);
  }
  function frac(v) {
    if (v === null || v === undefined) return DASH;
    if (v >= 1) return "100 %";
    return (Math.floor(v * 1000) / 10).toFixed(1) + " %";
  }
  function shortId(p) { p = String(p || ""); return p.length <= 12 ? p : "\u2026" + p.slice(-8); }
  function uptime(n, w) {
    var u = n.uptime && n.uptime[w];
    return u && typeof u.available === "number" ? u.available : null;
  }
  function sourceText(n) {
    if (n.source_error) return String(n.source_error);
    if (n.source_state && n.source_state !== "ok") return String(n.source_state);
    return "";
  }
  function num(v) { return v === null || v === undefined || v === "" ? null : Number(v); }

  // The server's clock: ages are computed against it, whatever the browser's says.
  var skew = (num(body.dataset.now) || Date.now() / 1000) - Date.now() / 1000;
  function serverNow() { return Date.now() / 1000 + skew; }

  // -- the table ----------------------------------------------------------------------------
  var table = doc.getElementById("nodes");
  var tbody = doc.getElementById("rows");
  var pinnedBody = doc.getElementById("pinned");
  var shown = doc.getElementById("shown");
  var liveEl = doc.getElementById("live");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var COLS = heads.map(function (th) { return th.dataset.col; });
  var TYPES = {};
  heads.forEach(function (th) { TYPES[th.dataset.col] = th.dataset.type || ""; });
  var IDX = {};
  COLS.forEach(function (c, i) { IDX[c] = i; });
  // Which columns a node field shows in.
  var FIELD_COLS = {
    nickname: ["nickname"], probation: ["nickname"], miner_address: ["miner"],
    network: ["network"], state: ["state"], height: ["height"], lag_epochs: ["lag"],
    head_timestamp: ["head_age"], last_beat: ["last_beat"], head_delay_p50: ["delay"],
    uptime: ["up24", "up7d"], version: ["version"], source_error: ["error"],
    source_state: ["error"]
  };

  var rows = new Map(); // peer id -> row record {tr, peer, node, text}
  var order = []; // the records not pinned, in the table's order
  var pinned = []; // the pinned records, in the table's order
  var view = []; // `order` as filtered: what the window shows a slice of
  function record(tr) {
    // shown: in the document; stale: its cells lag behind `node` (it was off screen).
    var r = {
      tr: tr, peer: tr.dataset.peer, node: null, text: {}, shown: false, stale: false,
      decorated: false
    };
    rows.set(r.peer, r);
    return r;
  }
  Array.prototype.forEach.call(tbody.rows, function (tr) { order.push(record(tr)); });

  // A sort value from the node when the feed gave it, else from the server's cell.
  function value(r, col) {
    var n = r.node;
    if (!n) {
      if (col === "peer") return r.peer.toLowerCase();
      var cell = r.tr.cells[IDX[col]];
      var raw = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent;
      if (TYPES[col] === "text") return raw === DASH ? "" : raw.toLowerCase();
      return raw === "" ? null : Number(raw);
    }
    switch (col) {
      case "nickname": return String(n.nickname || "").toLowerCase();
      case "miner": return String(n.miner_address || "").toLowerCase();
      case "peer": return String(n.peer_id || "").toLowerCase();
      case "network": return String(n.network || "").toLowerCase();
      case "state": return rank(n.state);
      case "height": return n.height ? n.height : null;
      case "lag": return num(n.lag_epochs);
      case "head_age": return num(n.head_timestamp);
      case "last_beat": return num(n.last_beat);
      case "delay": return num(n.head_delay_p50);
      case "up24": return uptime(n, "24h");
      case "up7d": return uptime(n, "7d");
      case "version": return String(n.version || "").toLowerCase();
      case "error": return sourceText(n).toLowerCase();
    }
    return null;
  }

  function cellText(col, n, now) {
    switch (col) {
      case "nickname": return n.nickname || shortId(n.peer_id);
      case "miner": return n.miner_address || DASH;
      case "network": return n.network || DASH;
      case "state": return word(n.state);
      case "height": return n.height ? String(n.height) : DASH;
      case "lag": return n.lag_epochs === null || n.lag_epochs === undefined ? DASH
        : String(n.lag_epochs);
      case "head_age": return age(n.head_timestamp, now);
      case "last_beat": return age(n.last_beat, now);
      case "delay": return secs(n.head_delay_p50);
      case "up24": return frac(uptime(n, "24h"));
      case "up7d": return frac(uptime(n, "7d"));
      case "version": return n.version || DASH;
      case "error": return sourceText(n) || DASH;
    }
    return null;
  }

  // Offscreen rows are detached: writing to them costs no style or layout.
  function setCell(r, col, now) {
    var text = cellText(col, r.node, now);
    if (text === null || r.text[col] === text) return;
    r.text[col] = text;
    var cell = r.tr.cells[IDX[col]];
    if (!cell) return;
    if (col === "nickname") {
      cell.firstChild.textContent = text;
      var badge = cell.querySelector(".badge");
      if (r.node.probation && !badge) {
        badge = doc.createElement("span");
        badge.className = "badge";
        badge.textContent = "probation";
        cell.append(" ", badge);
      } else if (!r.node.probation && badge) {
        badge.remove();
      }
    } else if (col === "state") {
      var span = cell.firstChild;
      span.className = "state s-" + r.node.state;
      span.textContent = text;
      r.tr.dataset.state = r.node.state;
    } else {
      cell.textContent = text;
    }
  }

  function newRow(n) {
    var tr = doc.createElement("tr");
    tr.dataset.peer = n.peer_id;
    COLS.forEach(function (col) {
      var td = doc.createElement("td");
      if (col === "nickname") {
        var a = doc.createElement("a");
        a.href = "/nodes/" + encodeURIComponent(n.peer_id);
        td.append(a);
      } else if (col === "peer") {
        var code = doc.createElement("code");
        code.title = n.peer_id; code.textContent = shortId(n.peer_id);
        td.append(code);
      } else if (col === "state") {
        td.append(doc.createElement("span"));
      }
      tr.append(td);
    });
    var r = record(tr);
    r.node = n;
    if (pins.has(n.peer_id)) { pinned.push(r); markPinned(r, true); } else order.push(r);
    return r;
  }

  // The pin and copy buttons (they need scripting: the server leaves them out), added to a
  // row when it first comes into view.
  function decorate(r) {
    if (r.decorated) return;
    r.decorated = true;
    var b = doc.createElement("button");
    b.type = "button"; b.className = "pin"; b.textContent = "\u2606";
    b.setAttribute("aria-pressed", "false");
    b.setAttribute("aria-label", "Pin " + r.tr.cells[IDX.nickname].textContent);
    r.tr.cells[IDX.pin].append(b);
    var c = doc.createElement("button");
    c.type = "button"; c.className = "copy";
    c.setAttribute("aria-label", "Copy peer id"); c.title = "Copy peer id";
    c.textContent = "copy";
    r.tr.cells[IDX.peer].append(" ", c);
  }

  // -- the window: only the rows on screen (and some around) are in the document ----------
  var OVERSCAN = 30;
  var rowHeight = 0;
  var topPad = spacer(), bottomPad = spacer();
  var shownFrom = -1, shownTo = -1, layoutDirty = true, renderQueued = false;
  var onScreen = [];
  function spacer() {
    var tr = doc.createElement("tr");
    tr.className = "spacer";
    tr.setAttribute("aria-hidden", "true");
    var td = doc.createElement("td");
    td.colSpan = COLS.length;
    tr.append(td);
    return tr;
  }
  function rebuildView() {
    var filtering = fState.value || fText.value.trim();
    view = filtering ? order.filter(matches) : order.slice();
    var pv = filtering ? pinned.filter(matches) : pinned;
    pinned.forEach(function (r) { r.shown = false; });
    pv.forEach(function (r) {
      r.shown = true;
      if (r.stale) { r.stale = false; COLS.forEach(function (c) { setCell(r, c, serverNow()); }); }
    });
    pinnedBody.replaceChildren.apply(pinnedBody, pv.map(function (r) { return r.tr; }));
    table.setAttribute("aria-rowcount", String(view.length + pv.length + 1));
    pv.forEach(function (r, i) { r.tr.setAttribute("aria-rowindex", String(i + 2)); });
    layoutDirty = true;
    countShown(view.length + pv.length);
    render();
  }
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(function () { renderQueued = false; renderNow(); });
  }
  function renderNow() {
    var h = rowHeight || 30;
    var top = tbody.getBoundingClientRect().top;
    var from = Math.max(0, Math.floor(-top / h) - OVERSCAN);
    var to = Math.min(view.length, Math.ceil((window.innerHeight - top) / h) + OVERSCAN);
    if (to < from) to = from;
    if (!layoutDirty && from === shownFrom && to === shownTo) return;
    layoutDirty = false;
    shownFrom = from; shownTo = to;
    onScreen.forEach(function (r) { r.shown = false; });
    onScreen = view.slice(from, to);
    var now = serverNow();
    onScreen.forEach(function (r) {
      r.shown = true;
      if (r.stale) {
        r.stale = false;
        COLS.forEach(function (c) { setCell(r, c, now); });
      }
      decorate(r);
    });
    var base = pinnedBody.rows.length + 2;
    var trs = onScreen.map(function (r, i) {
      r.tr.setAttribute("aria-rowindex", String(base + from + i));
      return r.tr;
    });
    topPad.hidden = from === 0;
    bottomPad.hidden = to === view.length;
    topPad.firstChild.style.height = from * h + "px";
    bottomPad.firstChild.style.height = (view.length - to) * h + "px";
    tbody.replaceChildren.apply(tbody, [topPad].concat(trs, [bottomPad]));
    if (!rowHeight && trs.length) {
      rowHeight = trs[0].getBoundingClientRect().height || 30;
      layoutDirty = true;
      render();
    }
    onScreen.forEach(function (r) {
      if (r.node) { setCell(r, "head_age", now); setCell(r, "last_beat", now); }
    });
  }
  window.addEventListener("scroll", render, { passive: true });
  window.addEventListener("resize", function () { layoutDirty = true; render(); });

  // -- pins ---------------------------------------------------------------------------------
  var pins = new Set();
  try { pins = new Set(JSON.parse(localStorage.getItem(PIN_KEY) || "[]")); } catch (e) { /* none */ }
  function savePins() {
    try { localStorage.setItem(PIN_KEY, JSON.stringify(Array.from(pins))); } catch (e) { /* private mode */ }
  }
  function markPinned(r, on) {
    decorate(r);
    var b = r.tr.cells[IDX.pin].firstChild;
    b.setAttribute("aria-pressed", on ? "true" : "false");
    b.textContent = on ? "\u2605" : "\u2606";
    r.tr.classList.toggle("pinned", on);
  }
  function pin(r, on) {
    if (on) pins.add(r.peer); else pins.delete(r.peer);
    savePins();
    markPinned(r, on);
    var from = on ? order : pinned, to = on ? pinned : order;
    var i = from.indexOf(r);
    if (i >= 0) from.splice(i, 1);
    if (on) to.push(r); else to.unshift(r);
    if (sortCol) sortLists(); else rebuildView();
  }
  order = order.filter(function (r) {
    if (!pins.has(r.peer)) return true;
    pinned.push(r); markPinned(r, true);
    return false;
  });

  // -- sorting ------------------------------------------------------------------------------
  var sortCol = null, sortDir = 1;
  // Each row's key computed once (not once per comparison): 10,000 rows sort in a few ms.
  function sorted(list, col, dir) {
    var isAge = TYPES[col] === "age";
    var keyed = list.map(function (r, i) { return [value(r, col), i, r]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      var xn = x === null || x === "", yn = y === null || y === "";
      if (xn || yn) return xn === yn ? a[1] - b[1] : (xn ? 1 : -1); // missing values last
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return c ? (isAge ? -c : c) * dir : a[1] - b[1];
    });
    return keyed.map(function (k) { return k[2]; });
  }
  function sortLists() {
    pinned = sorted(pinned, sortCol, sortDir);
    order = sorted(order, sortCol, sortDir);
    rebuildView();
  }
  function sortBy(col, dir) {
    sortCol = col; sortDir = dir;
    heads.forEach(function (th) {
      if (th.hasAttribute("aria-sort")) {
        th.setAttribute("aria-sort", th.dataset.col === col
          ? (dir > 0 ? "ascending" : "descending") : "none");
      }
    });
    sortLists();
  }

  // -- filtering ----------------------------------------------------------------------------
  var fState = doc.getElementById("f-state");
  var fText = doc.getElementById("f-text");
  function matches(r) {
    var want = fState.value, text = fText.value.trim().toLowerCase();
    var state = r.node ? r.node.state : r.tr.dataset.state;
    if (want && state !== want) return false;
    if (!text) return true;
    var hay = r.node
      ? [r.node.nickname, r.node.miner_address, r.node.peer_id, r.node.version,
        r.node.network].join(" ").toLowerCase()
      : r.tr.textContent.toLowerCase() + " " + r.peer.toLowerCase();
    return hay.indexOf(text) >= 0;
  }
  function countShown(n) {
    shown.textContent = n === rows.size ? rows.size + " nodes" : n + " of " + rows.size + " nodes";
  }
  var filterTimer = 0;
  fState.addEventListener("change", rebuildView);
  fText.addEventListener("input", function () {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(rebuildView, 150);
  });

  // -- clicks: sort, pin, copy (one delegated listener) -------------------------------------
  table.addEventListener("click", function (ev) {
    var t = ev.target.closest("button");
    if (!t) return;
    if (t.classList.contains("sort")) {
      var col = t.parentNode.dataset.col;
      sortBy(col, sortCol === col ? -sortDir : 1);
    } else if (t.classList.contains("pin")) {
      var r = rows.get(t.closest("tr").dataset.peer);
      if (r) pin(r, !pins.has(r.peer));
    } else if (t.classList.contains("copy")) {
      copy(t.closest("tr").dataset.peer, t);
    }
  });
  function copy(text, button) {
    function done(ok) {
      button.title = ok ? "Copied" : "Copy failed";
      button.classList.toggle("copied", ok);
      setTimeout(function () { button.title = "Copy peer id"; button.classList.remove("copied"); }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
      return;
    }
    var area = doc.createElement("textarea");
    area.value = text; area.setAttribute("readonly", ""); area.className = "offscreen";
    body.append(area); area.select();
    var ok = false;
    try { ok = doc.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    done(ok);
  }

  // -- ages tick for the rows on screen ------------------------------------------------------
  function tick() {
    var now = serverNow();
    onScreen.concat(pinned).forEach(function (r) {
      if (r.node) {
        setCell(r, "head_age", now);
        setCell(r, "last_beat", now);
      } else {
        ["head_age", "last_beat"].forEach(function (col) {
          var cell = r.tr.cells[IDX[col]], v = num(cell.dataset.v);
          if (v !== null) cell.textContent = age(v, now);
        });
      }
    });
    tickNetworks(now);
  }
  setInterval(tick, 1000);

  // -- networks -----------------------------------------------------------------------------
  var netSection = doc.getElementById("networks");
  var networks = new Map();
  function card(key) {
    var el = netSection.querySelector('[data-network="' + CSS.escape(key) + '"]');
    if (el) return el;
    var quiet = netSection.querySelector("p.quiet");
    if (quiet) quiet.remove();
    el = doc.createElement("article");
    el.className = "network"; el.dataset.network = key;
    var h = doc.createElement("h2"); el.append(h);
    var dl = doc.createElement("dl"); dl.className = "figures";
    [["height", "Height"], ["expected", "Expected"], ["nulls", "Null rounds"],
      ["last", "Last tipset"], ["head", "Consensus head"], ["alerts", "Alerts firing"]]
      .forEach(function (f) {
        var div = doc.createElement("div"), dt = doc.createElement("dt"), dd = doc.createElement("dd");
        dt.textContent = f[1]; dd.dataset.f = f[0];
        div.append(dt, dd); dl.append(div);
      });
    el.append(dl);
    var ul = doc.createElement("ul"); ul.className = "counts";
    ul.setAttribute("aria-label", "Nodes per state");
    STATE_ORDER.forEach(function (s) {
      var li = doc.createElement("li"); li.dataset.state = s; li.className = "count";
      var sp = doc.createElement("span"); sp.className = "state s-" + s; sp.textContent = word(s);
      var b = doc.createElement("b"); li.append(sp, " ", b); ul.append(li);
    });
    el.append(ul);
    netSection.append(el);
    return el;
  }
  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }
  function updateNetwork(n) {
    networks.set(n.key, n);
    var el = card(n.key);
    setText(el.querySelector("h2"), n.network || n.key);
    var f = function (name) { return el.querySelector('[data-f="' + name + '"]'); };
    var h = n.height, x = n.expected_height;
    setText(f("height"), h === null ? DASH : String(h));
    setText(f("expected"), x === null ? DASH : String(x));
    setText(f("nulls"), h === null || x === null ? DASH : String(x - h));
    var last = n.genesis_timestamp !== null && h !== null
      ? n.genesis_timestamp + h * (n.block_delay || 30) : null;
    f("last").dataset.v = last === null ? "" : String(last);
    var head = n.consensus_head || [];
    var headEl = f("head");
    headEl.title = head.join(" ");
    setText(headEl, head.length ? head.map(shortId).join(", ") : DASH);
    var counts = n.counts || {};
    el.querySelectorAll(".counts li").forEach(function (li) {
      var c = counts[li.dataset.state] || 0;
      setText(li.querySelector("b"), String(c));
      li.classList.toggle("zero", !c);
    });
  }
  function tickNetworks(now) {
    netSection.querySelectorAll('[data-f="last"]').forEach(function (dd) {
      var v = num(dd.dataset.v);
      setText(dd, v === null ? DASH : age(v, now) + " ago");
    });
  }

  // -- applying updates, coalesced ------------------------------------------------------------
  var pending = new Map(); // peer -> merged delta
  var pendingRemoved = new Set();
  var pendingNetworks = null;
  var pendingFull = false;
  var scheduled = false, lastApply = 0;

  function queue(m) {
    if (m.full) {
      pending.clear(); pendingRemoved.clear(); pendingFull = true;
    }
    (m.nodes || []).forEach(function (d) {
      var had = pending.get(d.peer_id);
      pending.set(d.peer_id, had ? Object.assign(had, d) : d);
      pendingRemoved.delete(d.peer_id);
    });
    (m.removed || []).forEach(function (p) { pending.delete(p); pendingRemoved.add(p); });
    if (m.networks) pendingNetworks = m.networks;
    if (typeof m.at === "number") skew = m.at - Date.now() / 1000;
    schedule();
  }
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    var wait = Math.max(0, lastApply + APPLY_EVERY - Date.now());
    setTimeout(function () { requestAnimationFrame(apply); }, wait);
  }
  function apply() {
    var started = performance.now(), size = pending.size;
    applyNow();
    if (window.__bench) window.__bench.applies.push([started, size, performance.now() - started]);
  }
  function applyNow() {
    scheduled = false;
    lastApply = Date.now();
    var now = serverNow();
    var full = pendingFull, filterState = fState.value, filterText = fText.value.trim();
    var seen = full ? new Set() : null;
    var reshape = false; // rows came, went, or may have left or joined the filter
    pending.forEach(function (d, peer) {
      var r = rows.get(peer);
      var changed;
      if (!r) {
        r = newRow(Object.assign({}, d));
        changed = COLS;
        reshape = true;
      } else if (!r.node) {
        r.node = Object.assign({}, d);
        changed = COLS;
      } else {
        changed = [];
        Object.keys(d).forEach(function (k) {
          if (r.node[k] !== d[k]) {
            (FIELD_COLS[k] || []).forEach(function (c) { changed.push(c); });
            if (k === "state" && filterState) reshape = true;
          }
        });
        Object.assign(r.node, d);
      }
      if (seen) seen.add(peer);
      // Rows off screen are brought up to date when they come into view (renderNow).
      if (!r.shown) { r.stale = true; return; }
      for (var i = 0; i < changed.length; i++) setCell(r, changed[i], now);
    });
    if (full) rows.forEach(function (r, peer) { if (!seen.has(peer)) pendingRemoved.add(peer); });
    if (pendingRemoved.size) {
      pendingRemoved.forEach(function (peer) { rows.delete(peer); });
      var kept = function (r) { return rows.has(r.peer); };
      order = order.filter(kept);
      pinned = pinned.filter(kept);
      reshape = true;
    }
    if (filterText && pending.size) reshape = true;
    if (reshape) {
      body.dataset.nodes = String(rows.size);
      if (sortCol && pending.size) sortLists(); else rebuildView();
    }
    if (pendingNetworks) {
      pendingNetworks.forEach(updateNetwork);
      tickNetworks(now);
      applyAlertCounts();
    }
    var empty = doc.getElementById("empty");
    if (empty && rows.size) empty.remove();
    pending.clear(); pendingRemoved.clear(); pendingNetworks = null; pendingFull = false;
  }

  // -- the feed, with reconnects and the polling fallback --------------------------------------
  var ws = null, backoff = 1000, failures = 0, pollTimer = 0, polling = false;
  function setLive(state, text) {
    body.dataset.live = state;
    liveEl.textContent = text;
    liveEl.className = "live live-" + state;
  }
  function connect() {
    if (!("WebSocket" in window)) { startPolling(); return; }
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/api/v1/feed?mode=nodes";
    try { ws = new WebSocket(url); } catch (e) { retry(); return; }
    ws.onopen = function () {
      backoff = 1000; failures = 0;
      stopPolling();
      setLive("ws", "live");
    };
    ws.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "nodes") queue(m);
    };
    ws.onclose = function () { ws = null; retry(); };
  }
  function retry() {
    failures++;
    if (failures >= 2) startPolling(); else setLive("retry", "reconnecting\u2026");
    var wait = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, 30000);
    setTimeout(connect, wait);
  }
  function pollEvery() { return rows.size > 2000 ? 15000 : 5000; }
  function startPolling() {
    if (polling) return;
    polling = true;
    poll();
  }
  function stopPolling() { polling = false; clearTimeout(pollTimer); }
  function poll() {
    if (!polling) return;
    Promise.all([getJSON("/api/v1/nodes"), getJSON("/api/v1/fleet")]).then(function (got) {
      if (!polling) return;
      queue({ full: true, nodes: got[0], networks: got[1].networks, at: got[1].taken_at });
      setLive("poll", "polling every " + pollEvery() / 1000 + " s");
    }, function () {
      if (polling) setLive("off", "offline, retrying");
    }).then(function () {
      if (polling) pollTimer = setTimeout(poll, pollEvery());
    });
  }
  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error(url + ": " + r.status);
        return r.json();
      });
  }

  // -- alerts (polled: they change seldom) --------------------------------------------------
  var alerts = [];
  function applyAlertCounts() {
    netSection.querySelectorAll("article.network").forEach(function (el) {
      var n = networks.get(el.dataset.network);
      var names = [el.dataset.network, n ? n.network : null];
      var c = alerts.filter(function (a) {
        return a.state === "firing" && a.labels && names.indexOf(a.labels.network) >= 0;
      }).length;
      var dd = el.querySelector('[data-f="alerts"]');
      setText(dd, String(c));
      dd.classList.toggle("hot", c > 0);
    });
  }
  function renderAlerts() {
    var list = doc.getElementById("alerts-list");
    var firing = alerts.filter(function (a) { return a.state === "firing"; });
    list.textContent = "";
    if (!firing.length) {
      var p = doc.createElement("p"); p.className = "quiet"; p.textContent = "No alerts firing.";
      list.append(p);
    } else {
      var ul = doc.createElement("ul"); ul.className = "alerts";
      firing.slice(0, 50).forEach(function (a) {
        var l = a.labels || {}, an = a.annotations || {};
        var li = doc.createElement("li"), b = doc.createElement("b"), s = doc.createElement("span");
        b.textContent = l.alertname || "alert";
        s.className = "quiet"; s.textContent = an.summary || an.description || "";
        li.append(b, " " + (l.nickname || l.peer_id || l.network || "") + " ", s);
        ul.append(li);
      });
      list.append(ul);
    }
    applyAlertCounts();
  }
  function pollAlerts() {
    getJSON("/api/v1/alerts").then(function (a) { alerts = a || []; renderAlerts(); },
      function () { /* kept as they were */ });
  }
  setInterval(pollAlerts, 15000);

  // -- head propagation -------------------------------------------------------------------------
  var propSection = doc.getElementById("propagation");
  var propChart = doc.getElementById("prop-chart");
  var SVG = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs, parent) {
    var el = doc.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (parent) parent.append(el);
    return el;
  }
  function delayClass(d) { return d < 6 ? "d-ok" : (d < 12 ? "d-late" : "d-bad"); }
  function quantile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }
  function drawPropagation(data) {
    var tipsets = (data.tipsets || []).slice().reverse(); // oldest left
    var wrap = doc.createElement("figure");
    wrap.className = "prop";
    wrap.dataset.network = data.network;
    var cap = doc.createElement("figcaption");
    var n = networks.get(data.network);
    var h2 = netSection.querySelector('[data-network="' + CSS.escape(data.network) + '"] h2');
    cap.textContent = (n ? n.network : (h2 ? h2.textContent : shortId(data.network))) + ": delay after the tipset's timestamp, last " +
      tipsets.length + " epochs";
    var W = 720, H = 200, L = 40, B = 24, T = 8, cap30 = 30;
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", class: "chart-svg",
      "aria-label": cap.textContent });
    var maxDelay = 0;
    tipsets.forEach(function (t) {
      (t.seen || []).forEach(function (s) { maxDelay = Math.max(maxDelay, s.delay); });
    });
    var top = Math.min(cap30, Math.max(6, Math.ceil(maxDelay)));
    var y = function (d) { return T + (H - T - B) * (1 - Math.min(d, top) / top); };
    var step = (W - L - 8) / Math.max(1, tipsets.length);
    [0, top / 2, top].forEach(function (v) {
      svgEl("line", { x1: L, x2: W - 4, y1: y(v), y2: y(v), class: "grid" }, svg);
      svgEl("text", { x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, svg)
        .textContent = Math.round(v) + " s";
    });
    tipsets.forEach(function (t, i) {
      var cx = L + step * (i + 0.5);
      var seen = (t.seen || []).slice().sort(function (a, b) { return a.delay - b.delay; });
      var delays = seen.map(function (s) { return s.delay; });
      var g = svgEl("g", { class: "epoch" }, svg);
      svgEl("title", {}, g).textContent = "height " + t.height + ": " + seen.length +
        " nodes, median " + secs(quantile(delays, 0.5)) + ", slowest " +
        secs(delays.length ? delays[delays.length - 1] : null);
      var dots = seen;
      if (seen.length > 200) {
        var p10 = quantile(delays, 0.1), p90 = quantile(delays, 0.9);
        svgEl("rect", { x: cx - step * 0.3, width: step * 0.6, y: y(p90),
          height: Math.max(1, y(p10) - y(p90)), class: "band" }, g);
        dots = seen.slice(-10); // the slowest, by name
      }
      var med = quantile(delays, 0.5);
      if (med !== null) {
        svgEl("line", { x1: cx - step * 0.35, x2: cx + step * 0.35, y1: y(med), y2: y(med),
          class: "median" }, g);
      }
      dots.forEach(function (s) {
        var c = svgEl("circle", { cx: cx, cy: y(s.delay), r: 3, class: "dot " + delayClass(s.delay) }, g);
        svgEl("title", {}, c).textContent = (s.nickname || shortId(s.peer_id)) + ": " +
          secs(s.delay) + " after height " + t.height;
      });
      if (i % 5 === 0 || i === tipsets.length - 1) {
        svgEl("text", { x: cx, y: H - 6, class: "axis", "text-anchor": "middle" }, svg)
          .textContent = String(t.height);
      }
    });
    wrap.append(cap, svg);
    return wrap;
  }
  function pollPropagation() {
    var keys = Array.from(networks.keys());
    if (!keys.length) {
      netSection.querySelectorAll("article.network").forEach(function (el) { keys.push(el.dataset.network); });
    }
    if (!keys.length) return;
    Promise.all(keys.map(function (k) {
      return getJSON("/api/v1/propagation?network=" + encodeURIComponent(k) + "&epochs=30")
        .catch(function () { return null; });
    })).then(function (all) {
      var got = all.filter(function (d) { return d && (d.tipsets || []).length; });
      propSection.hidden = !got.length;
      propChart.textContent = "";
      got.forEach(function (d) { propChart.append(drawPropagation(d)); });
    });
  }
  setInterval(pollPropagation, 30000);

  // -- start ------------------------------------------------------------------------------------
  rebuildView();
  renderNow(); // detaches the rows off screen before the class lets them all show
  table.classList.add("windowed");
  setLive("start", "connecting\u2026");
  connect();
  pollAlerts();
  pollPropagation();
  // For tests and the benchmark: what the page holds.
  window.filHeartbeat = {
    rows: function () { return rows.size; },
    sortBy: sortBy,
    applied: function () { return lastApply; }
  };
})();
