"""The libp2p stream handler: decode, validate, rate limit, read deadline, publish.

One long-lived stream per agent carries a CBOR sequence (or legacy
newline-delimited JSON) of beats. For every stream the handler:

- refuses peers outside the allowlist (stream reset, connection closed) and
  streams beyond the per-peer cap (py-libp2p never applies its own);
- feeds the bytes to a bounded `BeatDecoder`: a rejected beat is counted by
  reason and logged at most once per peer per interval; a framing error
  (`BeatDecodeError`) resets the stream;
- enforces a read deadline: a peer that completes no beat within its beat
  timeout (silent, frozen or slow-dripping) is reset and disconnected;
- rate limits per peer (token bucket), disconnecting a peer that keeps flooding;
- publishes `PeerConnected` / `BeatAccepted` / `PeerDisconnected` on the bus;
- after EOF closes its own side of the stream (py-libp2p loses unread data on a
  fast close otherwise).

Nothing a peer sends may let an exception out: the top of `handle_stream` is
the one catch-all (an exception escaping a py-libp2p handler kills the host).
`trio.Cancelled` is never caught there (it is not an `Exception`).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from aggregator.bus import BeatAccepted, Bus, PeerConnected, PeerDisconnected
from aggregator.counters import IngestCounters
from aggregator.errors import FleetFull
from aggregator.ratelimit import LogLimiter, PeerRateLimiter, RateDecision
from heartbeat.net import p2p
from heartbeat.net.errors import NetError
from heartbeat.protocol.wire import Beat, BeatDecodeError, BeatDecoder, BeatRejected

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig

__all__ = ["InboundStream", "Ingest", "IngestCounters", "IngestSettings", "ReadableStream"]

log = logging.getLogger(__name__)

_ACCEPT = RateDecision.ACCEPT


class _Verdict(enum.Enum):
    """What one read's beats ask of the stream's task (`Ingest._take`)."""

    #: The peer is to be cut.
    FLOODING = "flooding"
    #: Not an end: a required bus subscriber is full and must be waited for.
    BACKLOG = "backlog"


class _Reading:
    """How a stream's reading went: what `_read_beats` does once it is over."""

    __slots__ = ("armed", "deadline", "error", "scope", "timed_out", "verdict")

    def __init__(self, deadline: float) -> None:
        #: When the stream times out unless a beat completes first.
        self.deadline = deadline
        #: The deadline its scope was given (`deadline` moves on without it).
        self.armed = deadline
        self.scope: trio.CancelScope | None = None
        self.verdict: _Verdict | None = None
        self.error: BeatDecodeError | None = None
        self.timed_out = False

    def arm(self, deadline: float) -> None:
        if self.scope is not None:
            self.scope.deadline = deadline
        self.armed = deadline

    def decode(self, decoder: BeatDecoder, data: bytes | None) -> list[Beat | BeatRejected]:
        """The beats of `data` (None: the stream's end, `finish`); a fault is noted here,
        and what came before it still counts."""
        try:
            return decoder.finish() if data is None else decoder.feed(data)
        except BeatDecodeError as exc:
            self.error = exc
            return exc.decoded


#: How long closing or resetting a stream may take before we give up on it.
CLOSE_TIMEOUT = 5.0
READ_SIZE = 65536


class ReadableStream(Protocol):
    """What the ingest uses of a stream (`heartbeat.net.streams.Channel`): `read` gives
    ``b""`` at the end however the stream ended; `close` raises `NetError`."""

    async def read(self, n: int | None = None) -> bytes: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class InboundStream(ReadableStream, Protocol):
    """An inbound stream with its remote: `heartbeat.net.streams.Channel`."""

    peer_id: str
    remote_ip: str | None


@dataclass(frozen=True)
class IngestSettings:
    max_beat_size: int = 4096
    max_buffer: int = 65536
    max_streams_per_peer: int = 4
    max_connections_per_ip: int = 256
    rate_limit: float = 2.0
    rate_burst: int = 10
    flood_drops: int = 50
    flood_window: float = 60.0
    reject_log_interval: float = 60.0

    @classmethod
    def from_config(cls, config: AggregatorConfig) -> IngestSettings:
        return cls(
            max_beat_size=config.max_beat_size,
            max_buffer=config.max_buffer,
            max_streams_per_peer=config.max_streams_per_peer,
            max_connections_per_ip=config.max_connections_per_ip,
            rate_limit=config.rate_limit,
            rate_burst=config.rate_burst,
            flood_drops=config.flood_drops,
            flood_window=config.flood_window,
            reject_log_interval=config.reject_log_interval,
        )


