"""Node transitions on the stream once across aggregators (docs/STREAM.md, "Guarantees").

- Unit: the exporter publishes transitions while it leads, holds them as a follower, and
  releases the held ones of the last `held_window` seconds when it becomes the leader; their
  msg ids are what every aggregator computes for the same change (state, last beat).
- Integration (a real 3-node NATS cluster, two real aggregators, a real agent): the agent of
  one aggregator stops; both see its node go down, the stream holds one `down` for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import trio

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
