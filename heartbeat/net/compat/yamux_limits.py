"""Per-connection Yamux limits: inbound streams, pings (a DoS by one connection).

Upstream bug: py-libp2p 0.8.1's `Yamux.handle_incoming` (libp2p/stream_muxer/yamux/
yamux.py) accepts every SYN (a stream, a handler, a negotiation each; the resource
manager's per-peer stream limits are never applied) and answers every PING at once.
Measured on one raw connection: 51,800 stream opens in 10 s took the aggregator's RSS
from 96 to 476 MB (465 MB after the attacker left) with 2,283 ERROR lines; a flood of
406k pings pinned a core. Retired by: upstream per-connection stream limits applied at
SYN time and a ping rate limit (as go-yamux's `MaxIncomingStreams` and go-libp2p's
resource manager do).

Seam: a `Yamux` subclass, set as the muxer class by `yamux_muxer` (py-libp2p 0.8.1 ignores
`muxer_opt`'s class for Yamux) and configured by `build_host` (`configure`). A new inbound stream
over `max_inbound_streams_per_conn` (counting those still negotiating) is reset at once,
before any task is started for it; pongs beyond the token bucket are not sent, and a
connection `ping_close_after` pings over budget is closed. The inbound negotiation
deadline is py-libp2p's own setting (`ConnectionConfig.
inbound_stream_protocol_negotiation_timeout`, set by `build_host`).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import trio
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    TYPE_PING,
    YAMUX_HEADER_FORMAT,
    Yamux,
)

from heartbeat.net.compat import malloc_trim
from heartbeat.net.refusals import RefusalReason

__all__ = ["HeartbeatYamux", "YamuxLimits"]

log = logging.getLogger(__name__)

_HEADER_SIZE = struct.calcsize(YAMUX_HEADER_FORMAT)


@dataclass(frozen=True)
class YamuxLimits:
    #: Inbound streams open at once per connection, negotiating ones included.
    max_inbound_streams_per_conn: int = 8
    #: Pongs per second per connection (token bucket) and the bucket's size.
    ping_rate: float = 10.0
    ping_burst: int = 20
    #: Pings over budget after which the connection is closed.
    ping_close_after: int = 200


def _flags(header: bytes) -> int:
    return int(struct.unpack(YAMUX_HEADER_FORMAT, header)[2])


def _no_refusal_count(reason: RefusalReason) -> None:
    return None


class _CappedSend:
    """Stands in front of a session's new-stream send channel (py-libp2p's memory
    channel or the accept cut's spawner): a stream over the cap is reset, not sent."""

    __slots__ = ("_conn", "inner")

    def __init__(self, conn: HeartbeatYamux, inner: Any) -> None:
        self._conn = conn
        self.inner = inner

    async def send(self, stream: Any) -> None:
        if self._conn._admit(stream):
            await self.inner.send(stream)
        else:
            await stream.reset()

    def send_nowait(self, stream: Any) -> None:
        if not self._conn._admit(stream):
            raise trio.WouldBlock
        self.inner.send_nowait(stream)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class HeartbeatYamux(Yamux):
    """py-libp2p's Yamux with per-connection limits (see the module docstring)."""

    limits: ClassVar[YamuxLimits] = YamuxLimits()
    on_refusal: ClassVar[Callable[[RefusalReason], None]] = staticmethod(_no_refusal_count)

    @classmethod
    def configure(
        cls, limits: YamuxLimits, on_refusal: Callable[[RefusalReason], None] | None = None
    ) -> None:
        """Set the limits (and the refusal count) of every session from now on."""
        cls.limits = limits
        cls.on_refusal = staticmethod(on_refusal or _no_refusal_count)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._fil_inbound: list[Any] = []
        self._fil_tokens = float(self.limits.ping_burst)
        self._fil_tokens_at = trio.current_time()
        self._fil_pings_over = 0
        self._fil_refused = False
        super().__init__(*args, **kwargs)

    @property
    def new_stream_send_channel(self) -> Any:
        return self._fil_send

    @new_stream_send_channel.setter
    def new_stream_send_channel(self, channel: Any) -> None:
        inner = channel.inner if isinstance(channel, _CappedSend) else channel
        self._fil_send = _CappedSend(self, inner)

    def _admit(self, stream: Any) -> bool:
        """Count `stream` against the cap (True) or refuse it (False); synchronous."""
        if getattr(stream, "is_initiator", False):
            return True
        live = [
            s
            for s in self._fil_inbound
            if not (s.closed or s.reset_received) and self.streams.get(s.stream_id) is s
        ]
        self._fil_inbound = live
        if len(live) < self.limits.max_inbound_streams_per_conn:
            live.append(stream)
            return True
        self._refuse(RefusalReason.YAMUX_STREAM_CAP)
        return False

    def _refuse(self, reason: RefusalReason) -> None:
        if not self._fil_refused:
            self._fil_refused = True
            log.warning("yamux_limit peer=%s reason=%s", self.peer_id, reason.value)
        type(self).on_refusal(reason)

    async def _write_frame(self, data: bytes) -> None:
        if len(data) == _HEADER_SIZE and data[1] == TYPE_PING and _flags(data) & FLAG_ACK:
            if not self._ping_allowed():
                return
        await super()._write_frame(data)

    def _ping_allowed(self) -> bool:
        limits = self.limits
        now = trio.current_time()
        self._fil_tokens = min(
            float(limits.ping_burst),
            self._fil_tokens + (now - self._fil_tokens_at) * limits.ping_rate,
        )
        self._fil_tokens_at = now
        if self._fil_tokens >= 1.0:
            self._fil_tokens -= 1.0
            return True
        self._fil_pings_over += 1
        self._refuse(RefusalReason.YAMUX_PING_BUDGET)
        if self._fil_pings_over == limits.ping_close_after:
            self._refuse(RefusalReason.YAMUX_PING_FLOOD)
            # The reader's loop ends at its next turn; `handle_incoming` then closes.
            self.event_shutting_down.set()
        return False

    async def _fil_read_frames(self) -> None:
        """The frame reader: py-libp2p's loop, or `buffered_read`'s when installed."""
        await super().handle_incoming()

    async def handle_incoming(self) -> None:
        try:
            await self._fil_read_frames()
            flooded = self._fil_pings_over >= self.limits.ping_close_after
            if flooded and not self.event_closed.is_set():
                # Ended by the ping limit: the loop left without py-libp2p's clean-up.
                await self._cleanup_on_error()
        finally:
            if self._fil_refused:
                malloc_trim.soon()
