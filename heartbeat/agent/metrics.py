"""The agent's optional Prometheus endpoint (`--metrics-listen 127.0.0.1:9083`).

A custom collector on a registry of our own reads the beat loops' stats and the
head source's status at scrape time, prometheus_client's `ProcessCollector` the process's
RSS, CPU, open fds and start time (`process_*`); hypercorn's trio worker serves it as a tiny
ASGI app (`/metrics`, plus `/healthz`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from heartbeat.agent.head import HeadSource, SourceState
from heartbeat.agent.loop import BeatLoop
from heartbeat.agent.rpcstats import RpcStats
from heartbeat.common.asgi import bind_address, lifespan, serve_asgi
from heartbeat.version import __version__

__all__ = ["AgentCollector", "make_registry", "metrics_app", "serve_metrics"]

log = logging.getLogger(__name__)

_P = "fil_heartbeat_agent_"


class AgentCollector(Collector):
    """Per-target and head-source series, computed from live state at each scrape."""

    def __init__(
        self,
        loops: Sequence[BeatLoop],
        head_source: HeadSource | None,
        rpc_stats: RpcStats | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._loops = loops
        self._source = head_source
        self._rpc = rpc_stats
        self._wall_clock = wall_clock

    def collect(self) -> Iterable[Any]:
        labels = ["target", "role"]
        connected = GaugeMetricFamily(
            _P + "target_connected", "1 while a stream to the target is open", labels=labels
        )
        beats = CounterMetricFamily(_P + "beats_sent", "Beats written to the target", labels=labels)
        attempts = CounterMetricFamily(
            _P + "reconnect_attempts", "Dial attempts to the target", labels=labels
        )
        failures = CounterMetricFamily(
            _P + "dial_failures", "Failed dial attempts to the target", labels=labels
        )
        died_early = CounterMetricFamily(
            _P + "streams_died_early",
            "Streams that died within their first beat periods (counted as failed attempts)",
            labels=labels,
        )
        last = GaugeMetricFamily(
            _P + "last_success_timestamp_seconds",
            "Unix time of the last beat written to the target",
            labels=labels,
        )
        for loop in self._loops:
            value = [loop.target.addr, loop.target.role]
            stats = loop.stats
            connected.add_metric(value, 1.0 if stats.connected else 0.0)
            beats.add_metric(value, stats.beats_sent)
            attempts.add_metric(value, stats.dial_attempts)
            failures.add_metric(value, stats.dial_failures)
            died_early.add_metric(value, stats.streams_died_early)
            if stats.last_success is not None:
                last.add_metric(value, stats.last_success)
        yield from (connected, beats, attempts, failures, died_early, last)

        info = GaugeMetricFamily(_P + "info", "Agent version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        if self._source is None:
            return
        status = self._source.status
        reachable = GaugeMetricFamily(
            _P + "head_source_reachable", "1 when the head source answers", labels=["mode"]
        )
        reachable.add_metric([status.mode], 1.0 if status.reachable else 0.0)
        yield reachable
        yield from self._source_health(status.state)
        head = self._source.latest
        if head is not None:
            height = GaugeMetricFamily(_P + "head_height", "Height of the latest known head")
            height.add_metric([], head.height)
            yield height
            if head.timestamp is not None:
                age = GaugeMetricFamily(
                    _P + "head_age_seconds",
                    "Seconds since the latest head's timestamp (the node's lag)",
                )
                age.add_metric([], max(0.0, self._wall_clock() - head.timestamp))
                yield age
        if self._rpc is not None:
            yield from self._rpc_metrics(self._rpc)

    def _source_health(self, current: SourceState) -> Iterable[Any]:
        state = GaugeMetricFamily(
            _P + "source_state",
            "1 for the head source's current state (what the beats say), 0 for the others",
            labels=["state"],
        )
        for value in SourceState:  # every state always present: no label churn
            state.add_metric([value.value], 1.0 if value is current else 0.0)
        yield state
        extra = CounterMetricFamily(
            _P + "extra_beats",
            "Beats sent at once on a head or source-state change, besides the timer",
            labels=["target", "role"],
        )
        for loop in self._loops:
            extra.add_metric([loop.target.addr, loop.target.role], loop.stats.extra_beats)
        yield extra

    @staticmethod
    def _rpc_metrics(rpc: RpcStats) -> Iterable[Any]:
        errors = CounterMetricFamily(
            _P + "lotus_rpc_errors", "Failed Lotus API calls by kind", labels=["kind"]
        )
        for kind, count in rpc.errors.items():
            errors.add_metric([kind.value], count)
        yield errors
        latency = HistogramMetricFamily(
            _P + "lotus_rpc_duration_seconds",
            "Time to an answer of Lotus API calls that got one, by method",
            labels=["method"],
        )
        for method, hist in sorted(rpc.latency.items()):
            latency.add_metric([method], hist.cumulative(), sum_value=hist.total)
        yield latency


def make_registry(
    loops: Sequence[BeatLoop], head_source: HeadSource | None, rpc_stats: RpcStats | None = None
) -> CollectorRegistry:
    """The agent's registry: its own series and `process_*` (RSS, CPU, open fds, start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(loops, head_source, rpc_stats))
    ProcessCollector(registry=registry)
    return registry


def metrics_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """A minimal ASGI app: GET /metrics, GET /healthz, 404 otherwise."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/metrics":
            status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
        elif path == "/healthz":
            status, ctype, body = 200, "text/plain", b"ok\n"
        else:
            status, ctype, body = 404, "text/plain", b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics until cancelled; `task_status.started(bind)` once listening."""
    app = metrics_app(registry)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve_asgi, app, host, port, graceful_timeout=0.5)
        )
        log.info("metrics_listening binds=%s", ",".join(binds))
        task_status.started(binds[0] if binds else bind_address(host, port))
