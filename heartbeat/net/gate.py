"""The inbound handshake gate: bounded upgrades at once, shared fairly between addresses.

py-libp2p 0.8.1 starts every accepted connection's upgrade at once; the gate bounds them
(see `HandshakeGate`), decides through `heartbeat.net.fairness` who runs and who yields,
closes a dialer silent past `first_bytes_timeout`, counts every refusal by reason
(`heartbeat.net.refusals`) and logs it rate-limited by cause and IP.
`heartbeat.net.p2p` re-exports these names.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.network.exceptions import SwarmException
from libp2p.protocol_muxer.exceptions import MultiselectClientError, MultiselectError
from libp2p.transport.exceptions import SecurityUpgradeFailure

from heartbeat.net.fairness import LogLimiter, RefusalWindow, SlotTable
from heartbeat.net.refusals import REFUSALS

__all__ = [
    "GateReason",
    "HandshakeGate",
    "Libp2pUpgradeLogFilter",
    "gate_inbound_upgrades",
    "handshake_gate",
]

log = logging.getLogger(__name__)


class GateReason(StrEnum):
    """Why the gate refused a connection; the value is the `reason` label."""

    GATE_SHED_CONTENDED = "gate_shed_contended"
    GATE_QUEUE_TIMEOUT = "gate_queue_timeout"
    FIRST_BYTES_TIMEOUT = "first_bytes_timeout"
    UPGRADE_TIMEOUT = "upgrade_timeout"
    SECURITY_NEGOTIATION = "security_negotiation"
    NOT_ALLOWLISTED = "not_allowlisted"
    PER_IP_REFUSAL_CAP = "per_ip_refusal_cap"


#: Failures that count towards the per-IP cap only when the gate was not contended: under
#: load a handshake is slow because of the server, and its dialer gives up mid-way.
_COUNTS_WHEN_IDLE = frozenset(
    {
        GateReason.FIRST_BYTES_TIMEOUT,
        GateReason.UPGRADE_TIMEOUT,
        GateReason.SECURITY_NEGOTIATION,
    }
)


#: Connections that may queue per handshake slot before the address holding most is shed
#: (its newest waiter). A reconnect storm comes from few addresses (one, behind a NAT or on
#: loopback): with 4 per slot most of its dials were shed at once and redialled 10 s later,
#: each redial a TCP and Noise start thrown away on both sides; 32 (2,048 sockets at the
#: default 64 slots, each closed after `max_wait`) brought back more agents within 120 s in
#: every run (3,023 and 4,334 of 10,000 against 2,286 and 2,783: docs/CAPACITY.md section
#: 4, round 7). Fairness does not depend on it: the address holding fewest gets the next
#: slot, and one holding more yields a running one.
QUEUE_PER_SLOT = 32


@dataclass
class HandshakeGate:
    """Bounded inbound handshakes: `concurrent` at once, at most `max_wait` queued.

    py-libp2p 0.8.1 starts every accepted connection's upgrade (Noise, Yamux, then the
    swarm's registration) at once; in a reconnect storm thousands of handshakes share the
    CPU, each takes longer than the dialers' deadline, and the work is thrown away: the
    accept rate collapses. With the gate the handshakes that run finish quickly, and a
    connection that waited `max_wait` for a slot is closed unanswered (`shed`): its dialer
    fails fast and retries after its reconnect period, instead of timing out later.

    The slots are shared fairly (`SlotTable`): one address holding many idle sockets
    yields its slots to the others. A dialer that sends nothing for `first_bytes_timeout`
    is closed. An address refused more than `refusal_cap` times per `refusal_window`
    beyond its successful handshakes in the window is closed at accept; what counts is
    what the dialer did: not on the allowlist, always; silence, a timed-out or a refused
    upgrade, only while the gate was not contended (under load they are the server's
    slowness: the dialers give up mid-handshake); a shed, never.

    Every connection is accepted at once and waits here, not in the kernel's listen
    backlog: leaving the excess to the backlog (SYNs dropped, the dialers' kernels
    retransmitting them) was measured slower, see docs/CAPACITY.md section 0.
    """

    concurrent: int
    max_wait: float
    on_shed: Callable[[], None] | None = None
    first_bytes_timeout: float = 2.0
    refusal_cap: int = 20
    refusal_window: float = 60.0
    in_progress: int = 0
    waiting: int = 0
    shed: int = 0
    upgraded: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    table: SlotTable = field(init=False)
    window: RefusalWindow = field(init=False)
    log_limiter: LogLimiter = field(default_factory=LogLimiter)

    def __post_init__(self) -> None:
        self.table = SlotTable(self.concurrent, max_queue=max(self.concurrent * QUEUE_PER_SLOT, 16))
        self.window = RefusalWindow(self.refusal_cap, self.refusal_window)

    def refuse(self, reason: str, ip: str | None, *, contended: bool = False) -> None:
        """Count (and log, rate-limited) one refusal of a connection from `ip`;
        `contended`: the connection had to queue for its slot, or others queue now."""
        REFUSALS.add(reason)
        self.refused[reason] = self.refused.get(reason, 0) + 1
        now = trio.current_time()
        where = ip or "?"
        # Only what the dialer did counts towards its cap, not the server's own load: a
        # reconnect storm from one NAT is never locked out for its sheds, nor for the
        # handshakes its dialers gave up on while the gate was contended.
        contended = contended or bool(self.table.queued)
        if ip is not None and reason == GateReason.NOT_ALLOWLISTED:
            self.window.refused(ip, now, after_upgrade=True)
        elif ip is not None and reason in _COUNTS_WHEN_IDLE and not contended:
            self.window.refused(ip, now)
        if reason in (GateReason.GATE_SHED_CONTENDED, GateReason.GATE_QUEUE_TIMEOUT):
            self.shed += 1
            if self.on_shed is not None:
                self.on_shed()
        suppressed = self.log_limiter.allow(str(reason), where, now)
        if suppressed is not None:
            log.warning("inbound_refused reason=%s ip=%s suppressed=%d", reason, where, suppressed)


def _remote_ip(raw_conn: Any) -> str | None:
    try:
        addr = raw_conn.get_remote_address()
    except (AttributeError, OSError):
        return None
    return str(addr[0]) if addr else None


def _failure_reason(exc: BaseException) -> str | None:
    """The refusal reason of a failed upgrade, by exception type (None: not a refusal)."""
    cause = exc.__cause__
    if isinstance(cause, SecurityUpgradeFailure) and isinstance(
        cause.__cause__, MultiselectError | MultiselectClientError
    ):
        return GateReason.SECURITY_NEGOTIATION
    if isinstance(exc.__context__, trio.TooSlowError):
        return GateReason.UPGRADE_TIMEOUT
    return None


class _FirstBytes:
    """Wraps `raw_conn.read`: the first non-empty read lifts the first-bytes deadline."""

    def __init__(self, raw_conn: Any, scope: trio.CancelScope) -> None:
        self.heard = False
        read = raw_conn.read

        async def first_read(n: int | None = None) -> bytes:
            data: bytes = await read(n)
            if data and not self.heard:
                self.heard = True
                scope.deadline = float("inf")
                raw_conn.read = read
            return data

        raw_conn.read = first_read


def gate_inbound_upgrades(
    host: IHost,
    concurrent: int,
    max_wait: float,
    on_shed: Callable[[], None] | None = None,
    *,
    first_bytes_timeout: float = 2.0,
    refusal_cap: int = 20,
    refusal_window: float = 60.0,
) -> HandshakeGate:
    """Put a `HandshakeGate` in front of the swarm's inbound upgrade (see its docstring)."""
    existing = handshake_gate(host)
    if existing is not None:
        if on_shed is not None:
            existing.on_shed = on_shed
        return existing
    swarm: Any = host.get_network()
    upgrade = swarm.upgrade_inbound_raw_conn
    gate = HandshakeGate(
        concurrent,
        max_wait,
        on_shed,
        first_bytes_timeout=first_bytes_timeout,
        refusal_cap=refusal_cap,
        refusal_window=refusal_window,
    )
    tickets = itertools.count()
    #: The running handshakes' and the waiters' cancel scopes, by ticket.
    scopes: dict[int, trio.CancelScope] = {}
    admitted: dict[int, trio.Event] = {}
    dropped: dict[int, str] = {}

    def drop(ticket: int | None, reason: str) -> None:
        if ticket is not None and ticket in scopes and ticket not in dropped:
            dropped[ticket] = reason
            scopes[ticket].cancel()

    def leave(ticket: int) -> None:
        for nxt in gate.table.leave(ticket):
            admitted[nxt].set()
        gate.in_progress = len(gate.table.running)
        gate.waiting = len(gate.table.queued)

    async def close(raw_conn: Any) -> None:
        with trio.move_on_after(1):
            await raw_conn.close()

    async def gated(raw_conn: Any, maddr: Any) -> Any:
        ip = _remote_ip(raw_conn)
        now = trio.current_time()
        if ip is not None and gate.window.capped(ip, now):
            gate.refuse(GateReason.PER_IP_REFUSAL_CAP, ip)
            await close(raw_conn)
            raise SwarmException(f"refused at accept: {ip} over the refusal cap")
        ticket = next(tickets)
        event = admitted[ticket] = trio.Event()
        scope = scopes[ticket] = trio.CancelScope()
        queued = False
        try:
            arrival = gate.table.arrive(ticket, ip or "?", now)
            queued = not arrival.admitted
            if arrival.admitted:
                event.set()
            drop(arrival.preempt, GateReason.GATE_SHED_CONTENDED)
            drop(arrival.shed, GateReason.GATE_SHED_CONTENDED)
            gate.in_progress = len(gate.table.running)
            gate.waiting = len(gate.table.queued)
            with scope:
                with trio.move_on_after(max_wait) as waited:
                    await event.wait()
                if waited.cancelled_caught:
                    dropped.setdefault(ticket, GateReason.GATE_QUEUE_TIMEOUT)
                else:
                    scope.deadline = trio.current_time() + gate.first_bytes_timeout
                    _FirstBytes(raw_conn, scope)
                    conn = await upgrade(raw_conn, maddr)
                    gate.upgraded += 1
                    if ip is not None:
                        gate.window.upgraded(ip, trio.current_time())
                    return conn
            if ticket not in dropped:  # the first-bytes deadline
                dropped[ticket] = GateReason.FIRST_BYTES_TIMEOUT
            reason = dropped[ticket]
            gate.refuse(reason, ip, contended=queued)
            await close(raw_conn)
            raise SwarmException(f"inbound connection refused: {reason}")
        except SwarmException as exc:
            reason_of = _failure_reason(exc)
            if reason_of is not None:
                gate.refuse(reason_of, ip, contended=queued)
            raise
        finally:
            leave(ticket)
            del scopes[ticket], admitted[ticket]
            dropped.pop(ticket, None)

    swarm.upgrade_inbound_raw_conn = gated
    swarm._fil_handshake_gate = gate
    return gate


def handshake_gate(host: IHost) -> HandshakeGate | None:
    gate = getattr(host.get_network(), "_fil_handshake_gate", None)
    return gate if isinstance(gate, HandshakeGate) else None


class Libp2pUpgradeLogFilter(logging.Filter):
    """Folds py-libp2p's ERROR lines about failed inbound upgrades into the gate's own
    rate-limited lines: the record is dropped, one line per minute says how many were."""

    def __init__(self, period: float = 60.0) -> None:
        super().__init__()
        self.limiter = LogLimiter(period)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "upgrade" not in str(record.msg):
            return True
        suppressed = self.limiter.allow("libp2p_upgrade_error", record.name, record.created)
        if suppressed is not None:
            log.warning(
                "libp2p_upgrade_failed logger=%s suppressed=%d msg=%s",
                record.name,
                suppressed,
                record.getMessage()[:200],
            )
        return False
