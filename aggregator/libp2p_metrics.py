"""The network layer's own families: which py-libp2p fixes are in, what was refused.

`fil_heartbeat_libp2p_fix_installed{fix}` (0/1) from `heartbeat.net.compat`, and
`fil_heartbeat_refusals_total{reason}` from the network layer's `RefusalCounter`
(`heartbeat.net.refusals`), both read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.exposition import PREFIX
from heartbeat.net import compat
from heartbeat.net.refusals import REFUSALS, RefusalCounter

__all__ = ["Libp2pCollector"]


class Libp2pCollector(Collector):
    def __init__(
        self,
        fixes: Callable[[], dict[str, bool]] = compat.installed_fixes,
        refusals: RefusalCounter = REFUSALS,
    ) -> None:
        self._fixes = fixes
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        installed = GaugeMetricFamily(
            PREFIX + "libp2p_fix_installed",
            "1 if the py-libp2p fix is in effect (heartbeat.net.compat).",
            labels=["fix"],
        )
        for fix, on in sorted(self._fixes().items()):
            installed.add_metric([fix], 1.0 if on else 0.0)
        yield installed
        refused = CounterMetricFamily(
            PREFIX + "refusals",
            "Streams, pings and connections the network layer refused, by reason.",
            labels=["reason"],
        )
        for reason, n in self._refusals.items():
            refused.add_metric([reason], float(n))
        yield refused
