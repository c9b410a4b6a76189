"""Node transitions on the stream once across aggregators (docs/STREAM.md, "Guarantees").

- Unit: the exporter publishes transitions while it leads, holds them as a follower, and
  releases the held ones of the last `held_window` seconds when it becomes the leader; their
  msg ids are what every aggregator computes for the same change (state, last beat).
- Integration (a real 3-node NATS cluster, two real aggregators, a real agent): the agent of
  one aggregator stops; both see its node go down, the stream holds one `down` for it.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.history import Totals, Transition
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsSettings, open_bridge
from aggregator.scaleout.export import Exporter
from aggregator.scaleout.spool import Spool
from tests.natscluster import nats_cluster
from tests.test_nats_merge import agents, agg_config, running, views


def _exporter(now: list[float]) -> Exporter:
    return Exporter(
        None,
        lambda: Spool(Path("/nonexistent"), 10),
        "agg-a/P",
        node_of=lambda peer: ("net", 100.25),
        wall_clock=lambda: now[0],
    )


def _tr(peer: str, state: str, at: float) -> Transition:
    return Transition(peer, at, state, None, Totals())


def test_a_follower_holds_its_transitions_and_releases_the_recent_ones_when_it_leads() -> None:
    now = [1000.0]
    leading = [False]
    exporter = _exporter(now)
    events = exporter.fleet_events
    events.leading = lambda: leading[0]
    exporter.on_node_transitions([_tr("old", "down", 900.0)])  # beyond the window by then
    now[0] = 1000.0 + events.held_window - 10
    exporter.on_node_transitions([_tr("P1", "down", now[0])])
    assert not exporter._pending  # a follower publishes nothing
    leading[0] = True
    assert events.release_held() == 1
    (row,) = exporter._pending
    subject, msg_id, data, _at = row
    assert subject == "fil.heartbeat.net.event.transition"
    # the id is the state and the node's last beat, not this aggregator's observation time
    assert msg_id == "transition:P1:down:100250" == schema.transition_msg_id("P1", "down", 100.25)
    decoded = schema.decode(data)
    assert isinstance(decoded, schema.StreamEvent) and decoded.fields["state"] == "down"
    # leading: published at once; nothing is held any more
    exporter.on_node_transitions([_tr("P2", "up", now[0])])
    assert [r[1] for r in exporter._pending][-1] == "transition:P2:up:100250"
    assert events.release_held() == 0


def test_a_new_leader_releases_only_what_the_stream_does_not_have_yet() -> None:
    now = [1000.0]
    exporter = _exporter(now)
    events = exporter.fleet_events
    events.leading = lambda: False
    exporter.on_node_transitions(
        [_tr("P1", "in_consensus", 990.0), _tr("P1", "down", 995.0), _tr("P2", "down", 996.0)]
    )
    exporter.on_node_transitions([_tr("P3", "lagging", 997.0)])
    # the old leader stored P1's in_consensus and P3's lagging: P1's down and P2's are new
    assert events.release_held({"P1": "in_consensus", "P3": "lagging"}) == 2
    assert [r[1].split(":")[1:3] for r in exporter._pending] == [["P1", "down"], ["P2", "down"]]


def test_without_a_lease_every_transition_is_published() -> None:
    exporter = _exporter([1000.0])
    exporter.on_node_transitions([_tr("P1", "down", 1000.0)])
    assert len(exporter._pending) == 1


@pytest.mark.integration
@pytest.mark.requires_tools("nats-server")
async def test_a_node_going_down_is_one_transition_on_the_stream(tmp_path: Path) -> None:
    with trio.fail_after(80):
        async with nats_cluster(tmp_path, n=3) as cluster:
            config_a = replace(agg_config(tmp_path, cluster, "agg-a"), beat_timeout_min=3.0)
            config_b = replace(agg_config(tmp_path, cluster, "agg-b"), beat_timeout_min=3.0)
            async with running(config_a) as a, running(config_b) as b:
                with agents(tmp_path, [("a1", [a.multiaddrs[0]])]) as procs:
                    with trio.fail_after(20):
                        while not all("a1" in views(agg) and views(agg)["a1"].up for agg in (a, b)):
                            await trio.sleep(0.1)
                    peer = views(a)["a1"].peer_id
                    await trio.sleep(2.0)
                    procs[0].terminate()
                    procs[0].wait(10)
                    # both aggregators see it down and record it in their history
                    with trio.fail_after(20):
                        while not all(
                            (m := agg.history.tracker.mark(peer)) is not None and m.state == "down"
                            for agg in (a, b)
                        ):
                            await trio.sleep(0.1)
                    # both exports drained (the leader's transition is on the stream)
                    with trio.fail_after(10):
                        while any(agg.nats_export.stats()["spool_depth"] > 0 for agg in (a, b)):
                            await trio.sleep(0.1)
                        await trio.sleep(0.5)
                        while any(agg.nats_export.stats()["spool_depth"] > 0 for agg in (a, b)):
                            await trio.sleep(0.1)
                leaders = [agg.config.name for agg in (a, b) if agg.alert_leader.is_leader()]
                assert len(leaders) == 1, leaders
            states: list[tuple[str, str]] = []
            async with open_bridge(NatsSettings(urls=tuple(cluster.urls))) as bridge:
                stream = bridge.consume(
                    None, ["fil.heartbeat.*.event.transition"], deliver_since=None, acks=False
                )
                async with contextlib.aclosing(stream) as messages:
                    while True:
                        with trio.move_on_after(2.0) as scope:
                            msg, _ack = await messages.__anext__()
                        if scope.cancelled_caught:
                            break
                        event = schema.decode(msg.data)
                        assert isinstance(event, schema.StreamEvent)
                        if event.fields["peer_id"] == peer:
                            states.append((str(event.fields["state"]), event.origin))
            downs = [s for s in states if s[0] == "down"]
            assert len(downs) == 1, states
            assert states[-1][0] == "down", states
            # the states before it, once each too (a beat's node reached consensus once)
            assert len(states) == len({s for s, _origin in states}), states


async def _transitions(urls: list[str]) -> list[tuple[str, str, str]]:
    """(peer id, state, origin) of every transition on the stream, in stream order."""
    out: list[tuple[str, str, str]] = []
    async with open_bridge(NatsSettings(urls=tuple(urls))) as bridge:
        stream = bridge.consume(
            None, ["fil.heartbeat.*.event.transition"], deliver_since=None, acks=False
        )
        async with contextlib.aclosing(stream) as messages:
            while True:
                with trio.move_on_after(2.0) as scope:
                    msg, _ack = await messages.__anext__()
                if scope.cancelled_caught:
                    return out
                event = schema.decode(msg.data)
                assert isinstance(event, schema.StreamEvent)
                out.append((str(event.fields["peer_id"]), str(event.fields["state"]), event.origin))


@pytest.mark.integration
@pytest.mark.requires_tools("nats-server")
async def test_a_handover_publishes_no_transition_twice_and_loses_none(tmp_path: Path) -> None:
    with trio.fail_after(100):
        async with nats_cluster(tmp_path, n=3) as cluster:
            configs = {
                name: replace(
                    agg_config(tmp_path, cluster, name), beat_timeout_min=3.0, nats_lease_ttl=3.0
                )
                for name in ("agg-a", "agg-b")
            }
            holders: dict[str, Aggregator] = {}
            scopes: dict[str, trio.CancelScope] = {}

            async def run_one(name: str, task_status: trio.TaskStatus[None]) -> None:
                with trio.CancelScope() as scope:
                    scopes[name] = scope
                    await run_aggregator(
                        configs[name],
                        handle_signals=False,
                        on_ready=lambda agg: holders.__setitem__(name, agg),
                        task_status=task_status,
                    )

            async with trio.open_nursery() as nursery:
                await nursery.start(run_one, "agg-a")
                await nursery.start(run_one, "agg-b")
                a, b = holders["agg-a"], holders["agg-b"]
                specs = [("a1", [a.multiaddrs[0]]), ("b1", [b.multiaddrs[0]])]
                with agents(tmp_path, specs):
                    with trio.fail_after(25):
                        while not (
                            all(len(views(agg)) == 2 for agg in (a, b))
                            and all(v.up for agg in (a, b) for v in views(agg).values())
                            and sum(agg.alert_leader.is_leader() for agg in (a, b)) == 1
                        ):
                            await trio.sleep(0.1)
                    await trio.sleep(3.0)  # both have seen the nodes' first transitions
                    leader = a if a.alert_leader.is_leader() else b
                    follower = b if leader is a else a
                    gone = "a1" if leader is a else "b1"
                    gone_peer = views(follower)[gone].peer_id
                    # the leader stops (its agent's node goes down): the follower leads
                    scopes[leader.config.name].cancel()
                    with trio.fail_after(20):
                        while not (
                            follower.alert_leader.is_leader()
                            and (m := follower.history.tracker.mark(gone_peer)) is not None
                            and m.state == "down"
                        ):
                            await trio.sleep(0.1)
                        await trio.sleep(1.0)
                        while follower.nats_export.stats()["spool_depth"] > 0:
                            await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            states = await _transitions(cluster.urls)
            by_peer: dict[str, list[str]] = {}
            for peer, state, _origin in states:
                by_peer.setdefault(peer, []).append(state)
            assert len(by_peer) == 2, states
            for seq in by_peer.values():
                # nothing twice: no state repeated back to back for a node
                assert all(x != y for x, y in itertools.pairwise(seq)), states
            # none lost: the node whose aggregator stopped went down, once
            assert by_peer[gone_peer].count("down") == 1, states
