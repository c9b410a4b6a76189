"""Benchmark variants: the "before" switches of the py-libp2p fixes, outside the product.

The benchmarks in `bench/` measure each fix against py-libp2p's own behaviour by starting
the aggregator with one of these flags. They are not settings: no environment variable, no
TOML key, absent from `--help` (bench/README.md lists them), and never part of
`AggregatorConfig`. The defaults are the product's behaviour. Worker 0 hands its variants
to its workers on their command line (`argv`).

Pure: argparse wiring and values only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from heartbeat.errors import ConfigError

if TYPE_CHECKING:
    from heartbeat.net.compat import CompatOptions

__all__ = ["MEMORY_CUTS", "BenchVariants", "add_variant_flags", "parse_memory_cuts"]

#: The cuts `heartbeat.net.compat.CompatOptions` knows, in its order.
MEMORY_CUTS = ("yamux", "accept", "noise", "inbound")


def parse_memory_cuts(value: str) -> tuple[str, ...]:
    """`yamux,noise`, `all` or `none`; in `MEMORY_CUTS` order. ValueError otherwise."""
    names = {v.strip().lower() for v in value.split(",")} - {""}
    if names == {"all"}:
        return MEMORY_CUTS
    if names == {"none"}:
        return ()
    unknown = names - set(MEMORY_CUTS)
    if unknown or not names:
        raise ValueError(f"unknown cut(s) {sorted(unknown)}; known: {', '.join(MEMORY_CUTS)}")
    return tuple(cut for cut in MEMORY_CUTS if cut in names)


@dataclass(frozen=True)
class BenchVariants:
    """Which py-libp2p fixes a benchmark run turns off (docs/CAPACITY.md)."""

    #: py-libp2p's O(connections) parent-task search replaced by an O(1) lookup.
    fast_task_lookup: bool = True
    #: py-libp2p's connection tracker reconciled at most every 5 s, not on every accept.
    throttle_reconcile: bool = True
    #: A Yamux WINDOW_UPDATE after every read (py-libp2p's default; off: at half the window).
    yamux_release_on_read: bool = False
    #: py-libp2p's per-connection memory cut from outside; () is py-libp2p's behaviour.
    memory_cuts: tuple[str, ...] = MEMORY_CUTS
    #: Identify towards every connecting agent (py-libp2p's default).
    identify_peers: bool = False
    #: One socket receive serves many Noise/Yamux frames (off: py-libp2p's frame reader,
    #: `--py-libp2p-read`; heartbeat.net.compat.CompatOptions).
    buffered_read: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchVariants:
        """The variants `add_variant_flags` parsed; `ConfigError` for a bad `--memory-cuts`."""
        values = {f.name: getattr(args, f"variant_{f.name}", None) for f in fields(cls)}
        cuts = values.pop("memory_cuts")
        out = cls(**{k: v for k, v in values.items() if v is not None})
        if cuts is None:
            return out
        try:
            parsed = parse_memory_cuts(cuts)
        except ValueError as exc:
            raise ConfigError("--memory-cuts", str(exc)) from exc
        return BenchVariants(**{**out.__dict__, "memory_cuts": parsed})

    def argv(self) -> list[str]:
        """The flags that give these variants back (for a worker's command line)."""
        default = BenchVariants()
        out = [flag for flag, name, value in _SWITCHES if getattr(self, name) == value]
        if self.memory_cuts != default.memory_cuts:
            out += ["--memory-cuts", ",".join(self.memory_cuts) or "none"]
        return out

    def compat_options(self) -> CompatOptions:
        from heartbeat.net.compat import CompatOptions  # the network layer, on use

        return CompatOptions(
            fast_task_lookup=self.fast_task_lookup,
            throttle_reconcile=self.throttle_reconcile,
            yamux_release_on_read=self.yamux_release_on_read,
            memory_cuts=self.memory_cuts,
            identify_peers=self.identify_peers,
            buffered_read=self.buffered_read,
        )


#: (flag, variant, the value the flag sets): each flag turns one fix off.
_SWITCHES = (
    ("--no-fast-task-lookup", "fast_task_lookup", False),
    ("--no-throttle-reconcile", "throttle_reconcile", False),
    ("--yamux-release-on-read", "yamux_release_on_read", True),
    ("--identify-peers", "identify_peers", True),
    ("--py-libp2p-read", "buffered_read", False),
)


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The variant flags, hidden from `--help` (bench/README.md documents them)."""
    for flag, name, value in _SWITCHES:
        parser.add_argument(
            flag, dest=f"variant_{name}", action="store_const", const=value, help=argparse.SUPPRESS
        )
    parser.add_argument("--memory-cuts", dest="variant_memory_cuts", help=argparse.SUPPRESS)
