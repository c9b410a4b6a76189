"""The agent's beat loops: one independent loop per target, under one root nursery.

A loop dials its target (one dial = one attempt under one deadline), then writes
a beat every beat period on a drift-free timer, each write under a deadline. A
failed or stalled write resets the stream and the loop dials again; failed dials
are retried every (jittered) reconnect period and logged with the escalating
policy of `heartbeat.agent.policy.FailureLog`.

A connected loop beats from its first moment: until the source knows a head, the beat
says Head "{}" and Height 0 with the source's state and error (an agent whose Lotus
refuses its token is visible at once, and says why). Besides the timer, a change of what
the beat says (a new head, a new source state: `wake`, called by the head source's
listeners) sends one extra beat at once, so head changes reach the aggregator within
milliseconds. Extra beats are coalesced (a burst of changes gives one beat; a change
already carried by the last beat gives none) and at most one per `min_extra_gap` seconds
(1 s), which keeps an agent at 3 s beats plus one extra per 30 s epoch far below the
aggregator's default per-peer limit (2 beats/s, burst 10); even a change every instant
gives at most 1/3 + 1 beats/s. The timer's grid is not moved by an extra beat: the
aggregator keeps seeing a beat every period whatever the chain does.

A stream that dies within its first `EARLY_DEATH_PERIODS` beat periods (a receiver
that accepts the dial, then resets the stream: a refusal, a full fleet) counts as a
failed attempt too: the loop waits the reconnect period and the log escalates,
instead of redialing at once with a WARNING every beat period. Recovery (INFO) is
logged once a new stream has lived that long.

The network is behind a small `Connector` interface so that the loop runs under
trio's MockClock with a fake; `heartbeat.agent.connector.Libp2pConnector` is the real one
over the host (`heartbeat.net.streams`, which raises only `DialFailed` and `StreamLost`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from heartbeat.agent.head import Head, HeadSource, SourceStatus
from heartbeat.agent.policy import FailureLog, format_seconds, jittered, next_deadline
from heartbeat.agent.targets import Target
from heartbeat.net.errors import DialFailed, StreamLost
from heartbeat.protocol.tipset import format_head
from heartbeat.protocol.wire import Beat, encode_cbor, encode_json
from heartbeat.version import AGENT_VERSION

__all__ = [
    "Agent",
    "BeatLoop",
    "BeatStream",
    "Connector",
    "TargetStats",
    "make_beat",
]

log = logging.getLogger(__name__)

#: How long a stopping loop waits for the remote to close after our half-close.
CLOSE_WAIT = 1.0
#: A stream that dies within this many beat periods of opening is a failed attempt.
EARLY_DEATH_PERIODS = 3
#: At most one extra (change-driven) beat per this many seconds.
MIN_EXTRA_GAP = 1.0
#: What a beat carries until the source knows a head.
NO_HEAD = Head(cids=(), height=0)


class BeatStream(Protocol):
    """The part of a libp2p stream a beat loop uses."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Half-close: no more writes; the remote still reads what was sent."""

    async def reset(self) -> None:
        """Abort the stream (and whatever connection state it needs to drop)."""

    async def wait_closed(self) -> None:
        """Return once the remote has closed its side (or the stream is gone)."""


class Connector(Protocol):
    async def connect(self, target: Target) -> BeatStream:
        """Dial `target` and open a heartbeat stream; raise on failure."""


@dataclass(slots=True)
class TargetStats:
    """What the metrics endpoint shows per target; updated synchronously by its loop."""

    connected: bool = False
    beats_sent: int = 0
    dial_attempts: int = 0
    dial_failures: int = 0
    streams_died_early: int = 0  # counted as failed attempts by the reconnect policy
    last_success: float | None = None  # wall-clock unix seconds of the last beat written
    extra_beats: int = 0  # beats sent at once on a change, besides the timer


def make_beat(
    head: Head | None,
    *,
    nickname: str,
    miner_address: str,
    version: str,
    status: SourceStatus | None = None,
) -> Beat:
    """The beat for `head` (None: no head yet, Head "{}" and Height 0) and the source's
    `status` (None: a source that says nothing about itself; no health keys). The
    source's miner address wins over the configured one."""
    shown = NO_HEAD if head is None else head
    return Beat(
        head=format_head(shown.cids),
        height=shown.height,
        nickname=nickname,
        miner_address=shown.miner_address or miner_address,
        genesis_cid=shown.genesis_cid,
        head_timestamp=shown.timestamp,
        syncing=shown.syncing,
        version=version,
        source_state=None if status is None else status.state,
        source_error=None if status is None else status.error,
        head_seen_at=shown.seen_at,
        network_name=None if status is None else status.network_name,
    )


