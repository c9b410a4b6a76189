"""The network layer's error boundary (`heartbeat.net.streams`), over real hosts on loopback.

Whatever py-libp2p raises, the programs see `DialFailed` (a dial, an upgrade, a protocol the
remote does not speak) or `StreamLost` (a write or close on a stream the remote reset), and
`read` gives ``b""`` at the end however the stream ended: never a libp2p type. Every test
runs twice: on py-libp2p's stock code and with every compat fix in (the aggregator's
configuration), where `NetStream.read` takes its state lock only when it is held.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from heartbeat.net import compat, p2p
from heartbeat.net.compat import net_stream_read
from heartbeat.net.errors import DialFailed, NetError, StreamLost
from heartbeat.net.streams import Channel, StreamDialer, serve_protocols
from tests.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROTOCOL = "fil/heartbeat-test/1.0.0"


@pytest.fixture(autouse=True, params=["stock", "fixed"])
def fixes(request: pytest.FixtureRequest) -> Iterator[bool]:
    """py-libp2p's stock code, or every fix in; then the fixes as they were."""
    before = compat.installed_fixes()
    compat.uninstall_all()
    if request.param == "fixed":
        compat.install_all(compat.CompatOptions())
    yield request.param == "fixed"
    compat.uninstall_all()
    for fix in compat.FIXES:
        if before[fix.NAME]:
            fix.install()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _server(handler: object) -> AsyncIterator[str]:
    key = p2p.new_identity()
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(16)) as srv:
        serve_protocols(srv, [PROTOCOL], handler)  # type: ignore[arg-type]
        [listen] = p2p.listen_multiaddrs(srv)
        yield f"{listen}/p2p/{p2p.peer_id_of(key)}"


@asynccontextmanager
async def _dialer() -> AsyncIterator[StreamDialer]:
    async with p2p.running_host(p2p.new_identity(), None) as host:
        yield StreamDialer(host, PROTOCOL)


async def test_dial_to_nothing_is_dial_failed() -> None:
    nobody = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{p2p.peer_id_of(p2p.new_identity())}"
    async with _dialer() as dialer:
        with pytest.raises(DialFailed) as caught:
            await dialer.open(nobody)
    assert isinstance(caught.value, NetError)
    assert " " not in str(caught.value)  # one token in key=value log lines


async def test_bad_address_is_dial_failed() -> None:
    async with _dialer() as dialer:
        with pytest.raises(DialFailed, match="bad_address"):
            await dialer.open("/ip4/127.0.0.1/tcp/1")  # no /p2p/<id>


async def test_protocol_not_spoken_is_dial_failed() -> None:
    async def handler(channel: Channel) -> None:
        await channel.read(10)

    async with _server(handler) as addr, _dialer() as dialer:
        other = StreamDialer(dialer._host, "fil/other/1.0.0")
        with pytest.raises(DialFailed):
            await other.open(addr)
        # the same host dials the right protocol afterwards: no state left behind
        channel = await dialer.open(addr)
        await channel.reset()


async def test_stream_reset_by_the_remote_is_stream_lost_and_read_ends() -> None:
    seen: list[tuple[str, str | None, bytes]] = []
    was_reset = trio.Event()

    async def handler(channel: Channel) -> None:
        seen.append((channel.peer_id, channel.remote_ip, await channel.read(5)))
        await channel.reset()
        was_reset.set()
        assert await channel.read(5) == b""  # read after our own reset: the end, no raise
        await channel.reset()  # twice: still quiet

    async with _server(handler) as addr, _dialer() as dialer:
        channel = await dialer.open(addr)
        await channel.write(b"hello")
        with trio.fail_after(10):
            await was_reset.wait()
        assert seen[0][2] == b"hello" and seen[0][1] == "127.0.0.1"
        assert seen[0][0] != channel.peer_id  # the server sees the dialer's id

        async def lost() -> bool:  # the reset reaches us within a few writes
            try:
                await channel.write(b"x" * 1024)
            except StreamLost:
                return True
            return False

        assert await eventually(lost, timeout=10)
        assert await channel.read(10) == b""
        await channel.reset()


