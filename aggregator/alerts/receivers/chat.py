"""The text a chat message shows for a batch of notices (Slack, Discord, Telegram)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aggregator.alerts.receivers.common import AGGREGATOR_LABEL, Notice, NoticeKind

__all__ = ["COLOURS", "alert_lines", "batch_title", "detail_labels", "runbook_link"]

#: Per notice kind and severity, an RGB colour (Discord's embed colour, Slack's emoji).
COLOURS = {"critical": 0xD7263D, "warning": 0xF4A259, "info": 0x3C91E6, "resolved": 0x2A9D8F}
_SHOWN = ("nickname", "peer_id", "miner", "network", AGGREGATOR_LABEL)


def batch_title(notices: Sequence[Notice]) -> str:
    firing = sum(1 for n in notices if n.kind in (NoticeKind.FIRING, NoticeKind.REMINDER))
    resolved = sum(1 for n in notices if n.resolved)
    tests = len(notices) - firing - resolved
    parts = []
    if firing:
        parts.append(f"{firing} firing")
    if resolved:
        parts.append(f"{resolved} resolved")
    if tests:
        parts.append("test notification")
    return "fil-heartbeat: " + ", ".join(parts)


def detail_labels(notice: Notice) -> str:
    labels = notice.alert.labels
    return ", ".join(f"{k}={labels[k]}" for k in _SHOWN if labels.get(k))


def runbook_link(notice: Notice) -> str | None:
    """The runbook as an absolute URL, or None while it is a relative path (no base URL)."""
    runbook = notice.alert.annotations.get("runbook", "")
    return runbook if runbook.startswith(("http://", "https://")) else None


def alert_lines(notices: Sequence[Notice], render: Callable[[Notice], str], limit: int) -> str:
    """One rendered block per notice, joined, within `limit` characters: the ones that do not
    fit are counted in a last line."""
    out: list[str] = []
    used = 0
    for i, n in enumerate(notices):
        piece = render(n)
        rest = len(notices) - i
        tail = f"\n… and {rest} more"
        if used + len(piece) + 1 > limit - (len(tail) if rest > 1 else 0):
            if out:
                out.append(tail.strip())
            else:
                out.append(piece[: max(0, limit - 1)] + "…")
            break
        out.append(piece)
        used += len(piece) + 1
    return "\n".join(out)
