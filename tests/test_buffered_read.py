"""`heartbeat.net.compat.buffered_read`: one socket receive serves many frames.

Real hosts on loopback: a light client sends many Yamux frames, each in its own Noise
message, in ONE TCP send; the server must decrypt and demultiplex them from a few
receives and wake its reader a few times, not once per frame. Flow control (the sender
gets its credit back and never stalls), a tampered Noise message, an incomplete DATA
frame past its deadline, and the fix's install/uninstall (stock state back).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from heartbeat.net import compat, p2p
from heartbeat.net.compat import buffered_read
from heartbeat.net.compat.yamux_limits import HeartbeatYamux
from heartbeat.tools.loadgen.light import LightConnection, light_connection

pytestmark = [pytest.mark.timeout(60)]

PROTOCOL = "fil/heartbeat-test-buffered/1.0.0"
HEADER = struct.Struct("!BBHII")


@pytest.fixture
def buffered() -> Iterator[None]:
    """Every fix in (the aggregator's configuration) for the test, then as before."""
    before = compat.installed_fixes()
    compat.install_all(compat.CompatOptions())  # the default: the buffered reader in
    assert buffered_read.installed()
    yield
    compat.uninstall_all()
    for fix in compat.FIXES:
        if before[fix.NAME]:
            fix.install()


@asynccontextmanager
async def served(handler: Any) -> AsyncIterator[LightConnection]:
    key = p2p.new_identity()
    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(16), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        [listen] = p2p.listen_multiaddrs(srv)
        async with light_connection(
            p2p.new_identity(), f"{listen}/p2p/{p2p.peer_id_of(key)}", timeout=10
        ) as conn:
            yield conn


@asynccontextmanager
async def dialed(handler: Any) -> AsyncIterator[Any]:
    """A py-libp2p host's stream to another running `handler` (both real, on loopback)."""
    from libp2p.custom_types import TProtocol

    key = p2p.new_identity()
    limits = p2p.HostLimits.server(16)
    async with (
        p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits, identify_peers=False) as srv,
        p2p.running_host(p2p.new_identity(), None, identify_peers=False) as client,
    ):
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        [listen] = p2p.listen_multiaddrs(srv)
        info = p2p.peer_info_from_multiaddr(f"{listen}/p2p/{p2p.peer_id_of(key)}")
        await client.connect(info)
        yield await client.new_stream(info.peer_id, [TProtocol(PROTOCOL)])


def _noise(conn: LightConnection) -> Any:
    """The client's Noise transport reader/writer (beneath its Yamux session)."""
    return conn._muxed.secured_conn.conn


async def send_raw_frames(conn: LightConnection, frames: list[bytes]) -> None:
    """Each Yamux frame in its own Noise message, all of them in one TCP send."""
    noise = _noise(conn)
    wire = b"".join(noise.read_writer.encode_msg(noise.encrypt(f)) for f in frames)
    await noise.read_writer.read_write_closer.write(wire)


def sid_of(stream: Any) -> int:
    return int(stream.muxed_stream.stream_id)


