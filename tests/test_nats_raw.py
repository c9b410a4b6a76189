"""The bridge's raw delivery (aggregator/scaleout/bridge.py `_RawClient`, `_RawParser`) reads
the NATS protocol exactly as nats-py's own parser does, whatever the reads' boundaries, and
what it reads of a message's bytes (aggregator/scaleout/natswire.py) is what nats-py reads.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.protocol.parser import Parser

from aggregator.scaleout import bridge
from aggregator.scaleout.natsconf import NatsCompatError
from aggregator.scaleout.natswire import drop_own, raw_msg_id, raw_status, raw_stream_msg

RAW_SIDS = (1, 2)


class PingPong:
    """PINGs and PONGs recorded in `got` among the messages."""

    got: list[Any]

    async def _process_ping(self) -> None:
        self.got.append("PING")

    async def _process_pong(self) -> None:
        self.got.append("PONG")


class Recording(PingPong):
    """What nats-py's stock parser hands its client."""

    def __init__(self) -> None:
        self.got = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.got.append((sid, subject, reply, data, headers))


class RecordingRaw(PingPong, bridge._RawClient):
    """The raw client, its stock path recorded the same way (no connection needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.got = []
        self.via_stock = 0  # raw subscriptions' messages that the stock parse cut
        for sid in RAW_SIDS:
            self._raw[sid] = self._handler(sid)

    def _handler(self, sid: int) -> Any:
        def handle(subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
            self.got.append((sid, subject, reply, data, hdr))

        return handle

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid in self._raw:
            self.via_stock += 1
            await super()._process_msg(sid, subject, reply, data, headers)
        else:
            self.got.append((sid, subject, reply, data, headers))


def frame(sid: int, subject: bytes, reply: bytes, hdr: bytes | None, data: bytes) -> bytes:
    args = b" ".join(x for x in (subject, b"%d" % sid, reply) if x)
    if hdr is None:
        return b"MSG %s %d\r\n%s\r\n" % (args, len(data), data)
    return b"HMSG %s %d %d\r\n%s%s\r\n" % (args, len(hdr), len(hdr) + len(data), hdr, data)


tokens = st.text("abcXYZ019_-$*>", min_size=1, max_size=12).map(str.encode)
headers = st.one_of(
    st.none(),
    st.just(b"NATS/1.0 404 No Messages\r\n\r\n"),
    st.builds(
        lambda v: b"NATS/1.0\r\nNats-Msg-Id: " + v + b"\r\nX: y\r\n\r\n",
        tokens,
    ),
)
frames = st.one_of(
    st.builds(
        frame,
        st.sampled_from((1, 2, 3)),
        st.builds(lambda *t: b".".join(t), tokens, tokens),
        st.one_of(st.just(b""), tokens),
        headers,
        st.binary(max_size=300),
    ),
    st.sampled_from((b"PING\r\n", b"PONG\r\n", b"+OK\r\n")),
)


def run_parse(parser: Parser, chunks: list[bytes]) -> None:
    async def feed() -> None:
        for chunk in chunks:
            await parser.parse(chunk)

    asyncio.run(feed())


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=25), st.lists(st.integers(0, 10_000), max_size=12))
def test_the_raw_parser_reads_what_the_stock_parser_reads_at_any_read_boundaries(
    stream_frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(stream_frames)
    stock = Recording()
    run_parse(Parser(stock), [stream])
    raw = RecordingRaw()
    run_parse(raw._ps, chunked(stream, cuts))
    assert raw.got == stock.got
    assert raw.stats["in_msgs"] == sum(
        1 for g in raw.got if g != "PING" and g != "PONG" and g[0] in RAW_SIDS
    )


def test_a_frame_split_anywhere_is_delivered_once_and_whole() -> None:
    one = frame(
        1,
        b"fil.heartbeat.n.beat.p",
        b"$JS.ACK.S.c.1.7.7.1700000000000000000.0",
        b"NATS/1.0\r\nNats-Msg-Id: a:p:1\r\n\r\n",
        b"payload",
    )
    for cut in range(len(one) + 1):
        raw = RecordingRaw()
        run_parse(raw._ps, [one[:cut], one[cut:], one])
        assert raw.got == [raw.got[0], raw.got[0]] and raw.got[0][3] == b"payload", cut


def test_complete_frames_of_raw_subscriptions_skip_the_stock_parse() -> None:
    hdr = b"NATS/1.0\r\nNats-Msg-Id: a:p:1\r\n\r\n"
    burst = b"".join(
        frame(1 + i % 2, b"fil.heartbeat.n.beat.p%d" % i, b"$JS.ACK.S.c.1.%d.1.1.0" % i, hdr, b"x")
        if i % 3
        else frame(1, b"_INBOX.a.%d" % i, b"", None, b'{"stream":"S", "seq":1}')
        for i in range(50)
    )
    raw = RecordingRaw()
    run_parse(raw._ps, [burst, burst[:-7], burst[-7:] + b"PING\r\n" + burst])
    assert len(raw.got) == 151 and raw.got[100] == "PING"
    # only the frame the read ended inside took the stock path
    assert raw.via_stock == 1


def test_a_handler_that_raises_is_counted_and_the_next_message_still_arrives() -> None:
    raw = RecordingRaw()

    def broken(subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
        raise RuntimeError("a bug")

    raw._raw[1] = broken
    run_parse(raw._ps, [frame(1, b"a", b"", None, b"x") + frame(2, b"b", b"", None, b"y")])
    assert raw.raw_handler_errors == 1
    assert raw.got == [(2, b"b", b"", b"y", None)]


def test_what_is_read_of_a_raw_message_is_what_nats_py_reads_of_it() -> None:
    reply = b"$JS.ACK.FIL_HEARTBEAT.c1.2.917.900.1700000000123456789.41"
    hdr = b"NATS/1.0\r\nNats-Msg-Id: agg-a/12D:peer:17\r\nNats-Expected-Stream: S\r\n\r\n"
    msg = Msg(
        None,  # type: ignore[arg-type]
        subject="fil.heartbeat.n.beat.peer",
        reply=reply.decode(),
        data=b"d",
        headers={"Nats-Msg-Id": "agg-a/12D:peer:17"},
    )
    got = raw_stream_msg((b"fil.heartbeat.n.beat.peer", reply, b"d", hdr))
    meta = msg.metadata
    assert got.subject == msg.subject and got.data == msg.data
    assert got.msg_id == (msg.headers or {})["Nats-Msg-Id"]
    assert got.seq == meta.sequence.stream and got.delivered == meta.num_delivered
    assert meta.timestamp is not None
    assert got.timestamp == pytest.approx(meta.timestamp.timestamp(), abs=1e-6)
    # the form with a domain and an account hash
    v2 = b"$JS.ACK.dom.ACCHASH.FIL_HEARTBEAT.c1.3.918.901.1700000000123456789.40.rnd"
    m2 = Msg(None, subject="s", reply=v2.decode(), data=b"")  # type: ignore[arg-type]
    got2 = raw_stream_msg((b"s", v2, b"", None))
    assert (got2.seq, got2.delivered) == (m2.metadata.sequence.stream, m2.metadata.num_delivered)
    assert got2.msg_id is None
    with pytest.raises(ValueError, match="not a JetStream delivery"):
        raw_stream_msg((b"s", b"_INBOX.x.1", b"", None))
    assert raw_status(b"NATS/1.0 408 Request Timeout\r\n\r\n") == ("408", "Request Timeout")
    assert raw_status(hdr) is None and raw_status(None) is None
    assert raw_msg_id(b"NATS/1.0\r\nNats-Msg-Id:  x:y \r\n\r\n") == "x:y"


def test_own_beats_are_dropped_by_their_msg_id_and_the_last_ones_store_time_told() -> None:
    def delivery(msg_id: str, ns: int) -> Any:
        hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + b"\r\n\r\n"
        return (b"s", b"$JS.ACK.S.c.1.%d.1.%d.0" % (ns, ns), b"", hdr)

    msgs = [
        delivery("me:p:1", 10**9),
        delivery("other:p:1", 2 * 10**9),
        delivery("me:p:2", 3 * 10**9),
        (b"s", b"$JS.ACK.S.c.1.4.4.4.0", b"", None),
    ]
    told: list[tuple[int, float]] = []
    kept = drop_own(msgs, "me:", lambda n, at: told.append((n, at)))
    assert kept == [msgs[1], msgs[3]]
    assert told == [(2, 3.0)]


def test_the_raw_delivery_refuses_another_nats_py(monkeypatch: pytest.MonkeyPatch) -> None:
    bridge.verify_nats()  # the recorded one is what is installed
    monkeypatch.setattr(bridge, "NATS_PY", "2.15.0")
    with pytest.raises(NatsCompatError, match=r"written for nats-py==2\.15\.0"):
        bridge.verify_nats()
    monkeypatch.setattr(bridge, "NATS_PY", importlib.metadata.version("nats-py"))
    monkeypatch.setitem(bridge.NATS_FILES, "nats.protocol.parser", "0" * 64)
    with pytest.raises(NatsCompatError, match="is not the recorded"):
        bridge.verify_nats()