class BeatLoop:
    """Dial, beat, redial: the life of one target."""

    def __init__(
        self,
        target: Target,
        connector: Connector,
        latest: Callable[[], Head | None],
        *,
        nickname: str = "",
        miner_address: str = "",
        encoding: str = "cbor",
        write_timeout: float = 10.0,
        dial_timeout: float = 10.0,
        jitter: float = 0.2,
        error_log_period: float = 600.0,
        rand: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
        version: str = AGENT_VERSION,
        status: Callable[[], SourceStatus] | None = None,
        min_extra_gap: float = MIN_EXTRA_GAP,
    ) -> None:
        self.target = target
        self.stats = TargetStats()
        self._connector = connector
        self._latest = latest
        self._status = status
        self._min_extra_gap = min_extra_gap
        self._nickname = nickname
        self._miner_address = miner_address
        self._encode = encode_json if encoding == "json" else encode_cbor
        self._write_timeout = write_timeout
        self._dial_timeout = dial_timeout
        self._jitter = jitter
        self._rand = rand
        self._wall_clock = wall_clock
        self._version = version
        self._failures = FailureLog(error_every=error_log_period)
        self._lost_at: float | None = None
        self._stopping = False
        self._stop_event = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._stream: BeatStream | None = None
        self._cache: tuple[Head | None, SourceStatus | None, bytes] | None = None
        self._wake = trio.Event()  # set by stop() and by wake()
        self._sent: bytes | None = None  # the last payload written on this stream
        self._last_extra = -float("inf")

    # -- control -------------------------------------------------------------

    def wake(self) -> None:
        """What the beat says has changed: send an extra beat soon (synchronous)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop gracefully: a connected loop half-closes its stream, others stop at once."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        if self._stream is None and self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            while not self._stopping:
                stream = await self._dial()
                if stream is None or await self._beat(stream):
                    delay = jittered(self.target.reconnect_period, self._jitter, self._rand())
                    await trio.sleep(delay)

    # -- dialing -------------------------------------------------------------

    async def _dial(self) -> BeatStream | None:
        self.stats.dial_attempts += 1
        error: str
        try:
            with trio.fail_after(self._dial_timeout):
                stream = await self._connector.connect(self.target)
        except trio.TooSlowError:
            error = f"dial_timeout_{format_seconds(self._dial_timeout)}"
        except DialFailed as exc:  # the network layer's translation of every dial failure
            error = str(exc).replace(" ", "_")[:200]
        except Exception as exc:
            # The agent's one catch-all: whatever a dial raises (DNS, TCP, Noise,
            # Yamux, multistream, a py-libp2p bug) is one failed attempt, logged by
            # type and retried after the reconnect period; a loop never dies of its
            # target. (trio.Cancelled is not an Exception: it passes through.)
            error = f"{type(exc).__name__}:{exc}".replace(" ", "_")[:200]
        else:
            # After failures, recovery is logged once the stream has lived past its
            # early periods (`_settled`); the dial alone proves nothing.
            if not self._failures.failing:
                self._lost_at = None
                log.info("connected target=%s", self.target.addr)
            return stream
        self.stats.dial_failures += 1
        level, detail = self._failures.on_failure(trio.current_time(), error, since=self._lost_at)
        log.log(level, "dial_failed target=%s %s", self.target.addr, detail)
        return None

    # -- beating -------------------------------------------------------------

    def _payload(self) -> bytes:
        head = self._latest()
        status = None if self._status is None else self._status()
        if self._cache is None or self._cache[0] != head or self._cache[1] != status:
            beat = make_beat(
                head,
                nickname=self._nickname,
                miner_address=self._miner_address,
                version=self._version,
                status=status,
            )
            self._cache = (head, status, self._encode(beat))
        return self._cache[2]

    async def _wait_tick(self, deadline: float) -> bool:
        """Wait for the timer's `deadline`, sending extra beats on changes meanwhile;
        False when the loop is to stop."""
        while True:
            with trio.move_on_at(deadline):
                await self._wake.wait()
            if self._stop_event.is_set():
                return False
            if not self._wake.is_set():
                return True  # the timer's tick
            # A change: at most one extra beat per min_extra_gap; changes until it is
            # sent coalesce into it, and one the next tick will carry anyway waits.
            extra_at = max(trio.current_time(), self._last_extra + self._min_extra_gap)
            if extra_at >= deadline:
                with trio.move_on_at(deadline):
                    await self._stop_event.wait()
                return not self._stop_event.is_set()
            with trio.move_on_at(extra_at):
                await self._stop_event.wait()
            if self._stop_event.is_set():
                return False
            self._wake = trio.Event()
            payload = self._payload()
            if payload != self._sent:
                await self._write(payload, extra=True)
                self._last_extra = trio.current_time()

    async def _beat(self, stream: BeatStream) -> bool:
        """Beat until stopped or broken; True when the stream died early (a failed attempt)."""
        self._stream = stream
        self.stats.connected = True
        period = self.target.beat_period
        opened = deadline = trio.current_time()
        settled_at = opened + EARLY_DEATH_PERIODS * period
        settled = False
        self._sent = None
        try:
            while True:
                if not self._stop_event.is_set():
                    self._wake = trio.Event()  # this beat carries every change so far
                await self._write(self._payload())
                if not settled and trio.current_time() >= settled_at:
                    settled = True
                    self._settled(opened)
                deadline = next_deadline(deadline, period, trio.current_time())
                if not await self._wait_tick(deadline):
                    await self._close(stream)
                    return False
        except StreamLost as exc:
            now = trio.current_time()
            early = not settled and now < settled_at
            if early:
                self.stats.streams_died_early += 1
                level, detail = self._failures.on_failure(now, exc, since=self._lost_at)
                log.log(
                    level,
                    "stream_died_early target=%s lived=%s %s",
                    self.target.addr,
                    format_seconds(now - opened),
                    detail,
                )
            else:
                self._lost_at = now
                log.warning(
                    "disconnected target=%s beats=%d err=%s",
                    self.target.addr,
                    self.stats.beats_sent,
                    exc,
                )
            with trio.move_on_after(self._write_timeout):
                await stream.reset()
            return early
        finally:
            self._stream = None
            self.stats.connected = False

    def _settled(self, opened: float) -> None:
        """The stream opened at `opened` lived past its early periods: the outage ended then."""
        recovered = self._failures.on_success(opened)
        self._lost_at = None
        if recovered is not None:
            log.log(recovered[0], "reconnected target=%s %s", self.target.addr, recovered[1])

    async def _write(self, data: bytes, *, extra: bool = False) -> None:
        stream = self._stream
        assert stream is not None
        try:
            with trio.fail_after(self._write_timeout):
                await stream.write(data)
        except trio.TooSlowError as exc:
            raise StreamLost(f"write_stalled_{format_seconds(self._write_timeout)}") from exc
        self._sent = data
        self.stats.beats_sent += 1
        self.stats.extra_beats += extra
        self.stats.last_success = self._wall_clock()

    async def _close(self, stream: BeatStream) -> None:
        # remote_closed: our half-close went out and the remote closed its side within
        # CLOSE_WAIT; a failed close (the stream was already gone) claims nothing.
        remote_closed = False
        with trio.move_on_after(CLOSE_WAIT):
            try:
                await stream.close()
                await stream.wait_closed()
                remote_closed = True
            except StreamLost as exc:
                log.debug("close_failed target=%s err=%s", self.target.addr, exc)
        log.info(
            "stream_closed target=%s beats=%d remote_closed=%s",
            self.target.addr,
            self.stats.beats_sent,
            remote_closed,
        )


class Agent:
    """All beat loops of one process, sharing one connector and one head source."""

    def __init__(self, loops: list[BeatLoop], head_source: HeadSource | None = None) -> None:
        self.loops = loops
        self.head_source = head_source
        self._done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for loop in self.loops:
                await nursery.start(loop.run)
            task_status.started()
        self._done.set()

    async def stop(self, grace: float = 1.5) -> bool:
        """Stop every loop gracefully; True if all finished within `grace` seconds."""
        for loop in self.loops:
            loop.stop()
        with trio.move_on_after(grace):
            await self._done.wait()
            return True
        return False
