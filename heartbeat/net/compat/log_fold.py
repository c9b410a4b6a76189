"""py-libp2p's own ERROR/WARNING lines, rate-limited and folded into one of ours.

Upstream bug: py-libp2p 0.8.1 logs one ERROR (or WARNING) line per failed stream read,
per incomplete SYN, per connection reset (libp2p/stream_muxer/yamux/yamux.py and the
swarm): a flood of one peer's streams wrote 2,283 ERROR lines in 10 s. Retired by:
upstream logging those peer-caused events at debug.

No seam but logging's own: a filter on the `libp2p` loggers lets `burst` such lines
through per `period` seconds, drops the rest and then logs one
`libp2p_log_folded dropped=N` line of ours. Installed and removed by the compat gate.

The agent's side (`install_agent_demotion`, from the agent's command line): an agent
redialing a dead aggregator got ~4 `ERROR libp2p.transport.tcp.tcp Failed to open TCP
stream` lines per attempt (py-libp2p retries inside one dial) around its own
`dial_failed`, whose escalation policy (WARNING once, DEBUG, ERROR every 10 minutes,
INFO on recovery) is the one an operator alerts on. Every dial failure and every lost
stream of the agent reaches its own log through `DialFailed` / `StreamLost`, so
py-libp2p's WARNING/ERROR lines of its dial path (`AGENT_LOGGERS`; of `basic_host` only
`new_stream`'s) are DEBUG lines there. This is our logging policy, not a patch of
py-libp2p: it is outside the gate's `FIXES` and stays when the gate refuses.
"""

from __future__ import annotations

import logging
import time

from heartbeat.common.logs import DemoteFilter

__all__ = [
    "AGENT_LOGGERS",
    "LOGGERS",
    "DialDemoteFilter",
    "FoldFilter",
    "agent_demotion",
    "install",
    "install_agent_demotion",
    "installed",
    "uninstall",
    "uninstall_agent_demotion",
]

log = logging.getLogger(__name__)

NAME = "log_fold"
#: The libp2p loggers that report peer-caused events.
LOGGERS = (
    "libp2p.stream_muxer.yamux.yamux",
    "libp2p.network.swarm",
    "libp2p.network.connection.swarm_connection",
    "libp2p.host.basic_host",
)


class FoldFilter(logging.Filter):
    """At most `burst` WARNING-or-worse records per `period` s; the rest counted."""

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.window_start = -period
        self.passed = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now - self.window_start >= self.period:
            if self.dropped:
                log.warning("libp2p_log_folded dropped=%d period=%gs", self.dropped, self.period)
            self.window_start, self.passed, self.dropped = now, 0, 0
        if self.passed < self.burst:
            self.passed += 1
            return True
        self.dropped += 1
        return False


_filter: FoldFilter | None = None


def installed() -> bool:
    return _filter is not None


def install() -> None:
    global _filter
    if _filter is not None:
        return
    _filter = FoldFilter()
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_filter)


def uninstall() -> None:
    global _filter
    if _filter is None:
        return
    for name in LOGGERS:
        logging.getLogger(name).removeFilter(_filter)
    _filter = None


#: py-libp2p's loggers on an agent's dial and stream path (each record's own logger:
#: a filter on a logger does not see its children's records).
AGENT_LOGGERS = (
    "libp2p.transport.tcp.tcp",
    "libp2p.transport.upgrader",
    "libp2p.transport.manager",
    "libp2p.network.swarm",
    "libp2p.network.connection.swarm_connection",
    "libp2p.network.connection.raw_connection",
    "libp2p.network.auto_connector",
    "libp2p.security.noise.io",
    "libp2p.security.noise.messages",
    "libp2p.security.noise.patterns",
    "libp2p.protocol_muxer.multiselect_client",
    "libp2p.stream_muxer.yamux.yamux",
    "libp2p.host.basic_host",
)
#: Of these loggers, only these functions' records (the rest of the logger says other things).
_ONLY_FUNCTIONS = {"libp2p.host.basic_host": frozenset({"new_stream"})}


class DialDemoteFilter(DemoteFilter):
    """WARNING and worse of `AGENT_LOGGERS` become DEBUG (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        only = _ONLY_FUNCTIONS.get(record.name)
        if only is not None and record.funcName not in only:
            return True
        return super().filter(record)


_agent_filter: DialDemoteFilter | None = None


def agent_demotion() -> DialDemoteFilter | None:
    """The installed agent-side filter (its `demoted` count), or None."""
    return _agent_filter


def install_agent_demotion() -> DialDemoteFilter:
    """Demote py-libp2p's dial-path lines to DEBUG, first on each logger: before
    `FoldFilter` counts them. Idempotent."""
    global _agent_filter
    if _agent_filter is None:
        _agent_filter = DialDemoteFilter()
    _agent_filter.attach(AGENT_LOGGERS)
    return _agent_filter


def uninstall_agent_demotion() -> None:
    global _agent_filter
    if _agent_filter is not None:
        _agent_filter.detach(AGENT_LOGGERS)
        _agent_filter = None
