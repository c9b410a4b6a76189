"""StaticHeadSource and SimulatedChain on trio's fake clock (autojump)."""

from __future__ import annotations

import itertools
import re

import pytest
import trio
import trio.testing

from heartbeat.agent.head import Head
from heartbeat.agent.sources import SimulatedChain, StaticHeadSource, fake_cid

CID_RE = re.compile(r"^bafy2bzace[a-z2-7]{52}$")


async def test_static_source(autojump_clock: trio.testing.MockClock) -> None:
    head = Head(cids=("a", "b"), height=7)
    source = StaticHeadSource(head, wall_clock=lambda: 1_700_000_000.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await trio.sleep(1000)
        # HeadSeenAt of a static head: when the source started (unix ms)
        assert source.latest == Head(cids=("a", "b"), height=7, seen_at=1_700_000_000_500)
        assert source.status.state == "ok" and source.status.error is None
        assert source.status.mode == "static" and source.status.reachable
        nursery.cancel_scope.cancel()


def test_fake_cid_shape_and_determinism() -> None:
    assert CID_RE.match(fake_cid("x", 1))
    assert fake_cid("x", 1) == fake_cid("x", 1)
    assert fake_cid("x", 1) != fake_cid("x", 2)


async def test_one_epoch_per_block_delay(autojump_clock: trio.testing.MockClock) -> None:
    chain = SimulatedChain(
        block_delay=30.0,
        start_height=1000,
        null_round_probability=0.0,
        seed=1,
        wall_clock=lambda: 2_000_000_000.0,
    )
    heights: list[tuple[float, int]] = []
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(chain.run)
        for t in (0.0, 29.9, 30.0, 59.0, 60.0, 300.0):
            await trio.sleep_until(t0 + t)
            await trio.testing.wait_all_tasks_blocked()
            assert chain.latest is not None
            heights.append((t, chain.latest.height))
        nursery.cancel_scope.cancel()
    assert heights == [
        (0.0, 1000),
        (29.9, 1000),
        (30.0, 1001),
        (59.0, 1001),
        (60.0, 1002),
        (300.0, 1010),
    ]
    # expected height from the wall clock matches the simulated epoch at start
    assert chain.genesis_timestamp == 2_000_000_000 - 1000 * 30
    head = chain.head_at(t0 + 300.0)
    assert head.timestamp == chain.genesis_timestamp + 1010 * 30
    assert head.genesis_cid == chain.genesis_cid
    assert head.syncing is False
    assert chain.status.last_update == t0 + 300.0


async def test_null_rounds_are_seeded_and_jump_by_two(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chain = SimulatedChain(
        block_delay=30.0, start_height=0, null_round_probability=0.3, seed=42, genesis_timestamp=0
    )
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(chain.run)
        seen = []
        for k in range(200):
            await trio.sleep_until(t0 + 30.0 * k)
            await trio.testing.wait_all_tasks_blocked()
            assert chain.latest is not None
            seen.append(chain.latest.height)
        nursery.cancel_scope.cancel()
    nulls = [h for h in range(1, 200) if chain.is_null_round(h)]
    assert 30 < len(nulls) < 90  # about 30 %
    for k, height in enumerate(seen):
        expected = k
        while chain.is_null_round(expected):
            expected -= 1
        assert height == expected
    # after a null round the head jumps past it
    jumps = {b - a for a, b in itertools.pairwise(seen) if b != a}
    assert 2 in jumps and all(j >= 1 for j in jumps)
    again = SimulatedChain(start_height=0, null_round_probability=0.3, seed=42)
    assert [again.is_null_round(h) for h in range(200)] == [
        chain.is_null_round(h) for h in range(200)
    ]


def test_nodes_of_one_network_agree_and_forks_differ() -> None:
    a = SimulatedChain(seed=1)
    b = SimulatedChain(seed=2)
    forked = SimulatedChain(seed=1, fork=True)
    other = SimulatedChain(seed=1, genesis_cid=fake_cid("other"))
    for h in (1, 1000, 5000):
        assert a.cids_at(h) == b.cids_at(h)
        assert set(a.cids_at(h)).isdisjoint(forked.cids_at(h))
        assert set(a.cids_at(h)).isdisjoint(other.cids_at(h))
        assert all(CID_RE.match(c) for c in a.cids_at(h))
        assert 1 <= len(a.cids_at(h)) <= 3


async def test_lag_epochs(autojump_clock: trio.testing.MockClock) -> None:
    chain = SimulatedChain(
        start_height=500, lag_epochs=4, null_round_probability=0.0, genesis_timestamp=0
    )
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(chain.run)
        await trio.sleep_until(t0 + 90.0)
        await trio.testing.wait_all_tasks_blocked()
        assert chain.latest is not None and chain.latest.height == 499
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "kwargs",
    [{"block_delay": 0}, {"null_round_probability": 1.0}, {"start_height": -1}, {"lag_epochs": -1}],
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimulatedChain(**kwargs)  # type: ignore[arg-type]
