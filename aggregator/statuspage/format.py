"""Formatting of the page's values: short ids, ages, fractions, state words. Pure.

Every function returns plain text; the renderers escape it (`html.escape`) where it is put.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DASH",
    "STATE_ORDER",
    "STATE_WORDS",
    "age",
    "fraction",
    "seconds",
    "short_cid",
    "short_peer",
    "state_word",
    "uptime_fraction",
]

#: What a missing value looks like.
DASH = "—"

#: Node states as the page names them (NodeState values; unknown ones shown as they come).
STATE_WORDS = {
    "in_consensus": "in consensus",
    "lagging": "lagging",
    "forked": "forked",
    "stalled": "stalled",
    "syncing": "syncing",
    "source_down": "source down",
    "down": "down",
}
#: Worst first: the order of the header's counts and of a sort by state.
STATE_ORDER = ("down", "source_down", "forked", "stalled", "lagging", "syncing", "in_consensus")


def state_word(state: str) -> str:
    return STATE_WORDS.get(state, state.replace("_", " "))


def short_cid(cid: str) -> str:
    """`bafy2bzace…` CIDs share their prefix: the last 8 characters tell them apart."""
    return cid if len(cid) <= 12 else "…" + cid[-8:]


def short_peer(peer_id: str) -> str:
    """`12D3KooW…` peer ids share their prefix: the last 8 characters tell them apart."""
    return peer_id if len(peer_id) <= 12 else "…" + peer_id[-8:]


def age(at: float | None, now: float) -> str:
    """How long ago `at` (unix seconds) was: `3 s`, `4 min`, `2 h`, `5 d`."""
    if at is None:
        return DASH
    return seconds(max(0.0, now - at), whole=True)


def seconds(value: float | None, *, whole: bool = False) -> str:
    """A duration: below 10 s with one decimal (unless `whole`), then s, min, h, d."""
    if value is None:
        return DASH
    if value < 10 and not whole:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.0f} h"
    return f"{value / 86400:.0f} d"


def fraction(value: float | None) -> str:
    """A fraction as a percentage: `99.8 %` (never rounded up to 100 unless it is 1)."""
    if value is None:
        return DASH
    if value >= 1:
        return "100 %"
    return f"{int(value * 1000) / 10:.1f} %"


def uptime_fraction(node: dict[str, Any], window: str, kind: str = "available") -> float | None:
    """`node["uptime"][window][kind]` when the node has it (the history adds `uptime`)."""
    uptime = node.get("uptime")
    if not isinstance(uptime, dict):
        return None
    entry = uptime.get(window)
    if not isinstance(entry, dict):
        return None
    value = entry.get(kind)
    return float(value) if isinstance(value, int | float) else None
