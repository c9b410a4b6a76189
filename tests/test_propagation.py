"""The pure propagation module: delay ring, histogram, per-network tipsets; the API handler."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from aggregator.fleet import Fleet
from aggregator.nodestate import FleetSnapshot
from aggregator.propagation import (
    HEAD_DELAY_BUCKETS,
    KEEP_EPOCHS,
    DelayCounter,
    DelayRing,
    Propagation,
    head_delay,
    percentile,
)
from aggregator.propagation_api import propagation_response

A, B, C = frozenset({"bafya"}), frozenset({"bafyb"}), frozenset({"bafya", "bafyc"})


@pytest.mark.parametrize(
    ("seen_ms", "ts", "expected"),
    [
        (1_000_500, 1000, 0.5),
        (1_000_000, 1000, 0.0),
        (999_000, 1000, 0.0),  # clocks apart: clamped
        (None, 1000, None),
        (1_000_500, None, None),
    ],
)
def test_head_delay(seen_ms: int | None, ts: int | None, expected: float | None) -> None:
    assert head_delay(seen_ms, ts) == expected


@pytest.mark.parametrize(
    ("values", "p50", "p90"),
    [
        ([3.0], 3.0, 3.0),
        ([1.0, 2.0], 1.0, 2.0),
        ([float(i) for i in range(1, 11)], 5.0, 9.0),
        ([float(i) for i in range(1, 101)], 50.0, 90.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], p50: float, p90: float) -> None:
    assert (percentile(values, 0.5), percentile(values, 0.9)) == (p50, p90)


def test_delay_ring_is_bounded_and_keeps_the_newest() -> None:
    ring = DelayRing(size=4)
    assert (ring.p50, ring.p90, len(ring)) == (None, None, 0)
    for d in (9.0, 9.0, 9.0, 9.0, 1.0, 1.0, 1.0):
        ring.add(d)
    assert len(ring) == 4
    assert (ring.p50, ring.p90) == (1.0, 9.0)  # [9, 1, 1, 1] left
    ring.add(2.0)
    assert (ring.p50, ring.p90) == (1.0, 2.0)


def test_delay_counter_buckets_are_cumulative_and_inclusive() -> None:
    counter = DelayCounter()
    for d in (0.0, 0.5, 0.6, 3.0, 29.9, 30.0, 31.0, 500.0):
        counter.observe(d)
    h = counter.frozen()
    assert dict(zip(HEAD_DELAY_BUCKETS, h.buckets, strict=True)) == {
        0.5: 2,
        1.0: 3,
        2.0: 3,
        3.0: 4,
        5.0: 4,
        8.0: 4,
        12.0: 4,
        20.0: 4,
        30.0: 6,
    }
    assert h.count == 8 and h.total == pytest.approx(595.0)
    counter.observe(1.0)
    assert h.count == 8  # frozen: a snapshot does not move


def test_propagation_one_entry_per_node_per_height_newest_first() -> None:
    prop = Propagation()
    prop.observe("net", "p1", "one", 100, A, 3000, 2.0)
    prop.observe("net", "p2", "two", 100, B, 3000, 1.0)
    prop.observe("net", "p3", "three", 100, A, 3000, 7.0)
    prop.observe("net", "p1", "one", 100, C, 3000, 9.0)  # more blocks, same height: ignored
    prop.observe("net", "p1", "one", 101, C, 3030, 0.5)
    prop.observe("net", "p4", "four", 101, C, 3030, None)  # no delay known: not listed
    prop.observe("other", "p9", "nine", 5, A, 10, 1.0)
    top, below = prop.tipsets("net")
    assert top.as_json() == {
        "height": 101,
        "timestamp": 3030,
        "head": ["bafya", "bafyc"],
        "seen": [{"peer_id": "p1", "nickname": "one", "delay": 0.5}],
        "seen_total": 1,
    }
    assert below.head == ("bafya",)  # two of three reporters had it
    assert [s.peer_id for s in below.seen] == ["p2", "p1", "p3"]  # earliest first
    assert prop.networks() == ["net", "other"]
    assert prop.tipsets("nowhere") == [] and prop.tipsets("net", 0) == []
    assert [t.height for t in prop.tipsets("net", 1)] == [101]


def test_propagation_keeps_the_last_heights_and_bounds_the_seen_list() -> None:
    prop = Propagation(keep=KEEP_EPOCHS, max_seen=3)
    for h in range(1000, 1100, 2):  # a null round every other epoch
        for i in range(5):
            prop.observe("net", f"p{i}", f"n{i}", h, A, h * 30, float(i))
    kept = prop.tipsets("net", KEEP_EPOCHS)
    assert len(kept) == 50 and kept[0].height == 1098
    for h in range(1100, 1130):
        prop.observe("net", "p0", "n0", h, A, h * 30, 1.0)
    kept = prop.tipsets("net", KEEP_EPOCHS)
    assert len(kept) == KEEP_EPOCHS
    assert (kept[0].height, kept[-1].height) == (1129, 1040)
    # a late report of a height older than everything kept is dropped
    prop.observe("net", "p4", "n4", 1000, A, 30_000, 99.0)
    assert prop.tipsets("net", KEEP_EPOCHS)[-1].height == 1040
    old = next(t for t in kept if t.height == 1050)
    assert (len(old.seen), old.seen_total) == (3, 5)


def _snapshot_with(prop_keys: dict[str, str]) -> FleetSnapshot:
    from aggregator.nodestate import NetworkView

    nets = {
        key: NetworkView(key, name, 1, None, None, 30.0, None, 0, 0, 1, 1, {}, 1, 0)
        for key, name in prop_keys.items()
    }
    return FleetSnapshot(0.0, (), MappingProxyType(nets))


def test_propagation_api_by_key_name_or_single_network() -> None:
    prop = Propagation()
    for h in range(100, 140):
        prop.observe("bafygenesis", "p1", "one", h, A, h * 30, 1.0)
    snap = _snapshot_with({"bafygenesis": "mainnet"})
    status, body = propagation_response(prop, snap, "network=bafygenesis&epochs=5")
    assert status == 200 and body["network"] == "bafygenesis" and body["name"] == "mainnet"
    assert [t["height"] for t in body["tipsets"]] == [139, 138, 137, 136, 135]
    assert propagation_response(prop, snap, "network=mainnet")[1]["network"] == "bafygenesis"
    status, body = propagation_response(prop, snap, "")
    assert status == 200 and len(body["tipsets"]) == 30  # the default


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("epochs=0", 400),
        ("epochs=61", 400),
        ("epochs=ten", 400),
        ("network=nosuch", 404),
        ("", 404),  # two networks: which one?
    ],
)
def test_propagation_api_refusals(query: str, status: int) -> None:
    prop = Propagation()
    prop.observe("k1", "p", "n", 1, A, 30, 1.0)
    snap = _snapshot_with({"k1": "one", "k2": "two"})
    got, body = propagation_response(prop, snap, query)
    assert got == status and "error" in body
    if status == 404:
        assert body["networks"] == ["k1", "k2"]


def test_fleet_without_beats_has_no_propagation() -> None:
    fleet = Fleet()
    status, body = propagation_response(fleet.propagation, fleet.snapshot(0.0), "network=x")
    assert status == 404 and body["networks"] == []
