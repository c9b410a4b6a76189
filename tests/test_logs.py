"""Logs an operator can alert on: typed JSON fields, HTTP client request lines at DEBUG,
py-libp2p's dial-path lines demoted on the agent, and a truthful `remote_closed`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from heartbeat.agent.head import Head
from heartbeat.agent.loop import BeatLoop
from heartbeat.agent.targets import Target, parse_target
from heartbeat.common.logs import (
    DemoteFilter,
    JsonFormatter,
    message_fields,
    setup_logging,
    typed_value,
)
from heartbeat.net.compat import log_fold
from heartbeat.net.errors import StreamLost

PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    """The root logger set up by `setup_logging` on a buffer, restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libp2p = logging.getLogger("libp2p")
    propagate = libp2p.propagate
    libp2p.propagate = True  # as the programs' __main__ set it (`import libp2p` turns it off)
    out = io.StringIO()
    try:
        yield out
    finally:
        libp2p.propagate = propagate
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        log_fold.uninstall_agent_demotion()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("-3", -3),
        ("0", 0),
        ("0.25", 0.25),
        ("-1.5e-3", -0.0015),
        ("1e3", 1000.0),
        ("True", True),
        ("true", True),
        ("False", False),
        ("false", False),
        ("None", None),
        ("null", None),
        ("007", "007"),  # a leading zero is an identifier, not a number
        ("3s", "3s"),
        ("1.", "1."),
        ("nan", "nan"),
        ("inf", "inf"),
        ("1e999", "1e999"),  # not finite: kept as written
        ("TRUE", "TRUE"),
        ("", ""),
        ("'a b'", "a b"),
        ('"x"', "x"),
        ("'", "'"),
        ("12D3KooW", "12D3KooW"),
    ],
)
def test_typed_value(text: str, value: object) -> None:
    got = typed_value(text)
    assert got == value and type(got) is type(value)


def test_message_fields_quoted_values_keep_their_blanks() -> None:
    fields = dict(message_fields("x a=1 reason='no such peer' b=True c=/ip4/1.2.3.4 d= e=-2"))
    assert fields == {
        "a": 1,
        "reason": "no such peer",
        "b": True,
        "c": "/ip4/1.2.3.4",
        "d": "",
        "e": -2,
    }


def _json_line(msg: str, *args: object, level: int = logging.INFO) -> dict[str, object]:
    record = logging.LogRecord("heartbeat.agent.loop", level, __file__, 1, msg, args, None)
    out = json.loads(JsonFormatter().format(record))
    assert isinstance(out, dict)
    return out


def test_json_numbers_are_numbers_and_booleans_booleans() -> None:
    obj = _json_line(
        "stream_closed target=%s beats=%d remote_closed=%s lag=%s",
        "/ip4/127.0.0.1/tcp/1/p2p/" + PEER,
        5,
        True,
        None,
    )
    assert obj["event"] == "stream_closed"
    assert obj["beats"] == 5 and obj["remote_closed"] is True and obj["lag"] is None
    assert obj["target"] == "/ip4/127.0.0.1/tcp/1/p2p/" + PEER
    assert obj["level"] == "INFO" and obj["logger"] == "heartbeat.agent.loop"


def test_json_fields_never_override_the_record_keys() -> None:
    obj = _json_line("evt level=3 logger=x time=0 ok=false")
    assert obj["level"] == "INFO" and obj["logger"] == "heartbeat.agent.loop"
    assert obj["ok"] is False


def test_httpx_request_lines_are_debug(root_logging: io.StringIO) -> None:
    setup_logging("text", logging.INFO, root_logging)
    httpx_log = logging.getLogger("httpx")
    httpx_log.info(
        'HTTP Request: %s %s "%s %d %s"', "POST", "http://lotus/rpc/v1", "HTTP/1.1", 200, "OK"
    )
    httpx_log.warning("a warning of httpx stays a warning")
    logging.getLogger("heartbeat.main").info("ours stays")
    text = root_logging.getvalue()
    assert "HTTP Request" not in text
    assert "WARNING httpx a warning of httpx stays a warning" in text
    assert "INFO heartbeat.main ours stays" in text


def test_httpx_request_lines_show_at_debug_level(root_logging: io.StringIO) -> None:
    setup_logging("json", logging.DEBUG, root_logging)
    setup_logging("json", logging.DEBUG, root_logging)  # twice: still one filter, one line
    logging.getLogger("httpx").info("HTTP Request: POST http://lotus/rpc/v1 200")
    lines = [json.loads(line) for line in root_logging.getvalue().splitlines()]
    assert [(o["level"], o["logger"]) for o in lines] == [("DEBUG", "httpx")]


