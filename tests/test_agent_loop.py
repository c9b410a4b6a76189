"""The beat loop under trio's MockClock with a fake connector: exact virtual times."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytest
import trio
import trio.testing

from heartbeat.agent.head import Head
from heartbeat.agent.loop import Agent, BeatLoop
from heartbeat.agent.targets import Target, parse_target
from heartbeat.net.errors import StreamLost
from heartbeat.protocol.wire import Beat, BeatDecoder
from heartbeat.version import AGENT_VERSION

PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
CID = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
HEAD = Head(cids=(CID,), height=1234, timestamp=1_700_000_000, genesis_cid=None)
AGENT_LOGGER = "heartbeat.agent.loop"


def target(port: int = 9081, **kw: float) -> Target:
    base = parse_target(f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}")
    return Target(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **kw})


class FakeStream:
    def __init__(self, write_delay: float = 0.0) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.write_delay = write_delay
        self.stall_at: int | None = None  # index of the write that never completes
        self.fail_at: int | None = None
        self.closed = False
        self.was_reset = False
        self.remote_closed = trio.Event()

    async def write(self, data: bytes) -> None:
        start = trio.current_time()
        if self.stall_at is not None and len(self.writes) == self.stall_at:
            await trio.sleep_forever()
        if self.fail_at is not None and len(self.writes) == self.fail_at:
            raise StreamLost("StreamReset")
        await trio.sleep(self.write_delay)
        self.writes.append((start, data))

    async def close(self) -> None:
        self.closed = True
        self.remote_closed.set()

    async def wait_closed(self) -> None:
        await self.remote_closed.wait()

    async def reset(self) -> None:
        self.was_reset = True


class FakeConnector:
    """Refuses dials while `down(now)` says so; `hang` makes refused dials block instead."""

    def __init__(
        self,
        down: Callable[[float], bool] = lambda now: False,
        *,
        hang: bool = False,
        write_delay: float = 0.0,
        reset_soon: Callable[[float], bool] = lambda now: False,
    ) -> None:
        self.down = down
        self.reset_soon = reset_soon  # the stream opened now fails at its second write
        self.hang = hang
        self.write_delay = write_delay
        self.attempts: list[float] = []
        self.streams: list[FakeStream] = []
        self.t0 = trio.current_time()

    async def connect(self, target: Target) -> FakeStream:
        now = trio.current_time() - self.t0
        self.attempts.append(now)
        if self.down(now):
            if self.hang:
                await trio.sleep_forever()
            raise ConnectionRefusedError("connection refused")
        stream = FakeStream(self.write_delay)
        if self.reset_soon(now):
            stream.fail_at = 1
        self.streams.append(stream)
        return stream


def rel(times: list[float], t0: float) -> list[float]:
    return [round(t - t0, 6) for t in times]


def loop_for(
    connector: FakeConnector, latest: Callable[[], Head | None] = lambda: HEAD, **kw: object
) -> BeatLoop:
    options: dict[str, object] = {"jitter": 0.0, "nickname": "alpha", "miner_address": "f01234"}
    options.update(kw)
    tgt = options.pop("target", None) or target()
    return BeatLoop(tgt, connector, latest, **options)  # type: ignore[arg-type]


async def run_for(loop: BeatLoop, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_thirty_minute_outage_escalates_then_recovers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector(lambda now: now < 1800)
    loop = loop_for(connector)
    # Recovery is logged once the new stream has lived EARLY_DEATH_PERIODS beat periods.
    await run_for(loop, 1809.5)

    assert connector.attempts == [10.0 * i for i in range(181)]
    records = [(lvl, msg) for name, lvl, msg in caplog.record_tuples if name == AGENT_LOGGER]
    levels = [lvl for lvl, _ in records]
    assert levels == (
        [logging.WARNING]
        + [logging.DEBUG] * 59
        + [logging.ERROR]
        + [logging.DEBUG] * 59
        + [logging.ERROR]
        + [logging.DEBUG] * 59
        + [logging.INFO]
    )
    assert records[0][1].startswith(f"dial_failed target={loop.target.addr} down_for=0s attempts=1")
    assert "ConnectionRefusedError" in records[0][1]
    errors = [msg for lvl, msg in records if lvl == logging.ERROR]
    assert "down_for=10m0s attempts=61" in errors[0]
    assert "down_for=20m0s attempts=121" in errors[1]
    assert records[-1][1] == (
        f"reconnected target={loop.target.addr} down for 30m0s after 180 failed attempts"
    )
    # Connected at 1800: beats at once and every 3 s.
    writes = rel([t for t, _ in connector.streams[0].writes], connector.t0)
    assert writes == [1800.0, 1803.0, 1806.0, 1809.0]
    assert loop.stats.dial_attempts == 181
    assert loop.stats.dial_failures == 180


async def test_error_log_period_is_configurable(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector(lambda now: True)
    await run_for(loop_for(connector, error_log_period=60.0), 185)
    errors = [
        msg
        for name, lvl, msg in caplog.record_tuples
        if name == AGENT_LOGGER and lvl == logging.ERROR
    ]
    assert len(errors) == 3
    assert "down_for=1m0s" in errors[0] and "down_for=3m0s" in errors[2]


async def test_reconnect_jitter_stays_within_twenty_percent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connector = FakeConnector(lambda now: True)
    rng = random.Random(7)
    await run_for(loop_for(connector, jitter=0.2, rand=rng.random), 1000)
    gaps = [b - a for a, b in zip(connector.attempts, connector.attempts[1:], strict=False)]
    assert len(gaps) > 80
    assert all(8.0 <= gap <= 12.0 for gap in gaps)
    assert max(gaps) - min(gaps) > 2.0  # really spread, not a fixed period
    # The extremes of the random number map to the bounds exactly.
    low = FakeConnector(lambda now: True)
    await run_for(loop_for(low, jitter=0.2, rand=lambda: 0.0), 25)
    assert low.attempts == [0.0, 8.0, 16.0, 24.0]


async def test_beats_are_drift_free(autojump_clock: trio.testing.MockClock) -> None:
    connector = FakeConnector(write_delay=0.4)  # each write takes 0.4 s
    loop = loop_for(connector)
    await run_for(loop, 10)
    # On the grid, not 0, 3.4, 6.8, ...
    assert rel([t for t, _ in connector.streams[0].writes], connector.t0) == [0.0, 3.0, 6.0, 9.0]
    assert loop.stats.beats_sent == 4


async def test_slow_write_skips_missed_ticks(autojump_clock: trio.testing.MockClock) -> None:
    connector = FakeConnector()
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(4)  # beats at 0 and 3 done
        connector.streams[0].write_delay = 4.0  # the beat at 6 ends at 10
        await trio.sleep(3)
        connector.streams[0].write_delay = 0.0
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    times = rel([t for t, _ in connector.streams[0].writes], connector.t0)
    assert times == [0.0, 3.0, 6.0, 12.0, 15.0]


async def test_beats_before_the_first_head_say_no_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The agent beats from its first connection: Head "{}" and Height 0 until a head is
    # known (an old loop sent nothing until Lotus answered).
    head: list[Head | None] = [None]
    connector = FakeConnector()
    loop = loop_for(connector, latest=lambda: head[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(7)
        assert loop.stats.beats_sent == 3
        head[0] = HEAD
        await trio.sleep(6)
        nursery.cancel_scope.cancel()
    writes = connector.streams[0].writes
    assert rel([t for t, _ in writes], connector.t0) == [0.0, 3.0, 6.0, 9.0, 12.0]
    beats = BeatDecoder().feed(b"".join(d for _, d in writes))
    assert all(isinstance(b, Beat) for b in beats)
    shown = [(b.head, b.height) for b in beats if isinstance(b, Beat)]
    assert shown == [("{}", 0)] * 3 + [("{" + CID + "}", 1234)] * 2


async def test_stalled_write_resets_the_stream_and_redials(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector()
    loop = loop_for(connector, write_timeout=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(1)
        # The beat at 12 never completes (the stream has lived its early periods by then).
        connector.streams[0].stall_at = 4
        await trio.sleep(17)
        nursery.cancel_scope.cancel()
    first, second = connector.streams
    assert rel([t for t, _ in first.writes], connector.t0) == [0.0, 3.0, 6.0, 9.0]
    assert first.was_reset
    assert connector.attempts == [0.0, 17.0]  # stalled 12 → 17, then redialled at once
    assert rel([t for t, _ in second.writes], connector.t0) == [17.0]
    warnings = [
        m for n, lvl, m in caplog.record_tuples if n == AGENT_LOGGER and lvl == logging.WARNING
    ]
    assert warnings == [f"disconnected target={loop.target.addr} beats=4 err=write_stalled_5s"]


async def test_failed_write_dates_the_outage_from_the_disconnect(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector(lambda now: now > 11)
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(1)
        connector.streams[0].fail_at = 4  # the write at 12 fails
        await trio.sleep(22)
        nursery.cancel_scope.cancel()
    assert connector.attempts == [0.0, 12.0, 22.0]
    msgs = [m for n, _, m in caplog.record_tuples if n == AGENT_LOGGER]
    assert msgs[1].startswith(f"disconnected target={loop.target.addr} beats=4 err=StreamReset")
    assert "down_for=0s attempts=1" in msgs[2]
    assert "down_for=10s attempts=2" in msgs[3]


async def test_beat_content_cbor_and_json(autojump_clock: trio.testing.MockClock) -> None:
    for encoding in ("cbor", "json"):
        connector = FakeConnector()
        await run_for(loop_for(connector, encoding=encoding), 4)
        data = b"".join(d for _, d in connector.streams[0].writes)
        assert data.startswith(b"{") == (encoding == "json")
        beats = BeatDecoder().feed(data)
        expected = Beat(
            head="{" + CID + "}",
            height=1234,
            nickname="alpha",
            miner_address="f01234",
            head_timestamp=1_700_000_000,
            version=AGENT_VERSION,
        )
        assert beats == [expected, expected]


async def test_stop_half_closes_and_returns(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOGGER)
    connector = FakeConnector()
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(4)
        loop.stop()
    stream = connector.streams[0]
    assert stream.closed and not stream.was_reset
    assert trio.current_time() - connector.t0 == 4.0
    assert caplog.record_tuples[-1] == (
        AGENT_LOGGER,
        logging.INFO,
        f"stream_closed target={loop.target.addr} beats=2 remote_closed=True",
    )


async def test_stop_while_dialing_is_immediate(autojump_clock: trio.testing.MockClock) -> None:
    connector = FakeConnector(lambda now: True, hang=True)
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(3)
        loop.stop()
    assert trio.current_time() - connector.t0 == 3.0


async def test_a_dead_target_never_delays_a_live_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dead = FakeConnector(lambda now: True, hang=True)  # every dial hangs until its deadline
    live = FakeConnector()
    dead_loop = loop_for(dead, target=target(1), dial_timeout=10.0)
    live_loop = loop_for(live, target=target(2, beat_period=1.0))
    agent = Agent([dead_loop, live_loop])
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await trio.sleep(30.5)
        assert await agent.stop(grace=1.0)
    assert rel([t for t, _ in live.streams[0].writes], live.t0) == [float(i) for i in range(31)]
    assert dead.attempts == [0.0, 20.0]  # 10 s dial deadline + 10 s reconnect period
    assert dead_loop.stats.dial_failures == 2


async def test_stream_reset_soon_after_opening_is_a_failed_attempt(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A receiver that accepts every dial, then resets the stream at once (refused peer,
    # full fleet) until 700 s; the stream opened after that lives.
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector(reset_soon=lambda now: now < 700)
    loop = loop_for(connector)
    await run_for(loop, 712)

    # dial, beat, the beat at +3 fails, the reconnect period (10 s), dial again: every 13 s,
    # not every beat period.
    assert connector.attempts == [13.0 * k for k in range(55)]
    assert loop.stats.streams_died_early == 54
    assert loop.stats.dial_failures == 0
    records = [(lvl, msg) for name, lvl, msg in caplog.record_tuples if name == AGENT_LOGGER]
    assert records[0] == (logging.INFO, f"connected target={loop.target.addr}")
    died = records[1:-1]
    assert all(msg.startswith("stream_died_early ") for _, msg in died)
    assert [lvl for lvl, _ in died] == (
        [logging.WARNING] + [logging.DEBUG] * 46 + [logging.ERROR] + [logging.DEBUG] * 6
    )
    assert "lived=3s down_for=0s attempts=1 err=StreamReset" in died[0][1]
    assert "down_for=10m11s attempts=48" in died[47][1]
    # Recovery once the stream opened at 702 has lived three beat periods (at 711).
    assert records[-1] == (
        logging.INFO,
        f"reconnected target={loop.target.addr} down for 11m39s after 54 failed attempts",
    )
    assert rel([t for t, _ in connector.streams[-1].writes], connector.t0) == [
        702.0,
        705.0,
        708.0,
        711.0,
    ]


async def test_a_stream_that_lived_its_early_periods_redials_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOGGER)
    connector = FakeConnector()
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(1)
        connector.streams[0].fail_at = 3  # the write at 9: three periods lived
        await trio.sleep(9)
        nursery.cancel_scope.cancel()
    assert connector.attempts == [0.0, 9.0]
    assert loop.stats.streams_died_early == 0
    levels = [lvl for name, lvl, _ in caplog.record_tuples if name == AGENT_LOGGER]
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]
