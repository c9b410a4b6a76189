"""Streams as the programs see them: the one place py-libp2p's errors become the project's.

Above this module nothing catches a libp2p type. A `Channel` wraps one libp2p stream:
`read` gives ``b""`` at the end (py-libp2p raises StreamEOF for a clean close, a remote
reset and a dropped connection alike), `write` and `close` raise `StreamLost`, `reset`
never raises. A `StreamDialer` opens outbound heartbeat streams (the agent's side) and
raises `DialFailed`; its channels also drop their connection when reset, so the next dial
starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF

from heartbeat.net.compat.buffered_read import BufferedYamuxStream
from heartbeat.net.errors import DialFailed, StreamLost
from heartbeat.net.libp2p_errors import LIBP2P_ERRORS
from heartbeat.net.p2p import peer_info_from_multiaddr, stream_peer_id, stream_remote_ip

__all__ = ["Channel", "StreamDialer", "serve_protocols"]

log = logging.getLogger(__name__)

_ADDRESS_ERRORS: tuple[type[Exception], ...] = (ValueError, *LIBP2P_ERRORS)


def _describe(exc: BaseException) -> str:
    """`Type:message` in one token (log lines are key=value), bounded."""
    text = str(exc)
    out = f"{type(exc).__name__}:{text}" if text else type(exc).__name__
    return out.replace(" ", "_")[:200]


class Channel:
    """One libp2p stream; every library error translated (`StreamLost`)."""

    __slots__ = ("_stream", "peer_id", "remote_ip")

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self.peer_id = stream_peer_id(stream)
        self.remote_ip = stream_remote_ip(stream)

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes; ``b""`` once the stream has ended, however it ended."""
        try:
            return await self._stream.read(n)
        except StreamEOF:
            return b""
        except LIBP2P_ERRORS as exc:
            log.debug("read_failed peer=%s err=%r", self.peer_id, exc)
            return b""

    async def pump(self, sink: Callable[[bytes], bool]) -> bool | None:
        """Hand the stream's bytes to `sink` as they arrive, until it returns False
        (False) or the stream has ended (True, as `read` giving ``b""``); None when this
        stream cannot (not on the buffered receive path): use `read`.

        `sink` runs synchronously in the connection's reader (see
        `heartbeat.net.compat.buffered_read`): it must not block; what it raises is
        raised here.
        """
        muxed = getattr(self._stream, "muxed_stream", None)
        if not isinstance(muxed, BufferedYamuxStream):
            return None
        try:
            if not await muxed.pump(sink):
                return False
        except LIBP2P_ERRORS as exc:  # returning credit found the connection gone
            log.debug("pump_failed peer=%s err=%r", self.peer_id, exc)
            return True
        while data := await self.read():  # py-libp2p's own end (its stream state)
            if not sink(data):
                return False
        return True

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except LIBP2P_ERRORS as exc:
            raise StreamLost(_describe(exc)) from exc

    async def close(self) -> None:
        """Half-close: no more writes; the remote still reads what was sent."""
        try:
            await self._stream.close()
        except LIBP2P_ERRORS as exc:
            raise StreamLost(_describe(exc)) from exc

    async def wait_closed(self) -> None:
        """Return once the remote has closed its side (or the stream is gone)."""
        while await self.read(1024):
            pass

    async def reset(self) -> None:
        """Abort the stream; a stream already gone is fine."""
        try:
            await self._stream.reset()
        except LIBP2P_ERRORS as exc:
            log.debug("reset_failed peer=%s err=%r", self.peer_id, exc)


def serve_protocols(
    host: IHost, protocols: list[str], handler: Callable[[Channel], Awaitable[None]]
) -> None:
    """Serve every protocol id with `handler`, which gets each inbound stream as a `Channel`."""

    async def on_stream(stream: INetStream) -> None:
        try:
            channel = Channel(stream)
        except LIBP2P_ERRORS as exc:  # the connection went away before we looked
            log.debug("stream_vanished err=%r", exc)
            return
        await handler(channel)

    for protocol in protocols:
        host.set_stream_handler(TProtocol(protocol), on_stream)


async def _drop_peer(host: IHost, peer_id: Any, timeout: float = 1.0) -> None:
    """Close every connection to `peer_id`, bounded; a connection already gone is fine."""
    with trio.move_on_after(timeout):
        try:
            await host.disconnect(peer_id)
        except LIBP2P_ERRORS as exc:  # already gone: nothing left to tear down
            log.debug("disconnect_failed peer=%s err=%r", peer_id, exc)


class _DialedChannel(Channel):
    """An outbound channel: a reset also drops its connection (it may be half dead)."""

    __slots__ = ("_host", "_remote")

    def __init__(self, stream: INetStream, host: IHost, remote: Any) -> None:
        super().__init__(stream)
        self._host = host
        self._remote = remote

    async def reset(self) -> None:
        await super().reset()
        await _drop_peer(self._host, self._remote)


class StreamDialer:
    """Opens outbound streams of one protocol over a running host."""

    def __init__(self, host: IHost, protocol: str) -> None:
        self._host = host
        self._protocol = protocol

    async def open(self, addr: str) -> Channel:
        """Dial `addr` (`/ip4/…/tcp/…/p2p/<id>`) and open a stream; `DialFailed` otherwise.

        A failed dial leaves no connection state behind.
        """
        try:
            info = peer_info_from_multiaddr(addr)
        except _ADDRESS_ERRORS as exc:
            raise DialFailed(f"bad_address:{_describe(exc)}") from exc
        await self._forget_past_failures(info.peer_id)
        opened = False
        try:
            await self._host.connect(info)
            stream = await self._host.new_stream(info.peer_id, [TProtocol(self._protocol)])
            channel = _DialedChannel(stream, self._host, info.peer_id)
            opened = True
        except LIBP2P_ERRORS as exc:
            raise DialFailed(_describe(exc)) from exc
        finally:
            if not opened:
                # Drop whatever half-dead connection state the swarm kept, so the
                # next attempt dials afresh instead of reusing a closed connection.
                await _drop_peer(self._host, info.peer_id)
        return channel

    async def _forget_past_failures(self, peer_id: Any) -> None:
        """Make this attempt a real dial, whatever py-libp2p remembers from earlier ones.

        - Its negative peer cache refuses every dial to a peer for 60 s after one
          dial that failed on all addresses: an aggregator down for a second would
          keep its agents away for a minute. Our reconnect policy does the pacing.
        - A connection whose clean-up has not finished stays listed while already
          closed: `host.connect` then returns at once and `new_stream` fails with
          "No valid connections available". Drop such leftovers first.
        """
        network = self._host.get_network()
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)
        connections = network.get_connections(peer_id)
        if connections and all(conn.is_closed for conn in connections):
            await network.close_peer(peer_id)
