"""`LightConnection`: the load generator's host-less outbound connection.

A full host per simulated agent costs ~150 KB and a swarm, a peerstore and a resource
manager each; the load generator needs only one Noise + Yamux connection per identity.
`light_connection` dials TCP, upgrades it exactly as a host would (Noise, then Yamux, each
chosen by multistream-select) and opens streams on it: ~58 KB per simulated agent
(measured, loopback). It does not run identify; inbound streams from the remote are reset.

`write_frames` is the load generator's write: several writes, each its own Yamux DATA frame
(so the receiver still sees one beat per frame), built at once and sent as one Noise message
in one socket send, where py-libp2p's `NetStream.write` takes a state lock, the stream's
read-write and window locks, the connection's write lock, one Noise message and one send
per write (~150 µs of the sender's CPU per beat). The receiver's view is the same Yamux
stream; only the Noise framing differs (a Noise message may carry several Yamux frames,
as the protocol allows: Noise carries a byte stream).
A tool, not production code: it talks to py-libp2p directly.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError, StreamReset
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import (
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from heartbeat.net.libp2p_errors import LIBP2P_ERRORS, quietly, translated
from heartbeat.net.p2p import peer_info_from_multiaddr

__all__ = ["LightConnection", "light_connection", "write_frames"]

#: How often a writer without send window looks again (the receiver's WINDOW_UPDATE is
#: applied by py-libp2p's reader task, which signals nothing).
WINDOW_POLL = 0.001


class LightConnection:
    """One outbound Noise + Yamux connection, without a host around it."""

    def __init__(self, muxed: Any, remote_peer_id: str) -> None:
        self._muxed = muxed
        self.remote_peer_id = remote_peer_id

    async def open_stream(self, protocol: str, timeout: float = 10.0) -> INetStream:
        """Open a stream and negotiate `protocol`; errors surface as StreamClosed types."""
        from libp2p.network.stream.net_stream import NetStream
        from libp2p.protocol_muxer.multiselect_client import MultiselectClient
        from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

        async with translated("open_stream"):
            muxed_stream = await self._muxed.open_stream()
        stream = NetStream(muxed_stream, None, None)
        try:
            async with translated(f"negotiate {protocol}"):
                await MultiselectClient().select_one_of(
                    [TProtocol(protocol)], MultiselectCommunicator(stream), max(1, int(timeout))
                )
        except StreamError:
            await quietly("light_stream_reset", muxed_stream.reset)
            raise
        stream.set_protocol(TProtocol(protocol))
        return stream

    @property
    def is_closed(self) -> bool:
        return bool(self._muxed.event_shutting_down.is_set())

    async def wait_closed(self) -> None:
        await self._muxed.event_closed.wait()

    async def close(self) -> None:
        await quietly("light_close", self._muxed.close)


@asynccontextmanager
async def light_connection(
    key_pair: KeyPair, addr: str, *, timeout: float = 10.0
) -> AsyncIterator[LightConnection]:
    """Dial `addr` (`/…/tcp/<port>/p2p/<id>`) as `key_pair` for the duration of the block.

    Raises `StreamError` if the dial or an upgrade fails within `timeout`.
    """
    from libp2p.transport.tcp.tcp import TCP
    from libp2p.transport.upgrader import TransportUpgrader

    info = _target(addr)
    upgrader = TransportUpgrader(
        {
            TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
                key_pair, noise_privkey=create_new_x25519_key_pair().private_key
            )
        },
        {TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        negotiate_timeout=max(1, int(timeout)),
    )
    raw = None
    try:
        with trio.fail_after(timeout):
            raw = await TCP().dial(info.addrs[0])
            secured = await upgrader.upgrade_security(raw, True, info.peer_id)
            muxed = await upgrader.upgrade_connection(secured, info.peer_id)
    except trio.TooSlowError as exc:
        if raw is not None:
            await quietly("light_raw_close", raw.close)
        raise StreamError(f"dial timeout after {timeout}s") from exc
    except LIBP2P_ERRORS as exc:
        if raw is not None:
            await quietly("light_raw_close", raw.close)
        raise StreamError(f"dial {type(exc).__name__}: {exc}") from exc
    conn = LightConnection(muxed, info.peer_id.to_base58())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(muxed.start)
        nursery.start_soon(_refuse_inbound, muxed)
        try:
            with trio.fail_after(timeout):
                await muxed.event_started.wait()
            yield conn
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await conn.close()
            nursery.cancel_scope.cancel()


@functools.lru_cache(maxsize=16)
def _target(addr: str) -> Any:
    """The target's peer info, parsed once: every simulated agent dials the same one, and
    parsing the multiaddr and its peer id took a tenth of the load generator's CPU in a
    reconnect storm (py-spy, docs/CAPACITY.md section 4). Nothing here mutates it."""
    return peer_info_from_multiaddr(addr)


async def _refuse_inbound(muxed: Any) -> None:
    """The remote may open streams (identify push): reset them, we serve nothing."""
    while True:
        try:
            stream = await muxed.accept_stream()
        except LIBP2P_ERRORS:  # the connection is closing: nothing more will arrive
            return
        await quietly("light_inbound_reset", stream.reset)


async def write_frames(stream: INetStream, chunks: Sequence[bytes]) -> None:
    """Write each chunk as its own Yamux DATA frame, all in one Noise message and one send.

    As many frames as the receiver's window takes go out together; the rest waits
    (polling) for its window, so the caller bounds the call with a deadline. Errors
    surface as StreamClosed types, like `NetStream.write`'s. A stream that is not a
    py-libp2p Yamux stream gets the chunks as one ordinary write.
    """
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, YamuxStream):
        await stream.write(b"".join(chunks))
        return
    pack = _HEADER.pack
    sid = muxed.stream_id
    todo = list(chunks)
    while todo:
        if muxed.send_closed or muxed.closed or muxed.reset_received:
            raise StreamReset("stream closed for sending")
        # take the window with no await in between: no other task interleaves (the reader
        # task adds the receiver's credit under the stream's window lock, synchronously too)
        window = muxed.send_window
        parts: list[bytes] = []
        taken = 0
        while taken < len(todo) and len(todo[taken]) <= window:
            chunk = todo[taken]
            window -= len(chunk)
            parts += (pack(0, TYPE_DATA, 0, sid, len(chunk)), chunk)
            taken += 1
        if not taken:
            await trio.sleep(WINDOW_POLL)
            continue
        muxed.send_window = window
        del todo[:taken]
        async with translated("write_frames"):
            await muxed.conn._write_frame(b"".join(parts))


_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