class Ingest:
    """The aggregator's ingest; `handle_stream` is the libp2p stream handler.

    `disconnect_peer(peer_id)` and `close_connection(conn)` close connections
    (given to the constructor, or through `bind` once the host exists: the app
    passes the p2p helpers bound to its host); they run in the ingest's own
    nursery (`run`) so that a handler never cancels itself by closing its own
    connection.
    """

    def __init__(
        self,
        settings: IngestSettings,
        bus: Bus,
        *,
        beat_timeout: Callable[[str], float],
        disconnect_peer: Callable[[str], Awaitable[None]] | None = None,
        close_connection: Callable[[Any], Awaitable[None]] | None = None,
        allowlist: frozenset[str] | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.counters = IngestCounters()
        self.allowlist = allowlist
        self._beat_timeout = beat_timeout
        self._disconnect_peer = disconnect_peer
        self._close_connection = close_connection
        #: Told of each connection refused here (reason, ip): the handshake gate's
        #: per-IP refusal cap and `fil_heartbeat_refusals_total`.
        self.on_inbound_refused: Callable[[str, str | None], None] | None = None
        self._clock = clock
        self._wall = wall_clock
        self._limiter = PeerRateLimiter(
            settings.rate_limit,
            settings.rate_burst,
            flood_drops=settings.flood_drops,
            flood_window=settings.flood_window,
        )
        self._log_limiter = LogLimiter(settings.reject_log_interval)
        self._streams: Counter[str] = Counter()
        self._conns_by_ip: Counter[str] = Counter()
        self._conn_ip: dict[int, str] = {}
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery in which disconnects run; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def bind(
        self,
        *,
        disconnect_peer: Callable[[str], Awaitable[None]],
        close_connection: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Give the ingest its ways to close connections (the host is built after the ingest)."""
        self._disconnect_peer = disconnect_peer
        self._close_connection = close_connection

    def peers_streaming(self) -> int:
        return len(self._streams)

    def set_allowlist(self, allowlist: frozenset[str] | None) -> None:
        self.allowlist = allowlist
        log.info("allowlist_set peers=%s", "any" if allowlist is None else len(allowlist))

    def evict(self, peer: str, reason: str) -> None:
        """Refuse `peer` from outside the stream handler (e.g. worker 0's fleet is full)."""
        self._refuse(peer, reason)
        self._spawn(self._disconnect, peer)

    def on_shed(self) -> None:
        """The host closed a connection that found no handshake slot in time."""
        self.counters.handshakes_shed += 1
        if self._log_limiter.allow("handshakes_shed", self._clock()):
            log.warning(
                "handshakes_shed total=%d (no handshake slot in time; causes by IP: "
                "inbound_refused lines)",
                self.counters.handshakes_shed,
            )

    # -- connection events (per-IP cap) --------------------------------------

    async def on_connected(self, conn: Any) -> None:
        self.counters.connections += 1
        ip = p2p.conn_remote_ip(conn)
        if ip is None:
            return
        self._conn_ip[id(conn)] = ip
        self._conns_by_ip[ip] += 1
        if self._conns_by_ip[ip] > self.settings.max_connections_per_ip:
            self.counters.peers_refused["too_many_connections_per_ip"] += 1
            if self._log_limiter.allow(f"ip:{ip}", self._clock()):
                log.warning(
                    "connection_refused ip=%s reason=too_many_connections_per_ip limit=%d",
                    ip,
                    self.settings.max_connections_per_ip,
                )
            self._spawn(self._close_conn, conn)

    async def on_disconnected(self, conn: Any) -> None:
        self.counters.connections = max(0, self.counters.connections - 1)
        ip = self._conn_ip.pop(id(conn), None)
        if ip is not None:
            self._conns_by_ip[ip] -= 1
            if self._conns_by_ip[ip] <= 0:
                del self._conns_by_ip[ip]

    # -- the stream handler ----------------------------------------------------

    async def handle_stream(self, stream: InboundStream) -> None:
        """The libp2p handler (`heartbeat.net.streams.serve_protocols`): nothing escapes but
        cancellation."""
        peer = stream.peer_id
        try:
            await self.serve(stream, peer, stream.remote_ip or "")
        except Exception as exc:  # the one catch-all: see the module docstring
            self.counters.handler_errors += 1
            if self._log_limiter.allow(f"error:{peer}", self._clock()):
                log.warning("stream_handler_error peer=%s err=%r", peer, exc)
            await self._reset(stream)

    async def serve(self, stream: ReadableStream, peer: str, remote_ip: str) -> None:
        """Serve one heartbeat stream from `peer` until EOF, a deadline or misbehaviour."""
        if self.allowlist is not None and peer not in self.allowlist:
            self._refuse(peer, "not_allowed")
            if self.on_inbound_refused is not None:
                self.on_inbound_refused("not_allowlisted", remote_ip)
            await self._reset(stream)
            self._spawn(self._disconnect, peer)
            return
        if self._streams[peer] >= self.settings.max_streams_per_peer:
            self._refuse(peer, "too_many_streams")
            await self._reset(stream)
            return
        first = self._streams[peer] == 0
        self._streams[peer] += 1
        self.counters.streams_open += 1
        try:
            if first:
                await self.bus.publish(PeerConnected(peer, remote_ip, self._wall()))
            await self._read_beats(stream, peer)
        except FleetFull:
            self._refuse(peer, "fleet_full")
            await self._reset(stream)
            self._spawn(self._disconnect, peer)
        finally:
            self.counters.streams_open -= 1
            self._streams[peer] -= 1
            if self._streams[peer] <= 0:
                del self._streams[peer]
                self._limiter.forget(peer)
                # Bookkeeping must happen even when the connection is being torn down.
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await self.bus.publish(PeerDisconnected(peer, self._wall()))

    async def _read_beats(self, stream: ReadableStream, peer: str) -> None:
        settings = self.settings
        decoder = BeatDecoder(max_beat_size=settings.max_beat_size, max_buffer=settings.max_buffer)
        pump = getattr(stream, "pump", None)  # `Channel.pump`: the reader feeds us
        reading = None if pump is None else await self._pump_beats(pump, decoder, peer)
        if reading is None:
            reading = await self._read_loop(stream, decoder, peer)
        clock = self._clock
        error = reading.error
        if reading.timed_out:
            self._disconnected(peer, "read_timeout")
            await self._reset(stream)
            self._spawn(self._disconnect, peer)
        elif reading.verdict is _Verdict.FLOODING:
            self._disconnected(peer, "flooding")
            await self._reset(stream)
            self._spawn(self._disconnect, peer)
        elif error is not None:
            reason = error.reason.value
            self.counters.decode_errors[reason] += 1
            if self._log_limiter.allow(peer, clock()):
                log.warning("stream_garbage peer=%s reason=%s err=%s", peer, reason, error)
            await self._reset(stream)
        else:  # EOF: close our side too, so the sender's last beats land
            await self._close(stream)

    async def _pump_beats(
        self,
        pump: Callable[[Callable[[bytes], bool]], Awaitable[bool | None]],
        decoder: BeatDecoder,
        peer: str,
    ) -> _Reading | None:
        """Take the stream's beats in its connection's reader (`Channel.pump`): decoded,
        counted and published there, synchronously, with no wake-up of this task per beat.

        This task wakes for the end, a required subscriber's back-pressure and the read
        deadline, which the beats move lazily: they only note it, and a deadline that
        fires early is armed again (one wake-up per beat timeout). None: the stream
        cannot be pumped (`_read_loop` then).
        """
        clock = self._clock
        beat_timeout = self._beat_timeout
        take = self._take
        reading = _Reading(clock() + beat_timeout(peer))

        def sink(data: bytes) -> bool:
            items = reading.decode(decoder, data)
            if items:
                taken = take(items, peer)
                if taken is not None:  # FLOODING, or BACKLOG: the task must flush
                    reading.verdict = taken
                    return False
                deadline = clock() + beat_timeout(peer)
                reading.deadline = deadline
                if deadline < reading.armed:  # the beat timeout shrank: fire sooner
                    reading.arm(deadline)
            return reading.error is None

        while True:
            ended: bool | None = False
            with trio.CancelScope(deadline=reading.deadline) as scope:
                reading.scope = scope
                reading.armed = reading.deadline
                ended = await pump(sink)
            reading.scope = None
            if scope.cancelled_caught:
                if reading.deadline > clock():
                    continue  # beats came meanwhile: the deadline moved on
                reading.timed_out = True
                return reading
            if ended is None:
                return None
            if reading.verdict is _Verdict.BACKLOG:
                reading.verdict = None
                await self.bus.flush()  # back-pressure, outside the read deadline
                reading.deadline = clock() + beat_timeout(peer)
            if reading.error is not None or reading.verdict is not None:
                return reading
            if ended:
                await self._finish(decoder, peer, reading)
                return reading

    async def _read_loop(self, stream: ReadableStream, decoder: BeatDecoder, peer: str) -> _Reading:
        """Read and take the stream's beats until its end, a deadline or misbehaviour."""
        clock = self._clock
        reading = _Reading(math.inf)
        # The deadline is for completing the next beat, not for the next byte: a slow
        # drip cannot keep a stream alive. One scope per stream, its deadline moved
        # when beats complete (a scope per read costs more than the rest of the loop).
        with trio.CancelScope(deadline=clock() + self._beat_timeout(peer)) as scope:
            while True:
                data = await stream.read(READ_SIZE)  # b"" at the end, however it ended
                if not data:  # the decoder's finish() decodes or refuses what is left
                    scope.deadline = math.inf
                    await self._finish(decoder, peer, reading)
                    break
                items = reading.decode(decoder, data)
                if items:
                    taken = self._take(items, peer)
                    if taken is _Verdict.FLOODING:
                        reading.verdict = taken
                        break
                    if taken is _Verdict.BACKLOG:
                        # A required subscriber is full: wait for it (back-pressure),
                        # outside the read deadline.
                        scope.deadline = math.inf
                        await self.bus.flush()
                    scope.deadline = clock() + self._beat_timeout(peer)
                if reading.error is not None:
                    break
        reading.timed_out = scope.cancelled_caught
        return reading

    async def _finish(self, decoder: BeatDecoder, peer: str, reading: _Reading) -> None:
        """The stream's end: decode or refuse what is left in the decoder, and take it."""
        items = reading.decode(decoder, None)
        if items:
            taken = self._take(items, peer)
            if taken is _Verdict.FLOODING:
                reading.verdict = taken
            elif taken is _Verdict.BACKLOG:
                await self.bus.flush()

    def _take(self, items: list[Beat | BeatRejected], peer: str) -> _Verdict | None:
        """Count, rate limit and publish one read's beats (synchronous: no await per beat).

        FLOODING: the peer is to be cut; BACKLOG: a required subscriber is full, the
        caller owes `await bus.flush()`; None: all delivered.
        """
        counters = self.counters
        limiter = self._limiter
        publish = self.bus.publish_nowait
        now = self._clock()
        at = self._wall()
        taken = accepted = limited = 0
        outcome: _Verdict | None = None
        try:
            for item in items:
                taken += 1
                # Rejected beats take tokens too: flooding with junk is still flooding.
                decision = limiter.check(peer, now)
                if decision is not _ACCEPT:
                    limited += 1
                    if decision is RateDecision.DISCONNECT:
                        return _Verdict.FLOODING
                    continue
                if isinstance(item, BeatRejected):
                    counters.beats_rejected[item.reason.value] += 1
                    if self._log_limiter.allow(peer, now):
                        log.warning(
                            "beat_rejected peer=%s reason=%s detail=%s suppressed=%d",
                            peer,
                            item.reason.value,
                            item.detail,
                            self._log_limiter.take_suppressed(peer),
                        )
                    continue
                accepted += 1
                if not publish(BeatAccepted(peer, item, at)):
                    outcome = _Verdict.BACKLOG
            return outcome
        finally:  # counted once per read, not per beat
            counters.beats_received += taken
            counters.beats_accepted += accepted
            counters.beats_rate_limited += limited

    # -- helpers -----------------------------------------------------------------

    def _refuse(self, peer: str, reason: str) -> None:
        self.counters.peers_refused[reason] += 1
        if self._log_limiter.allow(f"refused:{peer}", self._clock()):
            log.warning("peer_refused peer=%s reason=%s", peer, reason)

    def _disconnected(self, peer: str, reason: str) -> None:
        self.counters.peers_disconnected[reason] += 1
        log.warning("peer_disconnected peer=%s reason=%s", peer, reason)

    def _spawn(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, arg)

    async def _disconnect(self, peer: str) -> None:
        if self._disconnect_peer is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._disconnect_peer(peer)
            except (NetError, OSError, trio.BrokenResourceError) as exc:
                log.debug("disconnect_failed peer=%s err=%r", peer, exc)

    async def _close_conn(self, conn: Any) -> None:
        if self._close_connection is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._close_connection(conn)
            except (NetError, OSError, trio.BrokenResourceError) as exc:
                log.debug("close_connection_failed err=%r", exc)

    @staticmethod
    async def _reset(stream: ReadableStream) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await stream.reset()
            except (NetError, OSError, trio.BrokenResourceError) as exc:
                log.debug("stream_reset_failed err=%r", exc)

    @staticmethod
    async def _close(stream: ReadableStream) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await stream.close()
            except (NetError, OSError, trio.BrokenResourceError) as exc:
                log.debug("stream_close_failed err=%r", exc)
