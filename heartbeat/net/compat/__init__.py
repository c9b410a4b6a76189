"""Every fix of py-libp2p 0.8.1 (and noiseprotocol 0.3.1) behind ONE version gate.

One module per fix, each naming the upstream bug and what would retire it. The gate
(`verify`) checks the exact distributions (`DISTRIBUTIONS`) and the sha256 of every
library file a fix patches or relies on (`FILES`); `install_all` refuses, with a
`CompatError` naming the distribution or file, to run on anything else: the fixes were
written against those sources and stock 0.8.1 is not safe to run as a server (its
inbound limiter leaks a slot per connection ever accepted and refuses every new
connection after `max_connections`). `install_all(..., allow_unpatched=True)` instead
runs py-libp2p's stock code with a warning stating that cost. Every fix is undone by
`uninstall_all()` (stock state restored exactly).

The fixes are process-wide (py-libp2p's classes are). Where py-libp2p has a seam it is
used (`build_host`'s options: Noise only, the inbound negotiation deadline); the Yamux
limits ride on a subclass, `HeartbeatYamux`, that `muxer_opt` should carry but 0.8.1
ignores for Yamux (`yamux_muxer`), and the sessions' one-task `start` is set on that
subclass only (`yamux_session`), never on py-libp2p's `Yamux`; so is its frame reader,
the buffered receive path (`buffered_read`, on by default: a stream's bytes that came
before its RST are read before the reset, whatever the scheduling; see its docstring).
`net_stream_read` keeps `NetStream.read` from entering its state lock (a checkpoint) on
every read when no one holds it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType

from heartbeat.common.pinned import verify_pinned
from heartbeat.net.compat import (
    accept_loop,
    buffered_read,
    inbound_limiter,
    log_fold,
    net_stream_read,
    noise_memory,
    reconcile,
    task_lookup,
    yamux_credit,
    yamux_muxer,
    yamux_session,
)
from heartbeat.net.errors import CompatError

__all__ = [
    "DISTRIBUTIONS",
    "FILES",
    "FIXES",
    "MEMORY_CUTS",
    "STOCK_COST",
    "CompatOptions",
    "gate_ok",
    "install_all",
    "installed_fixes",
    "uninstall_all",
    "verify",
]

log = logging.getLogger(__name__)

#: The exact distributions every fix was written for.
DISTRIBUTIONS = {"libp2p": "0.8.1", "noiseprotocol": "0.3.1"}

#: sha256 of every library source file a fix replaces code of or relies on.
FILES = {
    "libp2p.network.swarm": "de38ce6378189974b77cf1e2147c27f9cb14ed8b5612b2b01d34c655ec653162",
    "libp2p.stream_muxer.yamux.yamux": (
        "1003b907c401ba5bbe8fbc46090610ac7c30ebf24d7006d582ec7a130a458b15"
    ),
    "libp2p.tools.anyio_service.trio_manager": (
        "116b6e6b9e9226a5f395d700624de47827c033c22fcb99526545919702ad985e"
    ),
    "libp2p.tools.anyio_service.trio_tasks": (
        "b30edbd5f9ae3308a965b17ec3e0f5a1bed303deb7b58f587e0cc7f35d3ecde7"
    ),
    "libp2p.network.connection.swarm_connection": (
        "02bd6b93b095f9fda2ebaefc4b36ecf4e630029b0676453e11a8e1b5c241d5e6"
    ),
    "libp2p.stream_muxer.muxer_multistream": (
        "9429027d809f513147deef97581eeee294da0ac923ad2251c784fbb8a986e24d"
    ),
    "libp2p.host.basic_host": "e5bd8f6c2b0b6ff04d4a63ef51a3f7087b7063a65cf69f74a02e36e3d859f7cb",
    "noise.backends.default": "ac08b38e02a41a414eed9b2dc7c2a9a8c63bf7bcc6e5a2e89e8a0a296a8b2d95",
    "noise.backends.default.ciphers": (
        "b63430b05ef1ada9b8123e48e07038f2f6a295fa1fa4b19596cebd769276ae38"
    ),
    "noise.functions.cipher": "ab910ae35aca33081c82882e3a74a8c81439b900aab12f9612fb92f384413098",
    "noise.state": "6c042444e91e06bbe184bf4810e78241848e086ac776e769fdba38c9c31eaecd",
    "noise.noise_protocol": "37abb8c458dce19514edfbbbe4b27716edb1d1afb9af462859c2a458be5114cd",
    # The buffered receive path (`buffered_read`) reads beneath these layers.
    "libp2p.security.secure_session": (
        "3c56b3b06f2ec6dfd9585c73a0c323c02f039abfda8ad83ce27a5c8dec2f2b80"
    ),
    "libp2p.security.noise.io": (
        "a2194d3c2695e688061ea0efbdbaf26522d4522fd600b2e36fd9394fafaa247f"
    ),
    "libp2p.io.trio": "1bc7be280610c1b1787c6d1b81381156f2d476182e64a20208cf43510b4cb049",
    "libp2p.network.connection.raw_connection": (
        "5b75c7d077a97921f5d6f09ae53c126478539cd359a04234342a2440227958b6"
    ),
    "noise.connection": "0953d68fdfc8aa84f5692f979b612a6ab53e5a161941a9d727a684c1fd0c556f",
    "libp2p.network.stream.net_stream": (
        "d637e9fec092784bdce07ea09e772cfc8a70d71923459836c4261a68e754d7f8"
    ),
}

#: The global fixes, in install order (`uninstall_all` undoes them in reverse).
FIXES: tuple[ModuleType, ...] = (
    task_lookup,
    reconcile,
    yamux_credit,
    yamux_muxer,
    yamux_session,
    buffered_read,
    net_stream_read,
    accept_loop,
    noise_memory,
    inbound_limiter,
    log_fold,
)

#: The memory cuts' names as the benchmarks' `--memory-cuts` spells them.
MEMORY_CUTS = ("yamux", "accept", "noise", "inbound")
_CUT_FIX = {
    "yamux": yamux_session,
    "accept": accept_loop,
    "noise": noise_memory,
    "inbound": inbound_limiter,
}

STOCK_COST = (
    "running py-libp2p's stock code: its inbound limiter leaks a slot per connection "
    "ever accepted and refuses every new connection after max_connections; no Yamux "
    "stream/ping limits; O(connections) accepts; ~40% more memory per connection"
)


@dataclass(frozen=True)
class CompatOptions:
    """Benchmark variants (not for production): each switch brings back one of
    py-libp2p's behaviours, to measure the "before" of a fix. The defaults are the
    product's configuration."""

    fast_task_lookup: bool = True
    throttle_reconcile: bool = True
    #: py-libp2p's Yamux credit on every read (the `yamux_credit` fix off).
    yamux_release_on_read: bool = False
    #: Any of `MEMORY_CUTS`; () is py-libp2p's per-connection memory.
    memory_cuts: tuple[str, ...] = MEMORY_CUTS
    #: Identify every connecting peer (py-libp2p's default).
    identify_peers: bool = False
    #: One socket receive serves many frames (`buffered_read`, the default); False is
    #: py-libp2p's frame reader (the benchmarks' `--py-libp2p-read`).
    buffered_read: bool = True

    def wanted(self) -> tuple[ModuleType, ...]:
        cuts = set(self.memory_cuts)
        unknown = cuts - set(MEMORY_CUTS)
        if unknown:
            raise ValueError(f"unknown memory cuts: {sorted(unknown)}")
        if "accept" in cuts and "yamux" not in cuts:
            raise ValueError("memory cut accept needs the yamux cut")
        chosen: set[ModuleType] = {log_fold, yamux_muxer, net_stream_read}
        chosen |= {_CUT_FIX[c] for c in cuts}
        if self.fast_task_lookup:
            chosen.add(task_lookup)
        if self.throttle_reconcile:
            chosen.add(reconcile)
        if not self.yamux_release_on_read:
            chosen.add(yamux_credit)
        if self.buffered_read:
            chosen.add(buffered_read)
        return tuple(fix for fix in FIXES if fix in chosen)


