"""The network layer's error boundary (`heartbeat.net.streams`), over real hosts on loopback.

Whatever py-libp2p raises, the programs see `DialFailed` (a dial, an upgrade, a protocol the
remote does not speak) or `StreamLost` (a write or close on a stream the remote reset), and
`read` gives ``b""`` at the end however the stream ended: never a libp2p type.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from heartbeat.net import p2p
from heartbeat.net.errors import DialFailed, NetError, StreamLost
from heartbeat.net.streams import Channel, StreamDialer, serve_protocols
from tests.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROTOCOL = "fil/heartbeat-test/1.0.0"


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
