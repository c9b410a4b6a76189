"""Hand freed heap back to the system after a flood (glibc's `malloc_trim`).

Not a py-libp2p bug: CPython frees a flood's objects, but glibc keeps the freed arenas
mapped, so the RSS stays at the flood's peak (measured: 465 MB after the attacker of a
476 MB flood left). `malloc_trim(0)` returns them. It walks the heap (milliseconds at a
few hundred MB), so it runs at most once per `MIN_INTERVAL` seconds; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import time
from typing import Any

__all__ = ["MIN_INTERVAL", "soon", "trim"]

log = logging.getLogger(__name__)

MIN_INTERVAL = 10.0
_last = -MIN_INTERVAL
_libc: Any = None


def trim() -> bool:
    """`malloc_trim(0)` now, if glibc is there; True if it returned memory."""
    global _libc
    if _libc is None:
        try:  # glibc's soname first: find_library runs ldconfig in a subprocess
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    return bool(_libc.malloc_trim(0))


def soon() -> None:
    """Trim unless one ran in the last `MIN_INTERVAL` seconds (called as a flood ends)."""
    global _last
    now = time.monotonic()
    if now - _last < MIN_INTERVAL:
        return
    _last = now
    log.info("malloc_trim returned=%s", trim())
