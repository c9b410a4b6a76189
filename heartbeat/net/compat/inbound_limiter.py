"""The listener's handler task (and inbound-limiter slot) end with their connection.

Upstream bug: py-libp2p 0.8.1's `Swarm._do_handle_inbound_connection` (libp2p/network/
swarm.py) keeps each inbound connection's handler task until the host stops ("Intentional
barrier: keep handler alive"), and with it the connection's slot of the inbound limiter:
every connection ever accepted leaves a task behind (~3 KB), and once `max_connections`
connections have ever been accepted, every new one is refused. Retired by: upstream
waiting on the connection's close instead of the manager's end.

Seam: the handler is a closure-free method the swarm's listener calls; a `Swarm`
subclass would need `new_host`'s whole construction copied, so the method is recompiled
on the class from its own source with the barrier's wait replaced (same line count:
tracebacks keep the library's file and lines). `uninstall()` restores it.
"""

from __future__ import annotations

import textwrap
from typing import Any

import trio

from heartbeat.net.compat._recompile import recompiled_method

__all__ = ["install", "installed", "patched_inbound_source", "uninstall"]

NAME = "inbound_limiter"
_METHOD = "_do_handle_inbound_connection"
_original: Any = None

#: `Swarm._do_handle_inbound_connection`'s barrier after a TCP upgrade (0.8.1's text,
#: dedented as a function).
_BARRIER = """\
        raw_conn = RawConnection(read_write_closer, False)
        await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        # Intentional barrier: keep handler alive.
        await self.manager.wait_finished()
"""
_HOLD = """\
        raw_conn = RawConnection(read_write_closer, False)
        _fil_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        # Intentional barrier: keep handler alive.
        await _fil_hold_inbound(self, _fil_conn)
"""


def patched_inbound_source(source: str) -> str | None:
    """The inbound handler's source holding until its connection closes; None if the
    source is not 0.8.1's."""
    text = textwrap.dedent(source)
    if text.count(_BARRIER) != 1 or "super()" in text:
        return None
    return text.replace(_BARRIER, _HOLD)


async def _hold_inbound(swarm: Any, conn: Any) -> None:
    """Keep an inbound connection's handler (and so its socket) until the connection
    closes. trio's listener closes the socket once the handler returns; the swarm closes
    every connection before its listeners when it stops, so this also ends then."""
    closed = getattr(conn, "event_closed", None)
    if isinstance(closed, trio.Event):
        await closed.wait()
    else:  # another muxer: py-libp2p's barrier
        await swarm.manager.wait_finished()


def installed() -> bool:
    return _original is not None


def install() -> None:
    global _original
    from libp2p.network import swarm as swarm_module

    if _original is not None:
        return
    swarm_cls: Any = swarm_module.Swarm
    new = recompiled_method(swarm_cls, _METHOD, patched_inbound_source)
    swarm_module.__dict__["_fil_hold_inbound"] = _hold_inbound
    _original = swarm_cls.__dict__[_METHOD]
    setattr(swarm_cls, _METHOD, new)


def uninstall() -> None:
    global _original
    from libp2p.network import swarm as swarm_module

    if _original is None:
        return
    setattr(swarm_module.Swarm, _METHOD, _original)
    swarm_module.__dict__.pop("_fil_hold_inbound", None)
    _original = None
