"""The node page's server-rendered parts (`GET /nodes/{peer_id}`): details, uptime, the
current source error. Pure. The state timeline, the lag chart and the transitions are drawn
by static/node.js from `/api/v1/nodes/{peer_id}/history` ("no history yet" without it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from typing import Any

from aggregator.statuspage.fleet_page import source_text
from aggregator.statuspage.format import DASH, age, fraction, seconds, uptime_fraction

__all__ = ["details_html", "errors_html", "uptime_html"]

WINDOWS = (("24h", "24 h"), ("7d", "7 days"), ("30d", "30 days"))


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(at: float | None, now: float) -> str:
    if at is None:
        return DASH
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f'<time datetime="{_e(stamp)}" data-v="{at}">{_e(stamp)}</time> ({_e(age(at, now))} ago)'


def details_html(node: Mapping[str, Any], now: float) -> str:
    """The node's facts as `<div><dt>…</dt><dd>…</dd></div>` pairs; absent ones as a dash."""
    head = node.get("head_cids") or []
    lag = node.get("lag_epochs")
    rows: list[tuple[str, str, str]] = [
        ("peer_id", "Peer ID", f"<code>{_e(node.get('peer_id', ''))}</code>"),
        ("miner", "Miner", _e(node.get("miner_address") or DASH)),
        ("network", "Network", _e(node.get("network") or DASH)),
        ("height", "Height", _e(node.get("height") or DASH)),
        ("lag", "Lag (epochs)", _e(DASH if lag is None else lag)),
        ("head", "Head", "<code>" + (_e(" ".join(head)) if head else DASH) + "</code>"),
        ("head_age", "Head age", _e(age(node.get("head_timestamp"), now))),
        (
            "delay",
            "Head delay p50 / p90",
            _e(f"{seconds(node.get('head_delay_p50'))} / {seconds(node.get('head_delay_p90'))}"),
        ),
        ("last_beat", "Last beat", _when(node.get("last_beat"), now)),
        ("first_seen", "First seen", _when(node.get("first_seen"), now)),
        ("beat_period", "Beat period", _e(seconds(node.get("beat_period")))),
        ("version", "Version", _e(node.get("version") or DASH)),
        ("source_state", "Source", _e(node.get("source_state") or DASH)),
    ]
    if "remote_address" in node:  # absent on a public page
        rows.append(
            ("remote", "Remote address", f"<code>{_e(node['remote_address'] or DASH)}</code>")
        )
    return "\n".join(
        f'<div><dt>{label}</dt><dd data-f="{key}">{value}</dd></div>' for key, label, value in rows
    )


def uptime_html(node: Mapping[str, Any]) -> str:
    rows = []
    for key, label in WINDOWS:
        available = uptime_fraction(dict(node), key, "available")
        healthy = uptime_fraction(dict(node), key, "healthy")
        rows.append(
            f'<tr data-window="{key}"><th scope="row">{label}</th>'
            f"<td>{_e(fraction(available))}</td><td>{_e(fraction(healthy))}</td></tr>"
        )
    return "".join(rows)


def errors_html(node: Mapping[str, Any]) -> str:
    text = source_text(node)
    if not text:
        return '<p class="quiet">No source error now.</p>'
    return f'<p>Now: <span class="err">{_e(text)}</span></p>'
