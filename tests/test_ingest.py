"""The ingest handler against a fake stream, on trio's virtual clock.

Every test runs twice: the stream read (`Channel.read`) and the stream pumped
(`Channel.pump`: the connection's reader hands the bytes to the ingest's sink).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from aggregator.bus import BeatAccepted, Bus, PeerConnected, PeerDisconnected
from aggregator.errors import FleetFull
from aggregator.ingest import Ingest, IngestSettings
from heartbeat.protocol.wire import Beat, encode_cbor

PEER = "12D3KooWPeerA"
HEAD = "{bafy2bzaceaaaa,bafy2bzacebbbb}"


def beat(height: int = 100, nickname: str = "alpha") -> Beat:
    return Beat(head=HEAD, height=height, nickname=nickname, miner_address="f01234")


class FakeStream:
    """A `Channel`'s shape: bytes in through a channel; EOF when the test closes its side.

    `pump` is `Channel.pump`'s contract when `pumped` (each chunk to the sink as it comes,
    False when the sink stops, True at the end), None otherwise (the read path then).
    """

    pumped = False

    def __init__(self, peer: str = PEER) -> None:
        self.peer_id = peer
        self.remote_ip: str | None = "10.0.0.1"
        self._send, self._receive = trio.open_memory_channel[bytes](100)
        self.closed = False
        self.reset_called = False
        self.reset_at: float | None = None
        self.read_error: BaseException | None = None
        self.muxed_conn = _FakeMuxedConn(peer)

    def feed(self, data: bytes) -> None:
        self._send.send_nowait(data)

    def eof(self) -> None:
        self._send.close()

    async def read(self, n: int | None = None) -> bytes:
        if self.read_error is not None:
            raise self.read_error
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return b""  # a Channel gives b"" at the end

    async def pump(self, sink: Callable[[bytes], bool]) -> bool | None:
        if not self.pumped:
            return None
        while True:
            data = await self.read()
            if not data:
                return True
            if not sink(data):
                return False

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.reset_called = True
        self.reset_at = trio.current_time()

    def get_remote_address(self) -> tuple[str, int]:
        return ("10.0.0.1", 4001)


@pytest.fixture(autouse=True, params=["read", "pump"])
def stream_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(FakeStream, "pumped", request.param == "pump")
    return str(request.param)


class _FakeID:
    def __init__(self, text: str) -> None:
        self.text = text

    def to_base58(self) -> str:
        return self.text


class _FakeMuxedConn:
    def __init__(self, peer: str) -> None:
        self.peer_id = _FakeID(peer)


class Harness:
    def __init__(self, timeout: float | Callable[[str], float] = 30.0, **settings: Any) -> None:
        self.bus = Bus()
        self.events: list[Any] = []
        self.bus.subscribe_sync("test", self.events.append)
        self.disconnected: list[str] = []
        self.ingest = Ingest(
            IngestSettings(**settings),
            self.bus,
            beat_timeout=timeout if callable(timeout) else lambda peer: timeout,
            disconnect_peer=self._disconnect,
            wall_clock=trio.current_time,
        )

    async def _disconnect(self, peer: str) -> None:
        self.disconnected.append(peer)

    def beats(self) -> list[Beat]:
        return [e.beat for e in self.events if isinstance(e, BeatAccepted)]


async def _run(h: Harness, *streams: FakeStream, body: Any) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(h.ingest.run)
        for stream in streams:
            nursery.start_soon(h.ingest.handle_stream, stream)
        await body()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_beats_in_any_split_are_published_and_eof_closes_our_side(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    stream = FakeStream()
    data = b"".join(encode_cbor(beat(h_)) for h_ in range(1, 6))

    async def body() -> None:
        for i in range(0, len(data), 7):
            stream.feed(data[i : i + 7])
            await trio.sleep(0.1)
        stream.eof()
        await trio.testing.wait_all_tasks_blocked()

    await _run(h, stream, body=body)
    assert [b.height for b in h.beats()] == [1, 2, 3, 4, 5]
    assert isinstance(h.events[0], PeerConnected)
    assert h.events[0].remote_addr == "10.0.0.1"
    assert isinstance(h.events[-1], PeerDisconnected)
    assert stream.closed and not stream.reset_called
    c = h.ingest.counters
    assert (c.beats_received, c.beats_accepted, c.streams_open) == (5, 5, 0)


async def test_rejected_beats_are_counted_and_logged_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(timeout=120.0, reject_log_interval=60.0)
    stream = FakeStream()
    bad = b'{"Head":"' + HEAD.encode() + b'","Height":"high","Nickname":"a","MinerAddress":""}\n'

    async def body() -> None:
        for _ in range(3):
            stream.feed(bad)
            await trio.sleep(1)
        await trio.sleep(60)
        stream.feed(bad)
        stream.feed(b'{"Head":"{ bafy2bzaceaaaa }","Height":5,"Nickname":"a","MinerAddress":""}\n')
        await trio.sleep(1)
        stream.eof()

    with caplog.at_level(logging.WARNING, logger="aggregator.ingest"):
        await _run(h, stream, body=body)
    c = h.ingest.counters
    assert c.beats_rejected == {"wrong_type": 4}
    assert c.beats_accepted == 1
    logged = [m for (_, _, m) in caplog.record_tuples if m.startswith("beat_rejected")]
    assert len(logged) == 2
    assert "suppressed=2" in logged[1]
    assert not stream.reset_called


async def test_garbage_resets_the_stream_after_counting_what_came_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    stream = FakeStream()

    async def body() -> None:
        stream.feed(encode_cbor(beat(1)) + b"\xff\xff\xff")

    await _run(h, stream, body=body)
    assert [b.height for b in h.beats()] == [1]
    assert stream.reset_called
    assert sum(h.ingest.counters.decode_errors.values()) == 1
    assert h.disconnected == []


async def test_oversize_beat_is_a_decode_error(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(max_beat_size=64, max_buffer=128)
    stream = FakeStream()

    async def body() -> None:
        stream.feed(encode_cbor(beat(1, nickname="x" * 100)))

    await _run(h, stream, body=body)
    assert stream.reset_called
    assert h.ingest.counters.decode_errors == {"oversize": 1}


@pytest.mark.parametrize("drip", [False, True])
async def test_silent_or_slow_drip_peer_is_cut_at_its_beat_timeout(
    autojump_clock: trio.testing.MockClock, drip: bool
) -> None:
    h = Harness()
    stream = FakeStream()
    payload = encode_cbor(beat(7))
    start = trio.current_time()

    async def body() -> None:
        stream.feed(payload)  # one good beat, then silence or one byte every 5 s
        if drip:
            for byte in payload * 10:
                await trio.sleep(5)
                if stream.reset_called:
                    break
                stream.feed(bytes([byte]))
        while not stream.reset_called:
            await trio.sleep(0.5)

    await _run(h, stream, body=body)
    assert stream.reset_at is not None
    assert stream.reset_at - start == pytest.approx(30.0)
    assert h.ingest.counters.peers_disconnected == {"read_timeout": 1}
    assert h.disconnected == [PEER]
    assert isinstance(h.events[-1], PeerDisconnected)


async def test_rate_limit_drops_then_flooding_disconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(rate_limit=1.0, rate_burst=3, flood_drops=5, flood_window=60.0)
    stream = FakeStream()

    async def body() -> None:
        stream.feed(b"".join(encode_cbor(beat(i)) for i in range(6)))
        await trio.testing.wait_all_tasks_blocked()
        assert h.ingest.counters.beats_rate_limited == 3
        await trio.sleep(2)  # two tokens back
        stream.feed(b"".join(encode_cbor(beat(i)) for i in range(10, 20)))

    await _run(h, stream, body=body)
    c = h.ingest.counters
    assert [b.height for b in h.beats()] == [0, 1, 2, 10, 11]
    # 3 drops, then 2 accepted, then drops 4, 5, 6: the 6th drop disconnects.
    assert c.beats_rate_limited == 6
    assert c.peers_disconnected == {"flooding": 1}
    assert stream.reset_called
    assert h.disconnected == [PEER]


async def test_allowlist_refuses_other_peers(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    h.ingest.set_allowlist(frozenset({"12D3KooWFriend"}))
    stranger, friend = FakeStream(), FakeStream("12D3KooWFriend")

    async def body() -> None:
        stranger.feed(encode_cbor(beat(1)))
        friend.feed(encode_cbor(beat(2)))

    await _run(h, stranger, friend, body=body)
    assert stranger.reset_called and not friend.reset_called
    assert h.disconnected == [PEER]
    assert h.ingest.counters.peers_refused == {"not_allowed": 1}
    assert [b.height for b in h.beats()] == [2]


async def test_streams_per_peer_are_capped(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(max_streams_per_peer=2)
    streams = [FakeStream() for _ in range(3)]

    async def body() -> None:
        await trio.testing.wait_all_tasks_blocked()

    await _run(h, *streams, body=body)
    assert sorted(s.reset_called for s in streams) == [False, False, True]
    assert h.ingest.counters.peers_refused == {"too_many_streams": 1}
    # One peer, two streams: one connect event (and one disconnect at cancellation).
    assert sum(isinstance(e, PeerConnected) for e in h.events) == 1
    assert sum(isinstance(e, PeerDisconnected) for e in h.events) == 1


async def test_nothing_escapes_the_handler(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    broken = FakeStream()
    broken.read_error = RuntimeError("library bug")

    def explode(event: Any) -> None:
        if isinstance(event, BeatAccepted):
            raise KeyError("consumer bug")

    h.bus.subscribe_sync("explode", explode)
    buggy = FakeStream("12D3KooWOther")

    async def body() -> None:
        buggy.feed(encode_cbor(beat(1)))

    await _run(h, broken, buggy, body=body)
    assert broken.reset_called and buggy.reset_called
    assert h.ingest.counters.handler_errors == 2
    assert h.ingest.counters.streams_open == 0


async def test_fleet_full_is_a_refusal(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()

    def full(event: Any) -> None:
        if isinstance(event, PeerConnected):
            raise FleetFull(event.peer_id, 1)

    h.bus.subscribe_sync("fleet", full)
    stream = FakeStream()

    async def body() -> None:
        stream.feed(encode_cbor(beat(1)))

    await _run(h, stream, body=body)
    assert stream.reset_called
    assert h.ingest.counters.peers_refused == {"fleet_full": 1}
    assert h.disconnected == [PEER]


async def test_cancellation_is_not_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    stream = FakeStream()
    async with trio.open_nursery() as nursery:
        await nursery.start(h.ingest.run)
        with trio.move_on_after(5) as scope:
            await h.ingest.handle_stream(stream)
        nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert h.ingest.counters.handler_errors == 0
    assert isinstance(h.events[-1], PeerDisconnected)


async def test_each_completed_beat_moves_the_read_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    stream = FakeStream()
    start = trio.current_time()

    async def body() -> None:
        for i in range(3):  # beats at 0, 20 and 40 s, then silence: cut at 70 s
            stream.feed(encode_cbor(beat(i)))
            await trio.sleep(20)
        while not stream.reset_called:
            await trio.sleep(0.5)

    await _run(h, stream, body=body)
    assert stream.reset_at is not None
    assert stream.reset_at - start == pytest.approx(70.0)
    assert h.ingest.counters.peers_disconnected == {"read_timeout": 1}
    assert [b.height for b in h.beats()] == [0, 1, 2]


async def test_a_beat_timeout_that_shrinks_takes_effect_from_the_next_beat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The node's expected interval fell (its timeout with it): the deadline the next
    beat sets is the shorter one, not the one armed before it (the pumped path arms
    its scope lazily, and must arm it sooner here)."""
    timeouts = [30.0]
    h = Harness(timeout=lambda peer: timeouts[0])
    stream = FakeStream()
    start = trio.current_time()

    async def body() -> None:
        stream.feed(encode_cbor(beat(1)))
        await trio.sleep(10)
        timeouts[0] = 5.0
        stream.feed(encode_cbor(beat(2)))  # at 10 s: cut at 15 s, not at 40
        while not stream.reset_called:
            await trio.sleep(0.5)

    await _run(h, stream, body=body)
    assert stream.reset_at is not None
    assert stream.reset_at - start == pytest.approx(15.0)
    assert h.ingest.counters.peers_disconnected == {"read_timeout": 1}


async def test_waiting_on_a_full_subscriber_does_not_count_against_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    slow = h.bus.subscribe_required("store", capacity=1)
    stream = FakeStream()
    start = trio.current_time()
    taken: list[float] = []

    async def body() -> None:
        stream.feed(b"".join(encode_cbor(beat(i)) for i in range(3)))
        await trio.sleep(45)  # the subscriber takes nothing for longer than the timeout
        with trio.move_on_after(100):  # bounded: a cut stream would leave them unsent
            for _ in range(4):  # PeerConnected and the three beats
                await slow.receive()
                taken.append(trio.current_time() - start)
            while not stream.reset_called:
                await trio.sleep(0.5)

    await _run(h, stream, body=body)
    assert taken == [45.0, 45.0, 45.0, 45.0]
    assert stream.reset_at is not None
    # Cut 30 s after the wait ended, not 30 s after the beats arrived.
    assert stream.reset_at - start == pytest.approx(75.0)
    assert h.ingest.counters.peers_disconnected == {"read_timeout": 1}
    assert h.bus.backpressure_seconds == pytest.approx(45.0)
