"""Trial modes that do not lie: simulated agents agree whenever they started (one genesis
time), and a static head is marked as such so the aggregator's stall alerts stay quiet."""

from __future__ import annotations

import math

import trio
import trio.testing

from aggregator.alerts.rules import AlertEvaluator, TransitionKind
from aggregator.fleet import Fleet
from heartbeat.agent.sources import DEFAULT_SIMULATED_GENESIS_TIMESTAMP, SimulatedChain
from heartbeat.protocol.wire import Beat
from heartbeat.tools.demo import AlertWatch, next_steps
from heartbeat.version import AGENT_VERSION, STATIC_MARKER, is_static

#: Wall-clock seconds at trio time 0 of the fake clock.
WALL0 = DEFAULT_SIMULATED_GENESIS_TIMESTAMP + 333_333 * 30 + 17.0


def wall_of(t0: float) -> float:
    """The wall clock that goes with trio's (fake) clock."""
    return WALL0 + (trio.current_time() - t0)


async def test_agents_started_apart_agree_on_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()

    def chain() -> SimulatedChain:
        return SimulatedChain(block_delay=30.0, wall_clock=lambda: wall_of(t0))

    first, late = chain(), chain()
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await trio.sleep(1234.5)  # the second agent starts 41 epochs and a bit later
        await nursery.start(late.run)
        for _ in range(200):
            await trio.testing.wait_all_tasks_blocked()
            assert first.latest is not None and late.latest is not None
            assert late.latest.height == first.latest.height
            assert late.latest.cids == first.latest.cids
            await trio.sleep(7.0)
        nursery.cancel_scope.cancel()
    # the height is the one the genesis time says, not "1000 at start"
    now = wall_of(t0)
    expected = math.floor((now - DEFAULT_SIMULATED_GENESIS_TIMESTAMP) / 30.0)
    assert first.epoch_at(trio.current_time()) == expected
    assert first.genesis_timestamp == late.genesis_timestamp == DEFAULT_SIMULATED_GENESIS_TIMESTAMP


