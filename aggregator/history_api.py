"""The history routes of the HTTP API (aggregator/http.py calls `HistoryApi.route` first).

- `GET /api/v1/nodes/{peer_id}/history?since=&until=` (unix seconds; default the last 24 h):
  `{"peer_id", "since", "until", "transitions": [{"at", "state", "error"}] (led by the one in
  effect at `since`, which may be earlier), "heights":
  [{"at", "height", "lag"}], "gaps": [{"from", "to"}], "uptime": {"available", "healthy",
  "excluded_seconds"}, "state_at_since", "truncated", "heights_every"}`. `gaps` are the
  aggregator's own down time, left out of the uptime's denominator with the time before the
  node's history began (`excluded_seconds` counts both). At most `MAX_TRANSITIONS`
  transitions (`truncated`); more than `MAX_HEIGHTS` samples are thinned to every
  `heights_every`-th. A bad parameter is a 400 with a JSON error, an unknown peer a 404.
- `GET /api/v1/nodes/{peer_id}/history.csv?since=&until=`: the same as CSV rows
  `peer_id,at,utc,kind,state,error,height,lag,until` (kind: transition | height | gap).
- `GET /api/v1/uptime.csv?window=24h|7d|30d` (default 24h): one row per node,
  `peer_id,nickname,miner,window,available,healthy,excluded_seconds` (empty: no data).

On a public status page (`config.status_page == "public"`) error texts are dropped
(`redact_history`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from aggregator.history import EPOCH, UNKNOWN, WINDOWS, uptime
from aggregator.history_store import HistoryReader, HistoryRows

if TYPE_CHECKING:
    from aggregator.history_service import HistoryService
    from aggregator.nodestate import FleetSnapshot

__all__ = ["MAX_HEIGHTS", "MAX_TRANSITIONS", "HistoryApi", "ParamError", "parse_range"]

MAX_TRANSITIONS = 10_000
MAX_HEIGHTS = 10_000
_NODES = "/api/v1/nodes/"
_UPTIME_CSV = "/api/v1/uptime.csv"
_JSON = b"application/json"
_CSV = b"text/csv; charset=utf-8"

Answer = tuple[int, bytes, bytes]


class ParamError(ValueError):
    """A bad query parameter (a 400)."""


def _redactor(public: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    if not public:
        return lambda d: d
    try:
        from aggregator.statuspage.privacy import redact_history
    except ImportError:  # the page package not there: drop the texts ourselves
        return lambda d: {
            **d,
            "transitions": [{**t, "error": None} for t in d.get("transitions", [])],
        }
    return redact_history


def _number(params: dict[str, list[str]], name: str, default: float) -> float:
    values = params.get(name)
    if not values or values[-1] == "":
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise ParamError(f"{name} must be unix seconds, got {values[-1]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ParamError(f"{name} must be non-negative unix seconds, got {values[-1]!r}")
    return value


def parse_range(query: str, now: float) -> tuple[float, float]:
    """`since`/`until` of a query string (defaults: the last 24 h up to `now`)."""
    params = parse_qs(query)
    until = _number(params, "until", now)
    since = _number(params, "since", until - 86_400)
    if since > until:
        raise ParamError(f"since ({since:g}) is after until ({until:g})")
    return since, until


def _answer(status: int, payload: Any) -> Answer:
    return status, _JSON, json.dumps(payload).encode()


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _csv(header: list[str], rows: list[list[Any]]) -> Answer:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(header)
    writer.writerows(rows)
    return 200, _CSV, out.getvalue().encode()


class HistoryApi:
    """Route handlers over a running `HistoryService` and the fleet snapshot."""

    def __init__(
        self,
        service: HistoryService,
        snapshot: Callable[[], FleetSnapshot],
        *,
        public: bool = False,
        max_transitions: int = MAX_TRANSITIONS,
        max_heights: int = MAX_HEIGHTS,
    ) -> None:
        self.service = service
        self.snapshot = snapshot
        self.redact = _redactor(public)
        self.public = public
        self.max_transitions = max_transitions
        self.max_heights = max_heights

    def uptime_of(self, peer_id: str) -> dict[str, Any]:
        """The node's cached uptime per window (`node_json`'s `uptime`)."""
        cached = self.service.uptime.get(peer_id)
        if cached is not None:
            return cached
        mark = self.service.tracker.mark(peer_id)
        if mark is not None:
            # tracked since the last refresh: its whole history is in its mark's totals
            now = self.service.clock()
            return {n: uptime(None, now - s, mark, now).as_json() for n, s in WINDOWS.items()}
        return {
            name: {"available": None, "healthy": None, "excluded_seconds": seconds}
            for name, seconds in WINDOWS.items()
        }

    async def route(self, method: str, path: str, query: str) -> Answer | None:
        """The answer for a history path; None for any other path."""
        if path == _UPTIME_CSV:
            kind = "uptime"
            peer_id = ""
        elif path.startswith(_NODES) and path.endswith(("/history", "/history.csv")):
            kind = "csv" if path.endswith(".csv") else "json"
            peer_id = unquote(path[len(_NODES) : path.rindex("/history")])
            if not peer_id or "/" in peer_id:
                return None
        else:
            return None
        if method not in ("GET", "HEAD"):
            return _answer(405, {"error": "method not allowed", "method": method})
        try:
            if kind == "uptime":
                return self._uptime_csv(query)
            since, until = parse_range(query, self.service.clock())
        except ParamError as exc:
            return _answer(400, {"error": str(exc), "path": path})
        history = await self.history(peer_id, since, until)
        if history is None:
            return _answer(404, {"error": "unknown peer", "peer_id": peer_id})
        return _answer(200, history) if kind == "json" else self._history_csv(history)

    async def history(self, peer_id: str, since: float, until: float) -> dict[str, Any] | None:
        """A node's history as the JSON object above; None for a peer never seen."""
        rows: HistoryRows | None = await self.service.read(
            HistoryReader.history, peer_id, since, until, self.max_transitions
        )
        known = self.snapshot().node(peer_id) is not None
        if rows is None and not known:
            return None
        now = self.service.clock()
        end_at = min(until, now)
        end = rows.end if rows is not None else None
        live = self.service.tracker.mark(peer_id)
        if live is not None and live.at <= end_at and (end is None or live.at >= end.at):
            end = live  # not flushed yet
        start = rows.start if rows is not None else None
        # before the retention's horizon the history is gone: excluded, never guessed
        horizon = now - self.service.retention
        if since < horizon and rows is not None:
            start = await self.service.read(HistoryReader.mark_at, peer_id, horizon)
        up = None
        if end_at > since:
            u = uptime(start, max(since, horizon), end, end_at)
            up = u._replace(excluded_seconds=(end_at - since) - u.observed_seconds).as_json()
        transitions = list(rows.transitions) if rows is not None else []
        stored = set(transitions)
        for t in self.service.unflushed(peer_id):  # at most a flush interval's worth
            entry = (t.at, t.state, t.error)
            if since <= t.at <= until and t.state != UNKNOWN and entry not in stored:
                transitions.append(entry)
        transitions.sort(key=lambda t: t[0])
        truncated = len(transitions) > self.max_transitions or (rows is not None and rows.truncated)
        heights = rows.heights if rows is not None else []
        every = max(1, math.ceil(len(heights) / self.max_heights))
        gaps = self.service.gaps(rows.runs) if rows is not None else []
        out = {
            "peer_id": peer_id,
            "since": since,
            "until": until,
            "transitions": [
                {"at": at, "state": state, "error": error}
                for at, state, error in transitions[: self.max_transitions]
            ],
            "heights": [
                {"at": slot * EPOCH, "height": height, "lag": lag}
                for slot, height, lag in heights[::every]
            ],
            "gaps": [{"from": a, "to": b} for a, b in gaps if b > since and a < until],
            "uptime": up,
            "state_at_since": None if start is None else start.state,
            "truncated": truncated,
            "heights_every": every,
        }
        return self.redact(out)

    def _history_csv(self, h: dict[str, Any]) -> Answer:
        events: list[tuple[float, list[Any]]] = []
        pid = h["peer_id"]
        for t in h["transitions"]:
            error = t.get("error") or ""
            row = [pid, t["at"], _utc(t["at"]), "transition", t["state"], error, "", "", ""]
            events.append((t["at"], row))
        for s in h["heights"]:
            lag = "" if s["lag"] is None else s["lag"]
            row = [pid, s["at"], _utc(s["at"]), "height", "", "", s["height"], lag, ""]
            events.append((s["at"], row))
        for g in h["gaps"]:
            row = [pid, g["from"], _utc(g["from"]), "gap", "", "", "", "", g["to"]]
            events.append((g["from"], row))
        events.sort(key=lambda e: e[0])
        header = ["peer_id", "at", "utc", "kind", "state", "error", "height", "lag", "until"]
        return _csv(header, [row for _, row in events])

    def _uptime_csv(self, query: str) -> Answer:
        params = parse_qs(query)
        window = (params.get("window") or ["24h"])[-1]
        if window not in WINDOWS:
            raise ParamError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        rows = []
        for v in self.snapshot().nodes:
            u = self.uptime_of(v.peer_id)[window]
            rows.append(
                [
                    v.peer_id,
                    v.nickname,
                    v.miner_address,
                    window,
                    "" if u["available"] is None else u["available"],
                    "" if u["healthy"] is None else u["healthy"],
                    u.get("excluded_seconds", WINDOWS[window]),
                ]
            )
        header = ["peer_id", "nickname", "miner", "window", "available", "healthy"]
        return _csv([*header, "excluded_seconds"], rows)
