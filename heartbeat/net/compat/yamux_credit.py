"""Yamux receive windows credited back go-yamux's way, not on every read.

Upstream bug: py-libp2p 0.8.1's `YamuxStream._auto_tune_and_send_window_update`
(libp2p/stream_muxer/yamux/yamux.py) returns the credit for the bytes of every read at
once: after each read it writes the peer a WINDOW_UPDATE frame (through Noise, one
`send` syscall), so a receiver of small frames (beats) writes one frame per frame it
reads. go-yamux returns credit only once half the window is consumed (its hysteresis,
which py-libp2p also has). Retired by: upstream dropping the credit-on-read branches.

Seam: `YamuxStream` is created by `Yamux` itself (no stream factory), so the method is
recompiled on the class with the two branches replaced by comment lines (same line
count: tracebacks keep the library's file and lines); the window's growth and the
half-window credit are unchanged, so a sender is never stalled.
"""

from __future__ import annotations

from typing import Any

from heartbeat.net.compat._recompile import recompiled_method

__all__ = ["install", "installed", "original_window_update", "patched_window_update_source"]

NAME = "yamux_credit"
_METHOD = "_auto_tune_and_send_window_update"

#: `YamuxStream._auto_tune_and_send_window_update`'s branches that credit a read back at
#: once (py-libp2p 0.8.1's text): one WINDOW_UPDATE frame written per read.
_CREDIT_ON_READ_BRANCHES = """\
        elif 0 < delta < threshold and bytes_read > 0:
            self._window_update_partial_slack += 1
            self.recv_window += delta + bytes_read
            total_delta = delta + bytes_read
            self._pending_recv_release -= bytes_read
            total_delta += self._apply_autotune_epoch(buffered)
        elif _yamux_release_on_read() and bytes_read > 0:
            self.recv_window += bytes_read
            total_delta = bytes_read
            self._pending_recv_release -= bytes_read
            self._window_update_bytes_read_only += 1
            total_delta += self._apply_autotune_epoch(buffered)
"""
#: `_auto_tune_and_send_window_update` before the patch (None until installed).
original_window_update: Any = None


def patched_window_update_source(source: str) -> str | None:
    """The window-update method without its credit-on-read branches; None if not 0.8.1's."""
    import textwrap

    text = textwrap.dedent(source)
    if text.count(_CREDIT_ON_READ_BRANCHES) != 1 or "super()" in text:
        return None
    lines = _CREDIT_ON_READ_BRANCHES.count("\n")
    filler = "        # (credit-on-read branch: heartbeat.net.compat.yamux_credit)\n" * lines
    return text.replace(_CREDIT_ON_READ_BRANCHES, filler)


def installed() -> bool:
    return original_window_update is not None


def install() -> None:
    global original_window_update
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    if original_window_update is not None:
        return
    tuned = recompiled_method(YamuxStream, _METHOD, patched_window_update_source)
    original_window_update = YamuxStream.__dict__[_METHOD]
    setattr(YamuxStream, _METHOD, tuned)


def uninstall() -> None:
    global original_window_update
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    if original_window_update is None:
        return
    setattr(YamuxStream, _METHOD, original_window_update)
    original_window_update = None
