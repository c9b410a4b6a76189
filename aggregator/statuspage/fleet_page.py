"""The fleet page (`GET /`): the header per network, alerts, and the node table. Pure.

Server-rendered so that the table shows the fleet with JavaScript off; static/app.js then
keeps it live (aggregator/feed.py's `?mode=nodes`). Every text from a node (nickname,
version, error) is escaped: a beat's free text never becomes markup. Column keys (`data-col`, on
the header cells) and sort types (`data-type`) are what app.js reads; a cell's `data-v` is its
raw sort value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

from aggregator.statuspage.format import (
    DASH,
    STATE_ORDER,
    age,
    fraction,
    seconds,
    short_cid,
    short_peer,
    state_word,
    uptime_fraction,
)

__all__ = ["COLUMNS", "alerts_html", "network_html", "node_row", "rows_html", "table_head"]

#: (key, header, sort type) of the node table's columns, in order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("pin", "Pin", "pin"),
    ("nickname", "Nickname", "text"),
    ("miner", "Miner", "text"),
    ("peer", "Peer ID", "text"),
    ("network", "Network", "text"),
    ("state", "State", "state"),
    ("height", "Height", "num"),
    ("lag", "Lag", "num"),
    ("head_age", "Head age", "age"),
    ("last_beat", "Last beat", "age"),
    ("delay", "Head delay p50", "num"),
    ("up24", "Uptime 24 h", "num"),
    ("up7d", "Uptime 7 d", "num"),
    ("version", "Version", "text"),
    ("error", "Source error", "text"),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def node_href(peer_id: str) -> str:
    return "/nodes/" + quote(peer_id, safe="")


def table_head() -> str:
    cells = []
    for key, label, kind in COLUMNS:
        if kind == "pin":
            cells.append(
                f'<th scope="col" data-col="{key}"><span class="sr-only">{label}</span></th>'
            )
            continue
        cells.append(
            f'<th scope="col" data-col="{key}" data-type="{kind}" aria-sort="none">'
            f'<button type="button" class="sort">{label}</button></th>'
        )
    return "<tr>" + "".join(cells) + "</tr>"


def _num(value: Any) -> str:
    return "" if value is None else _e(value)


def source_text(node: Mapping[str, Any]) -> str:
    """The source error column: the error text, else a source state that is not ok."""
    error = node.get("source_error")
    if error:
        return str(error)
    state = node.get("source_state")
    if state and state != "ok":
        return str(state)
    return ""


def node_row(node: Mapping[str, Any], now: float) -> str:
    """One `<tr>` of the node table."""
    peer = str(node.get("peer_id", ""))
    state = str(node.get("state", ""))
    nickname = str(node.get("nickname") or "") or short_peer(peer)
    height = node.get("height")
    lag = node.get("lag_epochs")
    head_ts = node.get("head_timestamp")
    last_beat = node.get("last_beat")
    delay = node.get("head_delay_p50")
    up24 = uptime_fraction(dict(node), "24h")
    up7d = uptime_fraction(dict(node), "7d")
    version = node.get("version") or ""
    error = source_text(node)
    rank = STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)
    probation = ' <span class="badge">probation</span>' if node.get("probation") else ""
    shown_height = DASH if not height else _e(height)
    # Kept short (10,000 rows): no per-cell column names (app.js counts cells by the
    # header's `data-col`), the peer id only where it is needed.
    cells = (
        "<td></td>",  # the pin button: app.js adds it (and the copy button)
        f'<td><a href="{_e(node_href(peer))}">{_e(nickname)}</a>{probation}</td>',
        f"<td>{_e(node.get('miner_address') or DASH)}</td>",
        f'<td><code title="{_e(peer)}">{_e(short_peer(peer))}</code></td>',
        f"<td>{_e(node.get('network') or DASH)}</td>",
        f'<td data-v="{rank}"><span class="state s-{_e(state)}">'
        f"{_e(state_word(state))}</span></td>",
        f'<td data-v="{_num(height or None)}">{shown_height}</td>',
        f'<td data-v="{_num(lag)}">{DASH if lag is None else _e(lag)}</td>',
        f'<td data-v="{_num(head_ts)}">{_e(age(head_ts, now))}</td>',
        f'<td data-v="{_num(last_beat)}">{_e(age(last_beat, now))}</td>',
        f'<td data-v="{_num(delay)}">{_e(seconds(delay))}</td>',
        f'<td data-v="{_num(up24)}">{_e(fraction(up24))}</td>',
        f'<td data-v="{_num(up7d)}">{_e(fraction(up7d))}</td>',
        f"<td>{_e(version or DASH)}</td>",
        f"<td>{_e(error or DASH)}</td>",
    )
    return f'<tr data-peer="{_e(peer)}" data-state="{_e(state)}">' + "".join(cells) + "</tr>"


def rows_html(nodes: Iterable[Mapping[str, Any]], now: float) -> Iterator[str]:
    for node in nodes:
        yield node_row(node, now)


def _count_items(counts: Mapping[str, int]) -> str:
    items = []
    for state in STATE_ORDER:
        n = counts.get(state, 0)
        cls = "count" if n else "count zero"
        items.append(
            f'<li class="{cls}" data-state="{_e(state)}"><span class="state s-{_e(state)}">'
            f"{_e(state_word(state))}</span> <b>{n}</b></li>"
        )
    return "".join(items)


def _alerts_for(network: Mapping[str, Any], alerts: list[dict[str, Any]]) -> int:
    names = {network.get("key"), network.get("network")}
    return sum(
        1
        for a in alerts
        if a.get("state") == "firing" and (a.get("labels") or {}).get("network") in names
    )


def network_html(network: Mapping[str, Any], alerts: list[dict[str, Any]], now: float) -> str:
    """One network's header card (from `network_json`, as `/api/v1/fleet` has it)."""
    height = network.get("height")
    expected = network.get("expected_height")
    nulls = expected - height if height is not None and expected is not None else None
    head = network.get("consensus_head") or []
    head_text = ", ".join(short_cid(c) for c in head) if head else DASH
    genesis = network.get("genesis_timestamp")
    delay = network.get("block_delay") or 30
    last_ts = genesis + height * delay if genesis is not None and height is not None else None
    firing = _alerts_for(network, alerts)
    key = _e(network.get("key", ""))
    return (
        f'<article class="network" data-network="{key}">'
        f"<h2>{_e(network.get('network') or network.get('key') or DASH)}</h2>"
        '<dl class="figures">'
        f'<div><dt>Height</dt><dd data-f="height">{_e(height if height is not None else DASH)}'
        "</dd></div>"
        f'<div><dt>Expected</dt><dd data-f="expected">'
        f"{_e(expected if expected is not None else DASH)}</dd></div>"
        f'<div><dt>Null rounds</dt><dd data-f="nulls" title="expected height − height">'
        f"{_e(nulls if nulls is not None else DASH)}</dd></div>"
        f'<div><dt>Last tipset</dt><dd data-f="last" data-v="{_num(last_ts)}">'
        f"{_e(age(last_ts, now))}{' ago' if last_ts is not None else ''}</dd></div>"
        f'<div><dt>Consensus head</dt><dd data-f="head" title="{_e(" ".join(head))}">'
        f"<code>{_e(head_text)}</code></dd></div>"
        f'<div><dt>Alerts firing</dt><dd data-f="alerts" class="{"hot" if firing else ""}">'
        f"{firing}</dd></div>"
        "</dl>"
        f'<ul class="counts" aria-label="Nodes per state">'
        f"{_count_items(network.get('counts') or {})}</ul>"
        "</article>"
    )


def alerts_html(alerts: list[dict[str, Any]]) -> str:
    firing = [a for a in alerts if a.get("state") == "firing"]
    if not firing:
        return '<p class="quiet">No alerts firing.</p>'
    items = []
    for a in firing[:50]:
        labels = a.get("labels") or {}
        annotations = a.get("annotations") or {}
        what = labels.get("alertname", "alert")
        who = labels.get("nickname") or labels.get("peer_id") or labels.get("network") or ""
        summary = annotations.get("summary") or annotations.get("description") or ""
        items.append(
            f'<li><b>{_e(what)}</b> {_e(who)} <span class="quiet">{_e(summary)}</span></li>'
        )
    more = f"<li>… and {len(firing) - 50} more</li>" if len(firing) > 50 else ""
    return f'<ul class="alerts">{"".join(items)}{more}</ul>'