def data_frame(sid: int, body: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(0, 0, flags, sid, len(body)) + body


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_one_receive_serves_many_frames_and_one_wake_many_beats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receives = 0
    receive = buffered_read._receive

    async def counted(sock: Any) -> bytes:
        nonlocal receives
        data = await receive(sock)
        receives += 1
        return data

    monkeypatch.setattr(buffered_read, "_receive", counted)
    frames = [f"beat-{i:04d};".encode() for i in range(300)]
    want = b"".join(frames)
    got = bytearray()
    reads = 0
    done = trio.Event()

    async def handler(stream: Any) -> None:
        nonlocal reads
        while len(got) < len(want):
            got.extend(await stream.read(65536))
            reads += 1
        done.set()
        await stream.read(1)

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        with trio.fail_after(10):
            await trio.sleep(0.2)  # the negotiation's frames are read and handled
            receives = 0
            await send_raw_frames(conn, [data_frame(sid, f) for f in frames])
            await done.wait()
        await stream.close()
    assert bytes(got) == want  # every byte, in order
    # 300 Noise messages (~9 KB) in one send: a few receives and reads, not 300.
    assert 1 <= receives <= 5
    assert reads <= 5


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_a_sender_of_many_windows_gets_its_credit_back() -> None:
    total = 3 * 256 * 1024  # three default receive windows: credit must come back
    got = 0
    done = trio.Event()

    async def handler(stream: Any) -> None:
        nonlocal got
        while got < total:
            got += len(await stream.read(65536))
        done.set()
        await stream.read(1)

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        conn._muxed.streams[sid_of(stream)].send_window = 256 * 1024  # one window, no more
        window_update = HeartbeatYamux._fil_read_frames
        assert window_update is buffered_read.buffered_read_frames
        with trio.fail_after(20):  # py-libp2p's writer gives up after 5 s without credit
            chunk = b"x" * 16384
            for _ in range(total // len(chunk)):
                await stream.write(chunk)
            await done.wait()
        await stream.close()
    assert got == total  # 3 windows through: the reader's credit came back


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_a_tampered_noise_message_closes_the_connection() -> None:
    async def handler(stream: Any) -> None:
        await stream.read(1)

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        noise = _noise(conn)
        sealed = bytearray(noise.encrypt(data_frame(sid_of(stream), b"hello")))
        sealed[-1] ^= 0xFF  # the Poly1305 tag no longer matches
        await noise.read_writer.read_write_closer.write(noise.read_writer.encode_msg(sealed))
        with trio.fail_after(10):
            await conn.wait_closed()


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_an_incomplete_data_frame_is_cut_off_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PY_YAMUX_DATA_READ_TIMEOUT", "1")
    got = bytearray()

    async def handler(stream: Any) -> None:
        got.extend(await stream.read(100))
        await stream.read(100)

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        whole = data_frame(sid, b"whole")
        announced = HEADER.pack(0, 0, 0, sid, 100) + b"only ten b"  # 90 bytes never come
        await send_raw_frames(conn, [whole, announced])
        start = trio.current_time()
        with trio.fail_after(10):
            await conn.wait_closed()
        assert trio.current_time() - start >= 0.5
    assert bytes(got) == b"whole"


def test_install_and_uninstall_restore_the_stock_reader() -> None:
    was = buffered_read.installed()
    try:
        buffered_read.uninstall()
        stock = HeartbeatYamux.__dict__["_fil_read_frames"]
        assert not buffered_read.installed()
        buffered_read.install()
        buffered_read.install()  # idempotent
        assert HeartbeatYamux.__dict__["_fil_read_frames"] is buffered_read.buffered_read_frames
        buffered_read.uninstall()
        assert HeartbeatYamux.__dict__["_fil_read_frames"] is stock
    finally:
        if was:
            buffered_read.install()


def test_the_gate_pins_the_layers_it_reads_beneath_and_the_switch_leaves_it_out() -> None:
    for module in (
        "libp2p.security.secure_session",
        "libp2p.security.noise.io",
        "libp2p.io.trio",
        "libp2p.network.connection.raw_connection",
        "libp2p.stream_muxer.yamux.yamux",
        "noise.connection",
        "noise.state",
    ):
        assert module in compat.FILES
    assert buffered_read in compat.FIXES
    assert buffered_read in compat.CompatOptions().wanted()  # the default
    assert buffered_read not in compat.CompatOptions(buffered_read=False).wanted()


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_a_reset_from_the_remote_wakes_a_reader_with_nothing_buffered() -> None:
    """Both ends buffered: the RST finalizes the stream (nothing buffered drops its event),
    and the reader waiting on that event must be woken, not left waiting forever."""

    async def handler(stream: Any) -> None:
        await stream.read(1)
        await stream.reset()

    async with dialed(handler) as stream:
        await stream.write(b"x")
        with trio.fail_after(5):  # before the fix: waited here until the test timed out
            with pytest.raises(p2p.StreamClosed):
                while True:
                    await stream.read(1024)


RST = 0x8


def rst_frame(sid: int) -> bytes:
    return HEADER.pack(0, 1, RST, sid, 0)  # WINDOW_UPDATE with RST


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_the_bytes_before_a_reset_are_read_before_the_reset_inbound() -> None:
    """DATA and the RST in one receive (one pass): the handler reads the bytes, then
    the reset. Before the fix the reset was reported at once and the bytes were lost:
    a reader only saw them if it was scheduled between the two frames."""
    got = bytearray()
    outcome: list[str] = []
    done = trio.Event()

    async def handler(stream: Any) -> None:
        try:
            while True:
                got.extend(await stream.read(1024))
        except p2p.StreamClosed:
            outcome.append("reset")
        finally:
            done.set()

    async with served(handler) as conn:
        stream = await conn.open_stream(PROTOCOL)
        sid = sid_of(stream)
        frames = [data_frame(sid, b"beat-1;"), data_frame(sid, b"beat-2;"), rst_frame(sid)]
        await send_raw_frames(conn, frames)
        with trio.fail_after(10):
            await done.wait()
    assert bytes(got) == b"beat-1;beat-2;"
    assert outcome == ["reset"]


@pytest.mark.integration
@pytest.mark.usefixtures("buffered")
async def test_a_stream_refused_right_after_negotiation_keeps_what_came_before() -> None:
    """The allowlist's shape: the listener's bytes and its RST reach the dialer together.
    The dialer (an outbound, py-libp2p stream over the buffered reader) reads the bytes,
    then sees the reset. Before the fix the RST dropped them: the dialer's negotiation
    failed when the protocol echo came with them (the refused stranger of
    `test_allowlist_refuses_and_reloads`, 1 run in 3), its first read raised `StreamReset`
    otherwise."""
    from libp2p.stream_muxer.yamux import yamux as y

    from tests.helpers import eventually

    async def handler(stream: Any) -> None:
        muxed = stream.muxed_stream
        sid = muxed.stream_id
        # One write: the DATA frame and the RST in one Noise message, one receive.
        await muxed.conn._write_frame(data_frame(sid, b"refused") + rst_frame(sid))
        muxed.closed = muxed.send_closed = muxed.recv_closed = True

    async with dialed(handler) as stream:
        muxed: Any = stream.muxed_stream
        assert isinstance(muxed.conn, HeartbeatYamux)
        assert type(muxed) is y.YamuxStream  # the dialer's own stream: py-libp2p's read
        await eventually(lambda: muxed.reset_received, timeout=5)  # both frames handled
        with trio.fail_after(5):
            assert await stream.read(1024) == b"refused"
            with pytest.raises(p2p.StreamClosed):
                await stream.read(1024)


def test_the_benchmark_switch_brings_back_py_libp2ps_reader() -> None:
    import argparse

    from aggregator.variants import BenchVariants, add_variant_flags

    parser = argparse.ArgumentParser()
    add_variant_flags(parser)
    default = BenchVariants.from_args(parser.parse_args([]))
    before = BenchVariants.from_args(parser.parse_args(["--py-libp2p-read"]))
    assert default.compat_options().buffered_read and default.argv() == []
    assert not before.compat_options().buffered_read
    assert before.argv() == ["--py-libp2p-read"]  # handed on to the workers


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"PY_YAMUX_BATCH_THRESHOLD_DIV": "4"},
        {"PY_YAMUX_BATCH_THRESHOLD_DIV": "0"},
        {"PY_YAMUX_BATCH_THRESHOLD_DIV": "half"},
        {"PY_YAMUX_DISABLE_HYSTERESIS": "yes"},
        {"PY_YAMUX_DISABLE_HYSTERESIS": "0", "PY_YAMUX_BATCH_THRESHOLD_DIV": "8"},
    ],
)
def test_the_credit_threshold_is_py_libp2ps_its_settings_read_once_per_stream(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    for name in ("PY_YAMUX_BATCH_THRESHOLD_DIV", "PY_YAMUX_DISABLE_HYSTERESIS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    conn: Any = object()
    ours = buffered_read.BufferedYamuxStream(1, conn, False)
    stock = YamuxStream(1, conn, False)
    reads = 0
    getenv = os.getenv

    def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return getenv(*args)

    monkeypatch.setattr(os, "getenv", counted)
    for target in (256 * 1024, 512 * 1024, 16 * 1024 * 1024):  # the window auto-tunes
        ours.target_recv_window = stock.target_recv_window = target
        before = reads
        threshold = ours._grow_threshold()
        assert reads == before  # no environment read per read
        assert threshold == stock._grow_threshold()  # py-libp2p's, for this environment
    # Read when the stream was opened: a later change is seen by later streams only.
    monkeypatch.setenv("PY_YAMUX_DISABLE_HYSTERESIS", "1")
    assert ours._grow_threshold() == threshold
    assert buffered_read.BufferedYamuxStream(3, conn, False)._grow_threshold() == 0
