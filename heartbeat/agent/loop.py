"""The agent's beat loops: one independent loop per target, under one root nursery.

A loop dials its target (one dial = one attempt under one deadline), then writes
a beat every beat period on a drift-free timer, each write under a deadline. A
failed or stalled write resets the stream and the loop dials again; failed dials
are retried every (jittered) reconnect period and logged with the escalating
policy of `heartbeat.agent.policy.FailureLog`.

A stream that dies within its first `EARLY_DEATH_PERIODS` beat periods (a receiver
that accepts the dial, then resets the stream: a refusal, a full fleet) counts as a
failed attempt too: the loop waits the reconnect period and the log escalates,
instead of redialing at once with a WARNING every beat period. Recovery (INFO) is
logged once a new stream has lived that long.

The network is behind a small `Connector` interface so that the loop runs under
trio's MockClock with a fake; `Libp2pConnector` is the real one over the host
(`heartbeat.net.streams`, which raises only `DialFailed` and `StreamLost`).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from heartbeat.agent.head import Head, HeadSource
from heartbeat.agent.policy import FailureLog, format_seconds, jittered, next_deadline
from heartbeat.agent.targets import Target
from heartbeat.net.errors import DialFailed, StreamLost
from heartbeat.net.streams import StreamDialer
from heartbeat.protocol.tipset import format_head
from heartbeat.protocol.wire import PROTOCOL_ID, Beat, encode_cbor, encode_json
from heartbeat.version import AGENT_VERSION

__all__ = [
    "Agent",
    "BeatLoop",
    "BeatStream",
    "Connector",
    "Libp2pConnector",
    "TargetStats",
    "make_beat",
]

log = logging.getLogger(__name__)

#: How long a stopping loop waits for the remote to close after our half-close.
CLOSE_WAIT = 1.0
#: A stream that dies within this many beat periods of opening is a failed attempt.
EARLY_DEATH_PERIODS = 3


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


def make_beat(head: Head, *, nickname: str, miner_address: str, version: str) -> Beat:
    """The beat for `head`: the source's miner address wins over the configured one."""
    return Beat(
        head=format_head(head.cids),
        height=head.height,
        nickname=nickname,
        miner_address=head.miner_address or miner_address,
        genesis_cid=head.genesis_cid,
        head_timestamp=head.timestamp,
        syncing=head.syncing,
        version=version,
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
    ) -> None:
        self.target = target
        self.stats = TargetStats()
        self._connector = connector
        self._latest = latest
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
        self._cache: tuple[Head, bytes] | None = None

    # -- control -------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: a connected loop half-closes its stream, others stop at once."""
        self._stopping = True
        self._stop_event.set()
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

    def _payload(self, head: Head) -> bytes:
        if self._cache is None or self._cache[0] != head:
            beat = make_beat(
                head,
                nickname=self._nickname,
                miner_address=self._miner_address,
                version=self._version,
            )
            self._cache = (head, self._encode(beat))
        return self._cache[1]

    async def _beat(self, stream: BeatStream) -> bool:
        """Beat until stopped or broken; True when the stream died early (a failed attempt)."""
        self._stream = stream
        self.stats.connected = True
        period = self.target.beat_period
        opened = deadline = trio.current_time()
        settled_at = opened + EARLY_DEATH_PERIODS * period
        settled = False
        try:
            while True:
                head = self._latest()
                if head is not None:
                    await self._write(stream, self._payload(head))
                if not settled and trio.current_time() >= settled_at:
                    settled = True
                    self._settled(opened)
                deadline = next_deadline(deadline, period, trio.current_time())
                with trio.move_on_at(deadline):
                    await self._stop_event.wait()
                if self._stop_event.is_set():
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

    async def _write(self, stream: BeatStream, data: bytes) -> None:
        try:
            with trio.fail_after(self._write_timeout):
                await stream.write(data)
        except trio.TooSlowError as exc:
            raise StreamLost(f"write_stalled_{format_seconds(self._write_timeout)}") from exc
        self.stats.beats_sent += 1
        self.stats.last_success = self._wall_clock()

    async def _close(self, stream: BeatStream) -> None:
        with trio.move_on_after(CLOSE_WAIT) as scope:
            try:
                await stream.close()
                await stream.wait_closed()
            except StreamLost as exc:
                log.debug("close_failed target=%s err=%s", self.target.addr, exc)
        log.info(
            "stream_closed target=%s beats=%d remote_closed=%s",
            self.target.addr,
            self.stats.beats_sent,
            not scope.cancelled_caught,
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


async def resolve_target(target: Target) -> str:
    """The target's multiaddr with a `/dns*` host resolved to an `/ip4` or `/ip6` one.

    py-libp2p 0.8.1's TCP transport does not dial `/dns4/…` addresses, so the agent
    resolves the name itself, at every dial (the aggregator's address may change),
    under the caller's dial deadline.
    """
    kind = target.addr.split("/", 2)[1]
    if not kind.startswith("dns"):
        return target.addr
    family = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(kind, socket.AF_UNSPEC)
    try:
        infos = await trio.socket.getaddrinfo(
            target.host, target.port, family=family, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise DialFailed(f"dns_failed:{target.host}:{exc}") from exc
    if not infos:
        raise DialFailed(f"dns_failed:{target.host}:no_address")
    # Prefer IPv4 when the name has both and the target said /dns: loopback and
    # dual-stack set-ups are far more common than IPv6-only aggregators.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    ip = str(infos[0][4][0])
    proto = "ip4" if infos[0][0] == socket.AF_INET else "ip6"
    return f"/{proto}/{ip}/tcp/{target.port}/p2p/{target.peer_id}"


class Libp2pConnector:
    """Dials targets over a running libp2p host and opens heartbeat streams.

    The network layer (`heartbeat.net.streams`) does the dialing and translates py-libp2p's
    errors into `DialFailed` / `StreamLost`; this adds the agent's name resolution.
    """

    def __init__(self, host: Any, protocol: str = PROTOCOL_ID) -> None:
        self._dialer = StreamDialer(host, protocol)

    async def connect(self, target: Target) -> BeatStream:
        return await self._dialer.open(await resolve_target(target))
