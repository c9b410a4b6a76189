"""One alerter over two aggregators (aggregator/alerts/service.py under a `Leader`), on trio's
fake clock: the leader's death hands over without a repeated or a lost notification.

The lease and state buckets are the in-memory ones of tests/test_scaleout_lease.py; the
webhook is httpx's MockTransport (a third-party HTTP API) counting what it is told.
"""

from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType
from typing import Any

import httpx
import trio
import trio.testing

from aggregator.alerts.delivery import AlertDelivery
from aggregator.alerts.rules import AlertPolicy
from aggregator.alerts.service import AlertingService
from aggregator.fleet import FleetSnapshot, NodeState, NodeView
from aggregator.scaleout.leader import Leader
from aggregator.scaleout.lease import Holder
from tests.test_scaleout_lease import Bucket, Client

TTL = 6.0


def _node(now: float, up: bool) -> NodeView:
    return NodeView(
        "12D3KooWAlpha", "alpha", "f01234", "k", "mainnet",
        NodeState.IN_CONSENSUS if up else NodeState.DOWN, up, up, "", "{bafy}", ("bafy",), 1,
        1000, None, None, 0, False, "1", 0.0, now, 1, 3.0, 10.0, now, now,
    )  # fmt: skip


class World:
    """One node, up or down, seen alike by both aggregators (the merged fleet)."""

    def __init__(self) -> None:
        self.up = True
        self.posts: list[tuple[str, str, float]] = []  # (status, alertname, time)

    def snapshot(self) -> FleetSnapshot:
        now = trio.current_time()
        return FleetSnapshot(now, (_node(now, self.up),), MappingProxyType({}))

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            body: dict[str, Any] = json.loads(request.content)
            for alert in body["alerts"]:
                self.posts.append((alert["status"], alert["labels"]["alertname"], 0.0))
            return httpx.Response(200)

        return httpx.MockTransport(handler)


def _service(world: World, name: str, leases: Bucket, states: Bucket | None) -> AlertingService:
    holder = Holder(name, f"{name}+peer", "run")
    leader = Leader(
        Client(leases),
        None if states is None else Client(states),
        holder,
        TTL,
        clock=trio.current_time,
    )
    delivery = AlertDelivery(
        webhook_urls=["http://hook/"], transport=world.transport(), wall_clock=trio.current_time
    )
    return AlertingService(
        world.snapshot,
        AlertPolicy(node_down_for=10.0, keep_firing_for=0.0, resend_interval=30.0),
        delivery,
        interval=1.0,
        static_labels={"aggregator": name},
        wall_clock=trio.current_time,
        leader=leader,
    )


async def _run_pair(world: World, shared_state: bool) -> Counter[tuple[str, str]]:
    leases = Bucket(ttl=TTL)
    states = Bucket(ttl=None) if shared_state else None
    a = _service(world, "a", leases, states)
    b = _service(world, "b", leases, states)
    assert a.leader is not None and b.leader is not None
    async with trio.open_nursery() as nursery:
        a_scope = trio.CancelScope()

        async def run_a() -> None:
            with a_scope:
                async with trio.open_nursery() as inner:
                    await inner.start(a.leader.run)  # type: ignore[union-attr]
                    await inner.start(a.run)

        nursery.start_soon(run_a)
        await trio.sleep(0.5)
        await nursery.start(b.leader.run)
        await nursery.start(b.run)
        await trio.sleep(5)
        assert a.leader_name() == "a" and b.leader_name() == "a"
        world.up = False  # the node goes down: FilNodeDown fires 10 s later, from a
        await trio.sleep(20)
        assert [p[:2] for p in world.posts] == [("firing", "FilNodeDown")]
        # a followers' API mirrors the leader's alerts; its metric stays empty
        assert [x["labels"]["alertname"] for x in b.current()] == (
            ["FilNodeDown"] if shared_state else []
        )
        assert b.firing() == []
        # a dies: cut off from NATS (no renewal, no release), then gone
        a.leader.lease_kv.down = True  # type: ignore[attr-defined]
        if a.leader.state_kv is not None:
            a.leader.state_kv.down = True  # type: ignore[attr-defined]
        died = trio.current_time()
        await trio.sleep(TTL + 0.5)
        a_scope.cancel()
        while not b.leader.is_leader():
            await trio.sleep(0.1)
        assert trio.current_time() - died <= TTL + 1.5
        await trio.sleep(10)  # b evaluates as leader for a while: nothing new to send
        world.up = True
        await trio.sleep(5)  # the node is back: one RESOLVED, from b
        assert b.leader_name() == "b"
        nursery.cancel_scope.cancel()
    return Counter(p[:2] for p in world.posts)


async def test_a_handover_sends_each_transition_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts = await _run_pair(World(), shared_state=True)
    assert counts == {("firing", "FilNodeDown"): 1, ("resolved", "FilNodeDown"): 1}


async def test_without_the_shared_state_the_new_leader_pages_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The control: what the state document prevents."""
    counts = await _run_pair(World(), shared_state=False)
    assert counts[("firing", "FilNodeDown")] == 2
