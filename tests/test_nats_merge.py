"""One fleet over two aggregators, end to end: real aggregators (in this process), real agents
(subprocesses with a simulated chain), a real 3-node NATS JetStream cluster.

- Agents split across the two aggregators: both show every node, each within 2 beat periods
  of the aggregator it beats to; an agent with both as targets is one node, held by both.
- A restarted aggregator catches up from the stream before it reports ready: at that moment
  it already holds the other's nodes, up, at their newest heights.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import AggregatorConfig, build_config
from tests.helpers import metric_value
from tests.natscluster import NatsCluster, nats_cluster
from tests.promservers import stop_process

pytestmark = [pytest.mark.integration, pytest.mark.requires_tools("nats-server")]

REPO = Path(__file__).resolve().parent.parent
BEAT = 1.0  # the agents' beat period (s)


def agg_config(tmp: Path, cluster: NatsCluster, name: str, **overrides: Any) -> AggregatorConfig:
    base = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(tmp / f"{name}.key"),
            "state_db": str(tmp / f"{name}.db"),
            "gc_freeze": False,
            "probation": "0s",
            "nats_url": cluster.urls,
            "nats_catch_up": "1m",
            "name": name,
            "alerts": {"enabled": False},
        }
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running(config: AggregatorConfig) -> AsyncIterator[Aggregator]:
    holder: list[Aggregator] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_aggregator(
                config, handle_signals=False, on_ready=holder.append, task_status=task_status
            )
        )
        yield holder[0]
        nursery.cancel_scope.cancel()


@contextmanager
def agents(
    tmp: Path, specs: list[tuple[str, list[str]]]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One agent process per (nickname, targets), simulated chain, beating every second."""
    procs = []
    try:
        for nickname, targets in specs:
            args = [sys.executable, "-m", "heartbeat", "run", "--nickname", nickname]
            for t in targets:
                args += ["--target", t]
            args += [
                "--identity-file", str(tmp / f"{nickname}.key"),
                "--head-source", "simulated", "--seed", "3", "--block-delay", "4s",
                "--beat-period", f"{BEAT:g}s", "--reconnect-period", "1s", "--jitter", "0",
            ]  # fmt: skip
            log = (tmp / f"{nickname}.log").open("ab")
            procs.append(
                subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO)
            )
        yield procs
    finally:
        for p in procs:
            stop_process(p)


def views(agg: Aggregator) -> dict[str, Any]:
    """nickname -> NodeView, in the aggregator's merged fleet."""
    return {v.nickname: v for v in agg.snapshot().nodes}


