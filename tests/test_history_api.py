"""The history routes over a real service and SQLite file (no sockets): parameters, redaction
on a public page, CSV quoting, and the routes left to http.py."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from aggregator.fleet import Fleet
from aggregator.history_api import HistoryApi, ParamError, parse_range
from aggregator.history_service import HistoryService
from aggregator.history_store import HistoryStore
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_010.0
ERROR = 'dial tcp 10.0.0.5:1234: connection refused, "again"'


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (T0 - 86_400, T0)),
        ("since=100", (100.0, T0)),
        ("since=100&until=200.5", (100.0, 200.5)),
        ("until=100000", (100_000 - 86_400.0, 100_000.0)),
        ("since=&until=", (T0 - 86_400, T0)),
    ],
)
def test_parse_range(query: str, expected: tuple[float, float]) -> None:
    assert parse_range(query, T0) == expected


@pytest.mark.parametrize(
    "query", ["since=abc", "until=-1", "since=nan", "since=inf", "since=300&until=200"]
)
def test_parse_range_refuses(query: str) -> None:
    with pytest.raises(ParamError):
        parse_range(query, T0)


async def _api(tmp_path: Path, public: bool, body: Callable[[HistoryApi], Any]) -> None:
    fleet = Fleet()

    def clock() -> float:
        return T0 + trio.current_time()

    service = HistoryService(
        HistoryStore(tmp_path / "state.db"),
        lambda: fleet.snapshot(clock()),
        clock=clock,
        run_sync=inline,
    )
    fleet.on_connect("a", "10.0.0.5", clock())
    fleet.on_beat(
        "a",
        Beat(
            head="{}",
            height=0,
            nickname='n,"quoted"',
            miner_address="",
            source_state=SourceState.UNREACHABLE,
            source_error=ERROR,
        ),
        clock(),
    )
    api = HistoryApi(service, lambda: fleet.snapshot(clock()), public=public)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(5)
        await body(api)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("public", [False, True])
async def test_error_texts_hidden_on_a_public_page(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, public: bool
) -> None:
    async def check(api: HistoryApi) -> None:
        status, ctype, body = await api.route("GET", "/api/v1/nodes/a/history", "")  # type: ignore[misc]
        assert (status, ctype) == (200, b"application/json")
        history = json.loads(body)
        [t] = history["transitions"]
        assert t["state"] == "source_down"
        assert t.get("error") == (None if public else ERROR)
        assert history["heights"] == []  # no head: no heights
        assert history["uptime"]["available"] == 0.0
        status, _, body = await api.route("GET", "/api/v1/nodes/a/history.csv", "")  # type: ignore[misc]
        [row] = list(csv.DictReader(io.StringIO(body.decode())))
        assert row["error"] == ("" if public else ERROR)
        assert ERROR.encode() not in body if public else b'""again""' in body  # RFC 4180

    await _api(tmp_path, public, check)


async def test_routes(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async def check(api: HistoryApi) -> None:
        assert await api.route("GET", "/api/v1/nodes/a", "") is None  # http.py's own
        assert await api.route("GET", "/api/v1/nodes", "") is None
        assert await api.route("GET", "/api/v1/nodes/a/b/history", "") is None
        answer = await api.route("POST", "/api/v1/nodes/a/history", "")
        assert answer is not None and answer[0] == 405
        answer = await api.route("GET", "/api/v1/nodes/zz/history", "")
        assert answer is not None and answer[0] == 404
        answer = await api.route("GET", "/api/v1/uptime.csv", "window=24h")
        assert answer is not None and answer[0] == 200
        table = list(csv.reader(io.StringIO(answer[2].decode())))
        assert table[1][:4] == ["a", 'n,"quoted"', "", "24h"]
        assert float(table[1][4]) == 0.0  # source down: not available
        assert 86_400 - 10 < float(table[1][6]) <= 86_400

    await _api(tmp_path, False, check)


async def test_csv_lists_the_aggregators_gaps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def first(api: HistoryApi) -> None:
        assert api.uptime_of("a")["24h"]["available"] == 0.0  # source down since it came

    await _api(tmp_path, False, first)
    await trio.sleep(100)  # away

    async def second(api: HistoryApi) -> None:
        answer = await api.route("GET", "/api/v1/nodes/a/history.csv", "since=0")
        assert answer is not None and answer[0] == 200
        rows = list(csv.DictReader(io.StringIO(answer[2].decode())))
        [gap] = [r for r in rows if r["kind"] == "gap"]
        assert float(gap["until"]) - float(gap["at"]) == pytest.approx(100)
        assert gap["utc"].endswith("Z")

    await _api(tmp_path, False, second)