async def test_clean_close_reads_as_the_end() -> None:
    got: list[bytes] = []

    async def handler(channel: Channel) -> None:
        while data := await channel.read(1024):
            got.append(data)
        await channel.close()

    async with _server(handler) as addr, _dialer() as dialer:
        channel = await dialer.open(addr)
        await channel.write(b"one")
        await channel.close()
        with trio.fail_after(10):
            await channel.wait_closed()
    assert b"".join(got) == b"one"


def _state(channel: Channel) -> str:
    return str(channel._stream._state.name)  # type: ignore[attr-defined]


async def test_the_end_leaves_the_stream_half_closed_for_reading() -> None:
    states: list[str] = []
    done = trio.Event()

    async def handler(channel: Channel) -> None:
        states.append(_state(channel))
        while await channel.read(1024):
            pass
        states.append(_state(channel))
        assert await channel.read(1024) == b""  # again: still the end
        await channel.write(b"still writable")  # CLOSE_READ: the write side is open
        await channel.close()
        done.set()

    async with _server(handler) as addr, _dialer() as dialer:
        channel = await dialer.open(addr)
        await channel.write(b"one")
        await channel.close()
        with trio.fail_after(10):
            assert await channel.read(1024) == b"still writable"
            await done.wait()
    assert states == ["OPEN", "CLOSE_READ"]


async def _buffered(channel: Channel) -> None:
    """Until the stream's muxer holds unread bytes for it."""
    muxed: Any = channel._stream.muxed_stream  # type: ignore[attr-defined]
    await eventually(lambda: muxed.conn.stream_buffers.get(muxed.stream_id))


class _Yields(trio.abc.Instrument):
    """How many times one task gave the scheduler its turn (was rescheduled)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_a_read_of_buffered_bytes_switches_no_task_with_the_fix(fixes: bool) -> None:
    """py-libp2p's `NetStream.read` enters its free state lock, a checkpoint: the reader
    gives up its turn. With the fix a read of bytes already buffered returns in the
    reader's turn; the fix alone taken out, the switch is back."""
    yields: list[int] = []
    rounds = [b"second", b"third"] if fixes else [b"second"]
    done = trio.Event()

    async def handler(channel: Channel) -> None:
        assert await channel.read(1024) == b"first"
        for want in rounds:
            if want == b"third":
                net_stream_read.uninstall()  # the buffered reader stays in
            await _buffered(channel)
            counter = _Yields(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(counter)
            try:
                assert await channel.read(1024) == want
            finally:
                trio.lowlevel.remove_instrument(counter)
            yields.append(counter.count)
        done.set()

    async with _server(handler) as addr, _dialer() as dialer:
        channel = await dialer.open(addr)
        await channel.write(b"first")
        for want in rounds:
            await trio.sleep(0.2)  # one read each, not one for all
            await channel.write(want)
        with trio.fail_after(10):
            await done.wait()
        await channel.reset()
    if fixes:
        assert yields == [0, 1]  # the free lock's checkpoint, and nothing else
    else:
        assert yields[0] >= 1


async def test_a_read_waits_for_a_held_state_lock_and_sees_the_state_left(
    fixes: bool,
) -> None:
    """The lock held (a state change under way): the read waits for it, then refuses a
    stream the holder left reset, as py-libp2p's read does: the channel's end."""
    seen: list[object] = []
    done = trio.Event()

    async def handler(channel: Channel) -> None:
        from libp2p.network.stream.net_stream import StreamState

        stream: Any = channel._stream
        await _buffered(channel)  # bytes are there: only the lock can hold the read
        release = trio.Event()

        async def holder(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with stream._state_lock:
                task_status.started()
                await release.wait()
                stream._state = StreamState.RESET

        async def reader() -> None:
            seen.append(await channel.read(1024))

        async with trio.open_nursery() as nursery:
            await nursery.start(holder)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            seen.append("waiting" if not seen else "read")
            release.set()
        done.set()

    async with _server(handler) as addr, _dialer() as dialer:
        channel = await dialer.open(addr)
        await channel.write(b"unread")
        with trio.fail_after(10):
            await done.wait()
        await channel.reset()
    assert seen == ["waiting", b""]