async def test_two_aggregators_show_every_node_and_a_two_target_agent_is_one(
    tmp_path: Path,
) -> None:
    with trio.fail_after(55):
        async with nats_cluster(tmp_path, n=3) as cluster:
            async with (
                running(agg_config(tmp_path, cluster, "agg-a")) as a,
                running(agg_config(tmp_path, cluster, "agg-b")) as b,
            ):
                ta, tb = a.multiaddrs[0], b.multiaddrs[0]
                specs = [("a1", [ta]), ("a2", [ta]), ("b1", [tb]), ("b2", [tb]), ("ab", [ta, tb])]
                origin_a, origin_b = a.fleet.origin, b.fleet.origin
                own = {"a1": a, "a2": a, "b1": b, "b2": b}
                first: dict[tuple[str, str], float] = {}
                with agents(tmp_path, specs):
                    while len(first) < 10:
                        now = trio.current_time()
                        for agg_name, agg in (("a", a), ("b", b)):
                            for nick, v in views(agg).items():
                                if v.up:
                                    first.setdefault((agg_name, nick), now)
                        await trio.sleep(0.05)
                    # every node on the other aggregator within 2 beat periods of its own
                    for nick, agg in own.items():
                        mine = "a" if agg is a else "b"
                        other = "b" if mine == "a" else "a"
                        lag = first[(other, nick)] - first[(mine, nick)]
                        assert lag <= 2 * BEAT, (nick, lag)
                    await trio.sleep(2 * BEAT)  # the two-target agent reached both by now
                    va, vb = views(a), views(b)
                    assert sorted(va) == sorted(vb) == ["a1", "a2", "ab", "b1", "b2"]
                    assert all(v.up for v in va.values()) and all(v.up for v in vb.values())
                    # one node, held by both; the others by theirs alone
                    assert (
                        va["ab"].held_by == vb["ab"].held_by == tuple(sorted((origin_a, origin_b)))
                    )
                    assert va["a1"].held_by == vb["a1"].held_by == (origin_a,)
                    assert va["b2"].held_by == vb["b2"].held_by == (origin_b,)
                    assert va["a1"].connected and not vb["a1"].connected
                    # consensus over the merged fleet: every node votes on both
                    (net_a,) = a.snapshot().networks.values()
                    (net_b,) = b.snapshot().networks.values()
                    assert net_a.nodes_up == net_b.nodes_up == 5
                    # the holder series: one per holder per node, the two-target node twice
                    body = a.metrics.render().decode()
                    peer_ab = va["ab"].peer_id
                    assert (
                        metric_value(
                            body, "fil_heartbeat_node_holder", peer_id=peer_ab, holder="agg-a"
                        )
                        == 1
                    )
                    assert (
                        metric_value(
                            body, "fil_heartbeat_node_holder", peer_id=peer_ab, holder="agg-b"
                        )
                        == 1
                    )
                    peer_b1 = va["b1"].peer_id
                    assert (
                        metric_value(
                            body, "fil_heartbeat_node_holder", peer_id=peer_b1, holder="agg-a"
                        )
                        is None
                    )
                    assert (
                        metric_value(
                            body, "fil_heartbeat_nats_merged_beats_total", result="applied"
                        )
                        or 0
                    ) > 0
                # the agents are gone: on both, their nodes go down (remote holders expire)
                with trio.fail_after(15):
                    while any(v.up for v in views(a).values()) or any(
                        v.up for v in views(b).values()
                    ):
                        await trio.sleep(0.2)


async def test_a_restarted_aggregator_catches_up_before_ready(tmp_path: Path) -> None:
    with trio.fail_after(55):
        async with nats_cluster(tmp_path, n=3) as cluster:
            async with running(agg_config(tmp_path, cluster, "agg-a")) as a:
                ta = a.multiaddrs[0]
                with agents(tmp_path, [("a1", [ta]), ("a2", [ta])]):
                    # b runs once, briefly, then stops: it is "restarted" below
                    async with running(agg_config(tmp_path, cluster, "agg-b")):
                        pass
                    with trio.fail_after(15):
                        while sum(v.up for v in views(a).values()) < 2:
                            await trio.sleep(0.1)
                    await trio.sleep(6 * BEAT)  # a backlog of beats on the stream
                    height_on_a = {n: v.height for n, v in views(a).items()}
                    seen_at_ready: dict[str, Any] = {}
                    holder: list[Aggregator] = []

                    def at_ready(agg: Aggregator) -> None:
                        holder.append(agg)
                        seen_at_ready.update(views(agg))

                    async with trio.open_nursery() as nursery:
                        config = agg_config(tmp_path, cluster, "agg-b")
                        await nursery.start(
                            lambda task_status: run_aggregator(
                                config,
                                handle_signals=False,
                                on_ready=at_ready,
                                task_status=task_status,
                            )
                        )
                        b = holder[0]
                        # ready means: a's nodes are there, up, with the window's beats
                        assert sorted(seen_at_ready) == ["a1", "a2"]
                        assert all(v.up for v in seen_at_ready.values())
                        # the newest beat of each node, read from the stored backlog
                        for nick, v in seen_at_ready.items():
                            assert v.height >= height_on_a[nick], nick
                        assert b.nats_merge.catch_up_seconds is not None
                        body = b.metrics.render().decode()
                        assert metric_value(body, "fil_heartbeat_nats_catch_up_seconds") is not None
                        nursery.cancel_scope.cancel()
