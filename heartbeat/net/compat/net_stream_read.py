"""`NetStream.read` takes its state lock only when someone holds it.

Upstream bug: py-libp2p 0.8.1's `NetStream.read` (libp2p/network/stream/net_stream.py)
enters `async with self._state_lock` on every read just to look at `_state`: a trio
lock's acquire is a full checkpoint (one task switch per read, 8.8 % of a flooded
aggregator's samples, docs/CAPACITY.md section 2). The look is synchronous, so under
cooperative scheduling it is atomic without the lock. Retired by: upstream checking the
state without the lock (or without a checkpoint when it is free).

Seam: `NetStream` is built by the swarm (no stream factory), so `read` is recompiled on
the class with its lock block replaced by one of the same line count (tracebacks keep
the library's file and lines): when the lock is held (a `close_read`, `reset` or state
change is under way) or has waiters, the read still waits for it and then checks the
state that was left; otherwise it checks the same two states (ERROR, RESET) at once.
The read of the muxed stream and every state transition and exception after it are
py-libp2p's code unchanged. What goes is the free lock's checkpoint: the muxed stream's
read is the read's checkpoint (the buffered reader's `read` checks for cancellation
before it takes bytes and waits on its event when there are none).
"""

from __future__ import annotations

from typing import Any

from heartbeat.net.compat._recompile import recompiled_method

__all__ = ["install", "installed", "original_read", "patched_read_source", "uninstall"]

NAME = "net_stream_read"

#: `NetStream.read`'s state check under the lock (py-libp2p 0.8.1's text).
_LOCKED_CHECK = """\
    # Check state atomically to prevent race conditions
    async with self._state_lock:
        if self._state == StreamState.ERROR:
            raise StreamError("Cannot read from stream; stream is in error state")
        elif self._state == StreamState.RESET:
            raise StreamReset("Cannot read from stream; stream is reset")
        elif self._state == StreamState.CLOSE_READ:
            # Only block reads if explicitly closed for reading
            # Allow reads from streams that might still have buffered data
            pass
        # Note: Allow reading from CLOSE_BOTH state - buffered data may exist
"""
#: The same check, the lock waited for only when it is held (same line count).
_CHECK = """\
    # State lock only when held (heartbeat.net.compat.net_stream_read): the check is
    if self._state_lock.locked():  # synchronous, so atomic without a free lock
        async with self._state_lock:
            pass  # wait for its holder, then check the state it left
    if self._state == StreamState.ERROR:
        raise StreamError("Cannot read from stream; stream is in error state")
    elif self._state == StreamState.RESET:
        raise StreamReset("Cannot read from stream; stream is reset")
    # CLOSE_READ and CLOSE_BOTH read on: buffered data may remain
    #
    #
"""
#: `NetStream.read` before the patch (None until installed).
original_read: Any = None


def patched_read_source(source: str) -> str | None:
    """`NetStream.read` with the free-lock checkpoint gone; None if it is not 0.8.1's."""
    import textwrap

    text = textwrap.dedent(source)
    if text.count(_LOCKED_CHECK) != 1 or "super()" in text:
        return None
    return text.replace(_LOCKED_CHECK, _CHECK)


def installed() -> bool:
    return original_read is not None


def install() -> None:
    global original_read
    from libp2p.network.stream.net_stream import NetStream

    if original_read is not None:
        return
    read = recompiled_method(NetStream, "read", patched_read_source)
    original_read = NetStream.__dict__["read"]
    NetStream.read = read  # type: ignore[method-assign]


def uninstall() -> None:
    global original_read
    from libp2p.network.stream.net_stream import NetStream

    if original_read is None:
        return
    NetStream.read = original_read  # type: ignore[method-assign]
    original_read = None
