"""py-libp2p's own ERROR/WARNING lines, rate-limited and folded into one of ours.

Upstream bug: py-libp2p 0.8.1 logs one ERROR (or WARNING) line per failed stream read,
per incomplete SYN, per connection reset (libp2p/stream_muxer/yamux/yamux.py and the
swarm): a flood of one peer's streams wrote 2,283 ERROR lines in 10 s. Retired by:
upstream logging those peer-caused events at debug.

No seam but logging's own: a filter on the `libp2p` loggers lets `burst` such lines
through per `period` seconds, drops the rest and then logs one
`libp2p_log_folded dropped=N` line of ours. Installed and removed by the compat gate.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LOGGERS", "FoldFilter", "install", "installed", "uninstall"]

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
