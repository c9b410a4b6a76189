"""No accept-loop task per connection: new streams handed straight to their handler.

Upstream bug: py-libp2p 0.8.1's `SwarmConn.start` (libp2p/network/connection/
swarm_connection.py) runs a loop per connection that waits for the session's new streams
and starts each stream's handler: one more task (and a channel) per held connection.
Retired by: upstream having the muxer hand new streams to a callback.

No seam: `SwarmConn` is created by the swarm itself (no factory option), so `start` is
replaced on the class; it keeps py-libp2p's own code for any session that is not a
one-task `HeartbeatYamux` (`yamux_session`, which this fix needs). Here the session hands
each new stream to a handler task started in the swarm's task nursery (the one py-libp2p
runs `SwarmConn.start` in). An exception escaping a handler meets the task manager's rule
as before (a connection shutting down is ignored, anything else stops the swarm).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

from heartbeat.net.compat import yamux_session

__all__ = ["install", "installed", "uninstall"]

log = logging.getLogger(__name__)

NAME = "accept_loop"
_original: Any = None


def installed() -> bool:
    return _original is not None


def install() -> None:
    global _original
    from libp2p.network.connection.swarm_connection import SwarmConn

    if _original is not None:
        return
    original = SwarmConn.__dict__["start"]

    async def start_without_accept_loop(self: Any) -> None:
        """`SwarmConn.start` without its accept loop (the `accept_loop` fix); py-libp2p's
        own for a session that is not a one-task Yamux or a swarm without a manager."""
        muxed = self.muxed_conn
        manager = getattr(self.swarm, "_manager", None)
        nursery = getattr(manager, "_task_nursery", None)
        if type(muxed).start is not yamux_session.one_task_start or nursery is None:
            await original(self)
            return
        from libp2p.network.stream.net_stream import StreamState

        for stream in self.get_streams():
            await stream.set_state(StreamState.OPEN)
        # From here to the swap, no checkpoint: the reader cannot queue a stream between.
        queued, ended = _drain(muxed.new_stream_receive_channel)
        self.event_started.set()
        spawner = _StreamSpawner(nursery, manager, self._handle_muxed_stream)
        for stream in queued:
            spawner.spawn(stream)
        if ended:  # what the accept loop did on MuxedConnUnavailable
            await self.close()
            return
        muxed.new_stream_send_channel = spawner
        muxed.new_stream_receive_channel = _ENDED

    _original = original
    SwarmConn.start = start_without_accept_loop  # type: ignore[method-assign]


def uninstall() -> None:
    global _original
    from libp2p.network.connection.swarm_connection import SwarmConn

    if _original is None:
        return
    SwarmConn.start = _original  # type: ignore[method-assign]
    _original = None


def _drain(channel: Any) -> tuple[list[Any], bool]:
    """The streams queued in a new-stream channel; True if it is closed (no more)."""
    queued = []
    while True:
        try:
            queued.append(channel.receive_nowait())
        except trio.WouldBlock:
            return queued, False
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return queued, True


def _ended_channel() -> Any:
    send, receive = trio.open_memory_channel[Any](0)
    send.close()
    return receive


#: Shared by every session whose streams are handed over: `accept_stream` ends at once.
_ENDED = _ended_channel()


class _StreamSpawner:
    """Stands in for a Yamux session's new-stream send channel: `send` starts the
    stream's handler (`SwarmConn._handle_muxed_stream`) in the swarm's task nursery."""

    __slots__ = ("_handler", "_manager", "_nursery", "closed")

    def __init__(self, nursery: trio.Nursery, manager: Any, handler: Any) -> None:
        self._nursery = nursery
        self._manager = manager
        self._handler = handler
        self.closed = False

    async def send(self, stream: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.spawn(stream)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, stream: Any) -> None:
        self.spawn(stream)

    def spawn(self, stream: Any) -> None:
        if self.closed:
            raise trio.ClosedResourceError("session closed")
        self._nursery.start_soon(_handle_stream, self._manager, self._handler, stream)

    def close(self) -> None:
        self.closed = True


async def _handle_stream(manager: Any, handler: Any, stream: Any) -> None:
    """A stream's handler task. An exception that escapes it meets py-libp2p's task
    manager's rule, as when it escaped the accept loop into the manager: a connection
    shutting down (py-libp2p's own `is_expected_connection_shutdown`) is logged at debug,
    anything else is recorded and stops the swarm."""
    from libp2p.utils.connection_shutdown import is_expected_connection_shutdown

    try:
        await handler(stream)
    except Exception as err:
        if is_expected_connection_shutdown(err):
            log.debug("stream_handler_ended err=%r", err)
            return
        log.exception("stream_handler_escaped")
        manager._errors.append(sys.exc_info())
        manager.cancel()