def test_demote_filter_only_turns_its_levels() -> None:
    demote = DemoteFilter(logging.WARNING, logging.ERROR)

    def rec(level: int) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, "m", None, None)

    info, warning, error, critical = (
        rec(logging.INFO),
        rec(logging.WARNING),
        rec(logging.ERROR),
        rec(logging.CRITICAL),
    )
    assert demote.filter(info) and info.levelno == logging.INFO
    assert demote.filter(critical) and critical.levelno == logging.CRITICAL
    demote.filter(warning)
    demote.filter(error)
    assert (warning.levelname, error.levelname) == ("DEBUG", "DEBUG")
    assert demote.demoted == 2


def test_agent_demotion_turns_libp2p_dial_errors_into_debug(root_logging: io.StringIO) -> None:
    setup_logging("text", logging.INFO, root_logging)
    demotion = log_fold.install_agent_demotion()
    fold = log_fold.FoldFilter(burst=1, period=3600.0)
    tcp = logging.getLogger("libp2p.transport.tcp.tcp")
    tcp.addFilter(fold)  # the aggregator's fold, installed after: sees only DEBUG records
    try:
        for _ in range(8):
            tcp.error("Failed to open TCP stream: %s", "all attempts to connect failed")
        logging.getLogger("libp2p.network.swarm").warning("fail to upgrade mux for peer x")
    finally:
        tcp.removeFilter(fold)
    assert root_logging.getvalue() == ""
    assert demotion.demoted == 9 and fold.dropped == 0 and fold.passed == 0
    log_fold.uninstall_agent_demotion()
    tcp.error("Failed to open TCP stream: %s", "refused")  # the control: shown without it
    assert "ERROR libp2p.transport.tcp.tcp Failed to open TCP stream: refused" in (
        root_logging.getvalue()
    )


def test_agent_demotion_of_basic_host_is_new_stream_only(root_logging: io.StringIO) -> None:
    setup_logging("text", logging.INFO, root_logging)
    log_fold.install_agent_demotion()
    host = logging.getLogger("libp2p.host.basic_host")

    def new_stream() -> None:
        host.error("Failed to open stream to peer x")

    def configure() -> None:
        host.warning("Resource manager provided but network service doesn't support it")

    new_stream()
    configure()
    text = root_logging.getvalue()
    assert "Failed to open stream" not in text
    assert "WARNING libp2p.host.basic_host Resource manager" in text


def test_agent_demotion_shows_the_lines_at_debug(root_logging: io.StringIO) -> None:
    setup_logging("text", logging.DEBUG, root_logging)
    log_fold.install_agent_demotion()
    log_fold.install_agent_demotion()  # idempotent: one filter per logger
    logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: refused")
    assert root_logging.getvalue().count("DEBUG libp2p.transport.tcp.tcp Failed to open") == 1
    log_fold.uninstall_agent_demotion()
    assert log_fold.agent_demotion() is None
    logging.getLogger("libp2p.transport.tcp.tcp").error("after")
    assert "ERROR libp2p.transport.tcp.tcp after" in root_logging.getvalue()


class _Stream:
    """A connected stream whose half-close fails (already reset) or whose remote
    never closes."""

    def __init__(self, *, close_fails: bool = False, remote_closes: bool = True) -> None:
        self.close_fails = close_fails
        self.remote_closes = remote_closes

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        if self.close_fails:
            raise StreamLost("StreamReset")

    async def wait_closed(self) -> None:
        if not self.remote_closes:
            await trio.sleep_forever()

    async def reset(self) -> None:
        pass


class _Connector:
    def __init__(self, stream: _Stream) -> None:
        self.stream = stream

    async def connect(self, target: Target) -> _Stream:
        return self.stream


@pytest.mark.parametrize(
    ("stream", "claimed"),
    [
        (_Stream(), "remote_closed=True"),
        (_Stream(close_fails=True), "remote_closed=False"),
        (_Stream(remote_closes=False), "remote_closed=False"),
    ],
)
async def test_remote_closed_is_only_claimed_when_the_remote_closed(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    stream: _Stream,
    claimed: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="heartbeat.agent.loop")
    loop = BeatLoop(
        parse_target(f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}"),
        _Connector(stream),
        lambda: Head(cids=(), height=1),
        jitter=0.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(4)
        loop.stop()
    closed = [m for _, _, m in caplog.record_tuples if m.startswith("stream_closed")]
    assert len(closed) == 1 and closed[0].endswith(claimed), caplog.record_tuples