def verify() -> None:
    """Raise `CompatError` unless the distributions and every file are the recorded ones."""
    verify_pinned(DISTRIBUTIONS, FILES, CompatError, "the libp2p fixes")


@functools.cache
def _gate_result() -> str | None:
    try:
        verify()
    except CompatError as exc:
        return str(exc)
    return None


def gate_ok() -> bool:
    """True if `verify` passes (checked once per process): seam-based fixes apply."""
    return _gate_result() is None


def install_all(
    options: CompatOptions | None = None, *, allow_unpatched: bool = False
) -> dict[str, bool]:
    """Install the fixes `options` wants (and undo the others); {fix: installed}.

    Raises `CompatError` if the gate refuses, unless `allow_unpatched`: then every fix
    is left out, a WARNING states the cost, and py-libp2p's stock code runs.
    """
    options = options or CompatOptions()
    wanted = options.wanted()
    try:
        verify()
    except CompatError as exc:
        if not allow_unpatched:
            raise
        uninstall_all()
        log.warning("libp2p_unpatched reason=%r cost=%r", str(exc), STOCK_COST)
        return installed_fixes()
    for fix in reversed(FIXES):
        if fix not in wanted:
            fix.uninstall()
    for fix in wanted:
        fix.install()
    return installed_fixes()


def uninstall_all() -> None:
    """Undo every fix, last installed first: py-libp2p's stock state."""
    for fix in reversed(FIXES):
        fix.uninstall()


def installed_fixes() -> dict[str, bool]:
    """{fix name: installed} for every fix."""
    return {fix.NAME: bool(fix.installed()) for fix in FIXES}
