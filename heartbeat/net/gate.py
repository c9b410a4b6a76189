"""The inbound handshake gate: a bounded number of upgrades at once, in front of the swarm.

py-libp2p 0.8.1 starts every accepted connection's upgrade at once; the gate bounds them
(see `HandshakeGate`). `heartbeat.net.p2p` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.network.exceptions import SwarmException

__all__ = ["HandshakeGate", "gate_inbound_upgrades", "handshake_gate"]


@dataclass
class HandshakeGate:
    """Bounded inbound handshakes: `concurrent` at once, FIFO, at most `max_wait` queued.

    py-libp2p 0.8.1 starts every accepted connection's upgrade (Noise, Yamux, then the
    swarm's registration) at once; in a reconnect storm thousands of handshakes share the
    CPU, each takes longer than the dialers' deadline, and the work is thrown away: the
    accept rate collapses. With the gate the handshakes that run finish quickly, and a
    connection that waited `max_wait` for a slot is closed unanswered (`shed`): its dialer
    fails fast and retries after its reconnect period, instead of timing out later.

    Every connection is accepted at once and waits here, not in the kernel's listen
    backlog: leaving the excess to the backlog (SYNs dropped, the dialers' kernels
    retransmitting them) was measured slower, see docs/CAPACITY.md section 0.
    """

    concurrent: int
    max_wait: float
    on_shed: Callable[[], None] | None = None
    in_progress: int = 0
    waiting: int = 0
    shed: int = 0
    upgraded: int = 0


def gate_inbound_upgrades(
    host: IHost, concurrent: int, max_wait: float, on_shed: Callable[[], None] | None = None
) -> HandshakeGate:
    """Put a `HandshakeGate` in front of the swarm's inbound upgrade (see its docstring)."""
    existing = handshake_gate(host)
    if existing is not None:
        if on_shed is not None:
            existing.on_shed = on_shed
        return existing
    swarm: Any = host.get_network()
    upgrade = swarm.upgrade_inbound_raw_conn
    slots = trio.Semaphore(concurrent)
    gate = HandshakeGate(concurrent, max_wait, on_shed)

    async def gated(raw_conn: Any, maddr: Any) -> Any:
        gate.waiting += 1
        try:
            with trio.move_on_after(max_wait) as waited:
                await slots.acquire()
        finally:
            gate.waiting -= 1
        if waited.cancelled_caught:
            gate.shed += 1
            if gate.on_shed is not None:
                gate.on_shed()
            with trio.move_on_after(1):
                await raw_conn.close()
            raise SwarmException(f"no handshake slot within {max_wait:g}s")
        gate.in_progress += 1
        try:
            conn = await upgrade(raw_conn, maddr)
            gate.upgraded += 1
            return conn
        finally:
            gate.in_progress -= 1
            slots.release()

    swarm.upgrade_inbound_raw_conn = gated
    swarm._fil_handshake_gate = gate
    return gate


def handshake_gate(host: IHost) -> HandshakeGate | None:
    gate = getattr(host.get_network(), "_fil_handshake_gate", None)
    return gate if isinstance(gate, HandshakeGate) else None