async def test_epochs_switch_on_the_genesis_grid(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    chain = SimulatedChain(
        block_delay=30.0, null_round_probability=0.0, wall_clock=lambda: wall_of(t0)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(chain.run)
        assert chain.latest is not None
        start = chain.latest.height
        # WALL0 is 17 s past an epoch boundary of the genesis grid: the next one is 13 s away
        await trio.sleep(12.9)
        await trio.testing.wait_all_tasks_blocked()
        assert chain.latest.height == start
        await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert chain.latest.height == start + 1
        assert chain.latest.timestamp == DEFAULT_SIMULATED_GENESIS_TIMESTAMP + (start + 1) * 30
        nursery.cancel_scope.cancel()
    assert start == 333_333


def test_null_rounds_are_the_networks_without_a_seed() -> None:
    a = SimulatedChain(null_round_probability=0.3)
    b = SimulatedChain(null_round_probability=0.3)
    draws = [a.is_null_round(h) for h in range(1, 500)]
    assert draws == [b.is_null_round(h) for h in range(1, 500)]
    assert 60 < sum(draws) < 240  # about 30 %
    seeded = SimulatedChain(null_round_probability=0.3, seed=7)
    assert draws != [seeded.is_null_round(h) for h in range(1, 500)]


async def test_a_restarted_agent_is_not_behind(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    steady = SimulatedChain(null_round_probability=0.2, wall_clock=lambda: wall_of(t0))
    async with trio.open_nursery() as nursery:
        await nursery.start(steady.run)
        await trio.sleep(3600.0)
        restarted = SimulatedChain(null_round_probability=0.2, wall_clock=lambda: wall_of(t0))
        await nursery.start(restarted.run)
        await trio.testing.wait_all_tasks_blocked()
        assert restarted.latest is not None and steady.latest is not None
        assert (restarted.latest.height, restarted.latest.cids) == (
            steady.latest.height,
            steady.latest.cids,
        )
        assert steady.latest.height > steady.start_height + 100  # an hour of 30 s epochs
        nursery.cancel_scope.cancel()


def _static_beat(version: str) -> Beat:
    return Beat(
        head="{bafy2bzaceaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}",
        height=1000,
        nickname="trial",
        miner_address="",
        genesis_cid=None,
        head_timestamp=None,
        syncing=False,
        version=version,
    )


def _stall_alerts(versions: list[str], minutes: float = 20.0) -> set[tuple[str, str]]:
    """Nodes beating one fixed head every 3 s for `minutes`: the (alert, peer) that fired."""
    fleet = Fleet()
    peers = [f"12D3KooW{i}" for i in range(len(versions))]
    for p in peers:
        fleet.on_connect(p, "", 0.0)
    evaluator = AlertEvaluator()
    fired: set[tuple[str, str]] = set()
    t = 0.0
    while t <= minutes * 60:
        for p, version in zip(peers, versions, strict=True):
            fleet.on_beat(p, _static_beat(version), t)
        if t % 5 == 0:
            for tr in evaluator.evaluate(fleet.snapshot(t)):
                if tr.kind is TransitionKind.FIRED:
                    fired.add((tr.alert.alertname, tr.alert.labels.get("peer_id", "")))
        t += 3.0
    return fired


STATIC = AGENT_VERSION + STATIC_MARKER


def test_static_heads_fire_no_stall_alert() -> None:
    assert is_static(STATIC) and not is_static(AGENT_VERSION) and not is_static(None)
    assert _stall_alerts([STATIC, STATIC]) == set()


def test_the_same_heads_without_the_marker_fire_both_stall_alerts() -> None:
    assert _stall_alerts([AGENT_VERSION]) == {
        ("FilNodeHeadStalled", "12D3KooW0"),
        ("FilFleetHeightStalled", ""),
    }


def test_a_real_node_beside_a_static_one_still_makes_the_fleet_stall() -> None:
    assert _stall_alerts([STATIC, AGENT_VERSION]) == {
        ("FilNodeHeadStalled", "12D3KooW1"),
        ("FilFleetHeightStalled", ""),
    }


def _alert(name: str, nickname: str, state: str) -> dict[str, object]:
    return {
        "labels": {
            "alertname": name,
            "severity": "critical",
            "nickname": nickname,
            "peer_id": "12D3KooW" + nickname,
            "aggregator": "demo",
        },
        "annotations": {"summary": f"Filecoin node {nickname} is down"},
        "state": state,
    }


def test_alert_watch_says_each_firing_and_resolution_once() -> None:
    watch = AlertWatch()
    down = _alert("FilNodeDown", "charlie", "firing")
    assert watch.update([_alert("FilNodeDown", "charlie", "pending")], 10.0) == []
    assert watch.update([down], 20.0) == [
        "ALERT firing    FilNodeDown (critical) charlie: Filecoin node charlie is down"
    ]
    assert watch.update([down], 21.0) == []  # still firing: nothing new
    assert watch.update([], 32.4) == ["ALERT resolved  FilNodeDown (critical) charlie after 12s"]
    assert watch.update([], 33.0) == []
    assert watch.firing == {}


def test_next_steps_name_the_pages_and_the_agent_commands() -> None:
    addr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAgg"
    text = "\n".join(next_steps(addr, "http://127.0.0.1:8080", 4.0, "fil-heartbeat"))
    assert "status page:          http://127.0.0.1:8080/\n" in text
    assert "FULLNODE_API_INFO=$(lotus auth api-info --perm read | cut -d= -f2) \\\n" in text
    assert f"    fil-heartbeat run --target {addr} --nickname my-node\n" in text
    assert "--head-source simulated \\\n        --block-delay 4s" in text
    assert "FilNodeDown fires after 10s away" in text
