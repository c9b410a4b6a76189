"""Per-agent statistics and the summaries (pure): per behaviour, merged over worker processes,
printed as a table.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from heartbeat.tools.loadgen.config import KINDS

__all__ = ["AgentStats", "format_table", "merge_reports", "summarize"]


@dataclass
class AgentStats:
    """What one simulated agent did; merged per behaviour by `merge_reports`."""

    kind: str
    started: bool = False
    connected: bool = False  # at the end of the run (a beat written on a live session)
    ever_connected: bool = False
    dials: int = 0
    sessions: int = 0
    beats_sent: int = 0
    session_beats: int = 0  # beats written in the latest session
    streams_opened: int = 0
    cut_off: int = 0  # streams the aggregator closed or reset on us
    failures: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)  # loss → first beat again
    storm_recovery: float | None = None
    cut_after: list[float] = field(default_factory=list)  # stream open → cut off


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": _pct(values, 0.5),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else None,
    }


def summarize(stats: Sequence[AgentStats]) -> dict[str, Any]:
    """A worker's report: per-kind sums and the raw timing lists (JSON-friendly)."""
    kinds: dict[str, dict[str, Any]] = {}
    for s in stats:
        k = kinds.setdefault(
            s.kind,
            {
                "agents": 0,
                "started": 0,
                "connected": 0,
                "ever_connected": 0,
                "dials": 0,
                "sessions": 0,
                "beats_sent": 0,
                "session_beats": 0,
                "streams_opened": 0,
                "cut_off": 0,
                "failures": {},
                "recoveries": [],
                "storm_recoveries": [],
                "storm_missing": 0,
                "cut_after": [],
            },
        )
        k["agents"] += 1
        k["started"] += s.started
        k["connected"] += s.connected
        k["ever_connected"] += s.ever_connected
        for name in (
            "dials",
            "sessions",
            "beats_sent",
            "session_beats",
            "streams_opened",
            "cut_off",
        ):
            k[name] += getattr(s, name)
        for reason, n in s.failures.items():
            k["failures"][reason] = k["failures"].get(reason, 0) + n
        k["recoveries"].extend(s.recoveries)
        k["cut_after"].extend(s.cut_after[:8])
        if s.storm_recovery is not None:
            k["storm_recoveries"].append(s.storm_recovery)
    return {"kinds": kinds}


def merge_reports(reports: Sequence[dict[str, Any]], *, elapsed: float) -> dict[str, Any]:
    """One summary from the workers' reports: totals, and distributions instead of lists."""
    kinds: dict[str, dict[str, Any]] = {}
    workers = []
    for report in reports:
        workers.append({key: report.get(key) for key in ("worker", "agents", "rss_kb", "error")})
        for kind, k in report.get("kinds", {}).items():
            m = kinds.setdefault(kind, {})
            for key, value in k.items():
                if isinstance(value, int):
                    m[key] = m.get(key, 0) + value
                elif isinstance(value, list):
                    m.setdefault(key, []).extend(value)
                elif isinstance(value, dict):
                    d = m.setdefault(key, {})
                    for reason, n in value.items():
                        d[reason] = d.get(reason, 0) + n
    totals: dict[str, Any] = {"failures": {}}
    for kind in sorted(kinds, key=KINDS.index):
        m = kinds[kind]
        for key in ("recoveries", "storm_recoveries", "cut_after"):
            m[key] = _dist(m.get(key, []))
        for key, value in m.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        for reason, n in m.get("failures", {}).items():
            totals["failures"][reason] = totals["failures"].get(reason, 0) + n
    ordered = {kind: kinds[kind] for kind in sorted(kinds, key=KINDS.index)}
    return {"elapsed": round(elapsed, 3), "kinds": ordered, "totals": totals, "workers": workers}


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width table."""
    cols = ("agents", "started", "connected", "ever_connected", "dials", "beats_sent", "cut_off")
    heads = ("kind", "agents", "started", "conn", "ever", "dials", "beats", "cut_off", "failures")
    rows = [heads]
    for kind, k in [*summary["kinds"].items(), ("total", summary["totals"])]:
        failures = ",".join(f"{r}={n}" for r, n in sorted(k.get("failures", {}).items()))
        rows.append((kind, *(str(k.get(c, 0)) for c in cols), failures or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads) - 1)]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r[:-1], widths, strict=True))
        )
        + "  "
        + r[-1]
        for r in rows
    ]
    lines.append(f"elapsed {summary['elapsed']:.1f}s")
    for kind, k in summary["kinds"].items():
        for key in ("recoveries", "storm_recoveries"):
            d = k.get(key) or {}
            if d.get("count"):
                lines.append(
                    f"{kind} {key}: n={d['count']} p50={d['p50']:.2f}s p99={d['p99']:.2f}s "
                    f"max={d['max']:.2f}s"
                )
        if k.get("storm_missing"):
            lines.append(f"{kind} storm_missing: {k['storm_missing']} never beat again")
    for w in summary.get("workers", []):
        if w.get("error"):
            lines.append(f"worker {w['worker']} failed: {w['error']}")
    return "\n".join(lines)
