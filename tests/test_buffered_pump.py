"""`Channel.pump`: the connection's reader hands a stream's bytes to a sink in its pass.

Real hosts on loopback, frames written raw beneath a light client's Noise session
(`tests.test_buffered_read`'s helpers): every byte before a FIN or a reset reaches the
sink in order and the pump ends; the pumping task is not woken per frame; a sender of
several windows gets its credit back through a pumped stream; a sink that stops leaves
what comes later buffered, in order, for a read or the next pump; what a sink raises is
raised in the pump's task and the connection goes on serving; and a stream off the
buffered path says so (None) so the caller reads instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from heartbeat.net import compat
from heartbeat.net.compat import buffered_read
from heartbeat.net.streams import Channel
from tests.helpers import eventually
from tests.test_buffered_read import (
    PROTOCOL,
    buffered,  # noqa: F401  (the fixture, for usefixtures)
    data_frame,
    dialed,
    rst_frame,
    send_raw_frames,
    served,
    sid_of,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

FIN = 0x4


def collecting(into: bytearray, stop_at: bytes | None = None) -> Callable[[bytes], bool]:
    """A sink that keeps what it is given; False (stop) once `stop_at` has come."""

    def sink(data: bytes) -> bool:
        into.extend(data)
        return stop_at is None or stop_at not in into

    return sink


class Pumped:
    """A handler that pumps its stream into `got`; `outcome` has what `pump` returned."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.outcome: list[bool | None] = []
        self.done = trio.Event()

    async def __call__(self, stream: Any) -> None:
        self.outcome.append(await Channel(stream).pump(collecting(self.got)))
        self.done.set()


def pumping(streams: list[Any]) -> bool:
    """The handler's stream (recorded in `streams`) has a pump running."""
    return bool(streams) and streams[-1].muxed_stream._fil_sink is not None


class TaskSteps(trio.abc.Instrument):
    """How many times the calling task is scheduled while this is installed."""

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@pytest.mark.usefixtures("buffered")
async def test_every_byte_before_the_fin_reaches_the_sink_without_a_wake_per_frame() -> None:
    frames = [f"beat-{i:04d};".encode() for i in range(300)]
    got = bytearray()
    outcome: list[bool | None] = []
    counted: list[TaskSteps] = []
    served_streams: list[Any] = []
    done = trio.Event()

    def received(n: int) -> Callable[[], bool]:
        return lambda: len(got) >= n

    async def handler(stream: Any) -> None:
        channel = Channel(stream)
        served_streams.append(stream)
        steps = TaskSteps()
        counted.append(steps)
        trio.lowlevel.add_instrument(steps)
        try:
            outcome.append(await channel.pump(collecting(got)))
        finally:
            trio.lowlevel.remove_instrument(steps)
            done.set()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        with trio.fail_after(10):
            await eventually(lambda: pumping(served_streams))  # nothing buffered before
            for i in range(0, len(frames), 6):  # 50 sends, each its own receive
                await send_raw_frames(conn, [data_frame(sid, f) for f in frames[i : i + 6]])
                await eventually(received(len(b"".join(frames[: i + 6]))), interval=0.001)
            await send_raw_frames(conn, [data_frame(sid, b"last;", FIN)])
            await done.wait()
    assert bytes(got) == b"".join(frames) + b"last;"  # every byte, in order
    assert outcome == [True]  # the stream ended
    # 300 frames in 50 receives: the pumping task is scheduled for the end (and its own
    # exits), not once per frame or per receive (a reader's wake).
    [steps] = counted
    assert 0 < steps.steps <= 6, steps.steps


