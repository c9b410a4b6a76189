"""The connection-tracker reconcile in `Swarm.add_conn`, at most every few seconds.

Upstream bug: py-libp2p 0.8.1's `Swarm.add_conn` (libp2p/network/swarm.py) rebuilds the
set of every live connection id (as text) and reconciles the resource manager's tracker
against it on EVERY accepted or dialled connection: O(connections) per accept, 28 % of
an aggregator's CPU while accepting at ~5,000 connections (py-spy, docs/CAPACITY.md). The
reconcile only prunes tracker entries older than 30 s whose connection is gone, so
running it every few seconds prunes the same entries, a few seconds later. Retired by:
an upstream reconcile on a timer (or an incremental tracker).

Seam: the swarm is built inside `new_host`; the `HeartbeatSwarm` subclass would need the
whole host construction copied, so `add_conn` is recompiled on the class from its own
source with one condition added (same line count: tracebacks keep the library's file
and lines). `uninstall()` restores the original function.
"""

from __future__ import annotations

import time
from typing import Any

from heartbeat.net.compat._recompile import recompiled_method

__all__ = [
    "install",
    "installed",
    "original_add_conn",
    "patched_add_conn_source",
    "reconcile_due",
    "uninstall",
]

NAME = "reconcile"

#: What `install_throttled_reconcile` changes in `Swarm.add_conn` (py-libp2p 0.8.1's text).
_RECONCILE_BLOCK = """\
        if reconcile_lifecycle is not None:
            try:
                live_ids = {
                    str(id(sc.muxed_conn))
                    for peer_conns in self.connections.values()
                    for sc in peer_conns
                }
"""
_RECONCILE_GUARD = "        if reconcile_lifecycle is not None and _fil_reconcile_due(self):\n"
#: `Swarm.add_conn` before the patch (None until installed); tests compare with it.
original_add_conn: Any = None


def reconcile_due(swarm: Any, interval: float, now: float) -> bool:
    """True at most once per `interval` seconds per swarm (then it records `now`)."""
    last = getattr(swarm, "_fil_last_reconcile", None)
    if last is not None and now - last < interval:
        return False
    swarm._fil_last_reconcile = now
    return True


def patched_add_conn_source(source: str) -> str | None:
    """`Swarm.add_conn`'s source with the reconcile throttled; None if it is not 0.8.1's."""
    import textwrap

    text = textwrap.dedent(source)
    if text.count(_RECONCILE_BLOCK) != 1 or "super()" in text:
        return None
    guarded = _RECONCILE_GUARD + _RECONCILE_BLOCK.split("\n", 1)[1]
    return text.replace(_RECONCILE_BLOCK, guarded)


def installed() -> bool:
    return original_add_conn is not None


def install(interval: float = 5.0) -> None:
    """Run the reconcile at most every `interval` s per swarm; idempotent."""
    global original_add_conn
    from libp2p.network import swarm as swarm_module

    swarm_cls: Any = swarm_module.Swarm
    if original_add_conn is not None:
        return

    def due(swarm: Any) -> bool:
        return reconcile_due(swarm, interval, time.monotonic())

    new_add_conn = recompiled_method(swarm_cls, "add_conn", patched_add_conn_source)
    swarm_module.__dict__["_fil_reconcile_due"] = due
    original_add_conn = swarm_cls.__dict__["add_conn"]
    swarm_cls.add_conn = new_add_conn


def uninstall() -> None:
    global original_add_conn
    from libp2p.network import swarm as swarm_module

    if original_add_conn is None:
        return
    swarm_module.Swarm.add_conn = original_add_conn  # type: ignore[method-assign]
    swarm_module.__dict__.pop("_fil_reconcile_due", None)
    original_add_conn = None
