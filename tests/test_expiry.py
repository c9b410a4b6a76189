"""The fleet expiry timer: its own timer, independent of the store (fake clock)."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from aggregator.app import run_expiry
from aggregator.fleet import Fleet, FleetPolicy
from heartbeat.protocol.wire import Beat

T0 = 1_700_000_000.0


def beating_fleet(retention: float) -> Fleet:
    fleet = Fleet(FleetPolicy(retention=retention))
    for pid in ("a", "b"):
        fleet.on_beat(
            pid, Beat(head="{bafy2bzaceaaa}", height=1, nickname=pid, miner_address="f01"), T0
        )
    return fleet


async def test_expiry_runs_every_interval_without_a_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = beating_fleet(retention=100.0)
    expired_at: list[float] = []
    original = fleet.expire

    def expire(now: float) -> list[str]:
        gone = original(now)
        if gone:
            expired_at.append(trio.current_time())
        return gone

    fleet.expire = expire  # type: ignore[method-assign]
    start = trio.current_time()
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_expiry, fleet, 60.0, clock=lambda: T0 + trio.current_time() - start)
            )
            await trio.sleep(50)
            fleet.on_beat(
                "b",
                Beat(head="{bafy2bzaceaaa}", height=2, nickname="b", miner_address="f01"),
                T0 + 50,
            )
            while len(expired_at) < 2:
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    # retention passes at +100 for "a" and +150 for "b": forgotten at the ticks after that
    assert [t - start for t in expired_at] == [120.0, 180.0]
    assert len(fleet) == 0


async def test_expiry_forgets_restored_nodes_at_start() -> None:
    fleet = Fleet(FleetPolicy(retention=100.0))
    fleet.on_beat(
        "old",
        Beat(head="{bafy2bzaceaaa}", height=1, nickname="old", miner_address="f01"),
        T0 - 1000,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_expiry, fleet, 60.0, clock=lambda: T0))
        assert "old" not in fleet
        nursery.cancel_scope.cancel()