@pytest.mark.usefixtures("buffered")
async def test_a_sender_of_many_windows_gets_its_credit_back_through_a_pump() -> None:
    total = 3 * 256 * 1024  # three default receive windows: credit must come back
    handler = Pumped()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        conn._muxed.streams[sid_of(stream)].send_window = 256 * 1024  # one window, no more
        with trio.fail_after(20):  # py-libp2p's writer gives up after 5 s without credit
            chunk = b"x" * 16384
            for _ in range(total // len(chunk)):
                await stream.write(chunk)
            await stream.close()
            await handler.done.wait()
    assert len(handler.got) == total  # 3 windows through: the pump's credit came back
    assert handler.outcome == [True]


@pytest.mark.usefixtures("buffered")
async def test_a_stopped_sink_leaves_later_bytes_buffered_in_order_for_the_next_pump() -> None:
    first = bytearray()
    second = bytearray()
    outcomes: list[bool | None] = []
    stopped = trio.Event()
    again = trio.Event()
    done = trio.Event()

    served_streams: list[Any] = []

    async def handler(stream: Any) -> None:
        channel = Channel(stream)
        served_streams.append(stream)
        outcomes.append(await channel.pump(collecting(first, stop_at=b"stop;")))
        stopped.set()
        await again.wait()  # meanwhile the rest arrives, buffered
        outcomes.append(await channel.pump(collecting(second)))
        done.set()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        with trio.fail_after(10):
            await eventually(lambda: pumping(served_streams))
            parts = [b"a;", b"stop;", b"b;", b"c;"]
            await send_raw_frames(conn, [data_frame(sid, p) for p in parts])
            await stopped.wait()
            muxed = served_streams[0].muxed_stream
            # b; and c; are read by the connection and kept for the next pump
            await eventually(lambda: bytes(muxed.conn.stream_buffers[sid]) == b"b;c;")
            again.set()
            await eventually(lambda: pumping(served_streams))
            await send_raw_frames(conn, [data_frame(sid, b"d;", FIN)])
            await done.wait()
    assert bytes(first) == b"a;stop;"
    assert bytes(second) == b"b;c;d;"  # nothing lost, nothing out of order
    assert outcomes == [False, True]


@pytest.mark.usefixtures("buffered")
async def test_what_a_sink_raises_is_raised_in_the_pump_and_the_connection_serves_on() -> None:
    raised: list[BaseException] = []
    later = bytearray()
    done = trio.Event()

    def exploding(data: bytes) -> bool:
        raise ZeroDivisionError("sink")

    async def handler(stream: Any) -> None:
        channel = Channel(stream)
        if not raised:
            try:
                await channel.pump(exploding)
            except ZeroDivisionError as exc:
                raised.append(exc)
            await channel.reset()
            return
        await channel.pump(collecting(later))
        done.set()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        with trio.fail_after(10):
            await send_raw_frames(conn, [data_frame(sid_of(stream), b"boom;")])
            await eventually(lambda: raised)
            other = await conn.open_stream(PROTOCOL)  # the same connection
            await other.write(b"still here;")
            await other.close()
            await done.wait()
    assert [type(e) for e in raised] == [ZeroDivisionError]
    assert bytes(later) == b"still here;"


@pytest.mark.usefixtures("buffered")
async def test_a_reset_ends_the_pump_after_the_bytes_before_it() -> None:
    handler = Pumped()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        with trio.fail_after(10):
            frames = [data_frame(sid, b"beat-1;"), data_frame(sid, b"beat-2;"), rst_frame(sid)]
            await send_raw_frames(conn, frames)
            await handler.done.wait()
    assert bytes(handler.got) == b"beat-1;beat-2;"
    assert handler.outcome == [True]


@pytest.fixture
def stock() -> Iterator[None]:
    """py-libp2p's own reader for the test, then as before."""
    before = compat.installed_fixes()
    compat.install_all(compat.CompatOptions(buffered_read=False))
    assert not buffered_read.installed()
    yield
    compat.uninstall_all()
    for fix in compat.FIXES:
        if before[fix.NAME]:
            fix.install()


@pytest.mark.usefixtures("stock")
async def test_a_stream_off_the_buffered_path_cannot_be_pumped_and_is_read() -> None:
    outcome: list[bool | None] = []
    read = bytearray()
    done = trio.Event()

    async def handler(stream: Any) -> None:
        channel = Channel(stream)
        outcome.append(await channel.pump(collecting(bytearray())))
        while data := await channel.read():
            read.extend(data)
        done.set()

    async with dialed(handler) as stream:
        with trio.fail_after(10):
            await stream.write(b"read me;")
            await stream.close()
            await done.wait()
    assert outcome == [None]
    assert bytes(read) == b"read me;"
