"""The Yamux class a host negotiates is ours (`HeartbeatYamux`), not py-libp2p's.

Upstream bug: py-libp2p 0.8.1's `MuxerMultistream.new_conn` (libp2p/stream_muxer/
muxer_multistream.py) builds `Yamux(...)` by name for the `/yamux/1.0.0` protocol and
ignores the class passed in `muxer_opt`, so the muxer seam does not work for Yamux.
Retired by: upstream constructing the negotiated `transport_class` (as it does for every
other muxer); then `build_host`'s `muxer_opt` alone suffices and this module goes.

The module global `Yamux` of `muxer_multistream` is replaced by `HeartbeatYamux`
(`yamux_limits`: per-connection stream and ping limits); `uninstall()` restores it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install", "installed", "uninstall"]

NAME = "yamux_limits"
_original: Any = None


def installed() -> bool:
    return _original is not None


def install() -> None:
    global _original
    from libp2p.stream_muxer import muxer_multistream

    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    if _original is not None:
        return
    _original = muxer_multistream.__dict__["Yamux"]
    setattr(muxer_multistream, "Yamux", HeartbeatYamux)  # noqa: B010 (not exported)


def uninstall() -> None:
    global _original
    from libp2p.stream_muxer import muxer_multistream

    if _original is None:
        return
    setattr(muxer_multistream, "Yamux", _original)  # noqa: B010 (not exported)
    _original = None
