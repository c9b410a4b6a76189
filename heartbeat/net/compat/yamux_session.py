"""One task per Yamux session instead of four.

Upstream bug: py-libp2p 0.8.1's `Yamux.start` (libp2p/stream_muxer/yamux/yamux.py) runs a
nursery per session with the frame reader, an RTT ping loop and a stale-stream sweeper:
three tasks (and their coroutine chains, cancel scopes and events, ~2-4 KB each) per held
connection (docs/CAPACITY.md, 1b). Retired by: upstream sharing the sweeper per muxer and
making the RTT loop optional.

Seam: the Yamux class is a host option (`muxer_opt`); `HeartbeatYamux`
(`yamux_limits.py`) is passed there, and this fix replaces `start` on that subclass only,
never on py-libp2p's `Yamux`. The reader runs in the session's own task; no RTT pings are
sent (pings from the peer are still answered); one `yamux_sweeper` task sweeps every
session's stale streams every 30 s, as each session's own sweeper did.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

__all__ = [
    "install",
    "installed",
    "one_task_start",
    "sweep_yamux_sessions",
    "uninstall",
    "yamux_sweeper",
]

NAME = "yamux_session"

#: Live Yamux sessions started by the one-task `start` (for the shared sweeper).
_SESSIONS: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def installed() -> bool:
    return _installed


def install() -> None:
    global _installed
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    HeartbeatYamux.start = one_task_start  # type: ignore[method-assign]
    _installed = True


def uninstall() -> None:
    global _installed
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    if "start" in HeartbeatYamux.__dict__:
        del HeartbeatYamux.start  # py-libp2p's Yamux.start again
    _installed = False


#: Shared by every session: nothing waits on it once no RTT loop runs (the reader still
#: sets it when a pong arrives).
_NO_PING_WAITER = trio.Event()


async def one_task_start(self: Any) -> None:
    """`Yamux.start` with the frame reader in this task (the `yamux` cut).

    py-libp2p's: a nursery with `_measure_rtt_loop`, `_stale_stream_sweeper` and the
    reader (`nursery.start`), `event_started` set once the reader started, then a wait for
    the three; when the reader ends, the other two are cancelled and the new-stream channel
    closed. Here `event_started` is set and the reader runs at once in this task (nobody
    else runs before it reaches its first read), and the channel is closed the same way.
    """
    if self.event_started.is_set():
        return
    self._ping_event = _NO_PING_WAITER
    _SESSIONS.add(self)
    self._established = True
    self.event_started.set()
    try:
        await self.handle_incoming()
    finally:
        _SESSIONS.discard(self)
    try:
        self.new_stream_send_channel.close()
    except trio.ClosedResourceError:
        pass  # closed by close() or by the reader's error cleanup


def sweep_yamux_sessions() -> int:
    """One round of the stale-stream sweep over every live session; streams reclaimed.

    The same `_sweep_stale_streams` each session's own sweeper ran every 30 s, under the
    session's `streams_lock`; a session whose lock is busy is swept next round.
    """
    reclaimed = 0
    for session in list(_SESSIONS):
        if session.event_shutting_down.is_set():
            _SESSIONS.discard(session)
            continue
        lock = session.streams_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            continue
        try:
            reclaimed += int(session._sweep_stale_streams())
        finally:
            lock.release()
    return reclaimed


@asynccontextmanager
async def yamux_sweeper(interval: float | None = None) -> AsyncIterator[None]:
    """Run the shared stale-stream sweeper for the block (only while the cut is in)."""
    if not _installed:
        yield
        return
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    period = interval if interval is not None else yamux_module._STALE_STREAM_SWEEP_INTERVAL

    async def sweep_forever() -> None:
        deadline = trio.current_time()
        while True:
            deadline += period
            await trio.sleep_until(deadline)
            sweep_yamux_sessions()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep_forever)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
