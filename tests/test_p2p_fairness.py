"""The handshake gate's decisions (heartbeat.net.fairness): pure, table-driven."""

from __future__ import annotations

import pytest

from heartbeat.net import fairness
from heartbeat.net.fairness import LogLimiter, RefusalWindow, SlotTable

A, B, C = "127.0.0.2", "127.0.0.1", "10.0.0.3"


def test_the_pure_module_imports_no_io() -> None:
    names = set(vars(fairness))
    assert not {"trio", "libp2p", "time", "socket"} & names


def test_a_lone_address_uses_every_slot_and_then_queues() -> None:
    t = SlotTable(concurrent=3, max_queue=10)
    results = [t.arrive(i, A, float(i)) for i in range(5)]
    assert [r.admitted for r in results] == [True, True, True, False, False]
    assert all(r.preempt is None and r.shed is None for r in results)  # no one else waits
    assert t.leave(0) == [3]


@pytest.mark.parametrize(
    ("held_by_hog", "arriving", "preempted"),
    [
        (3, B, 0),  # the hog's oldest running handshake yields
        (3, A, None),  # the hog itself never preempts its own
    ],
)
def test_the_address_holding_most_yields_its_oldest_running_slot(
    held_by_hog: int, arriving: str, preempted: int | None
) -> None:
    t = SlotTable(concurrent=3, max_queue=10)
    for i in range(held_by_hog):
        assert t.arrive(i, A, float(i)).admitted
    arrival = t.arrive(99, arriving, 10.0)
    assert not arrival.admitted
    assert arrival.preempt == preempted
    if preempted is not None:
        assert t.leave(preempted) == [99]  # the freed slot goes to the newcomer


def test_no_preemption_between_equals() -> None:
    t = SlotTable(concurrent=2, max_queue=10)
    assert t.arrive(0, A, 0.0).admitted
    assert t.arrive(1, B, 0.0).admitted
    assert t.arrive(2, C, 1.0).preempt is None  # A and B hold one each: 1 <= 1


def test_a_full_queue_sheds_the_hogs_newest_waiter() -> None:
    t = SlotTable(concurrent=1, max_queue=2)
    assert t.arrive(0, B, 0.0).admitted
    assert t.arrive(1, A, 1.0).shed is None
    assert t.arrive(2, A, 2.0).shed is None
    arrival = t.arrive(3, C, 3.0)  # three queued > 2: A (two queued) yields its newest
    assert arrival.shed == 2
    t.leave(2)
    assert t.holding(A) == 1


def test_a_freed_slot_goes_to_the_address_holding_fewest() -> None:
    t = SlotTable(concurrent=1, max_queue=10)
    assert t.arrive(0, A, 0.0).admitted
    t.arrive(1, A, 1.0)
    t.arrive(2, A, 2.0)
    t.arrive(3, B, 3.0)  # later, but B holds one where A holds three
    assert t.leave(0) == [3]
    assert t.leave(3) == [1]  # then A's oldest


def test_leaving_twice_or_unknown_is_harmless() -> None:
    t = SlotTable(concurrent=1, max_queue=1)
    assert t.arrive(0, A, 0.0).admitted
    assert t.leave(0) == [] and t.leave(0) == [] and t.leave(7) == []
    assert t.holding(A) == 0


@pytest.mark.parametrize(
    ("refusals_at", "check_at", "capped"),
    [
        ([0.0] * 3, 1.0, True),  # 3 > limit 2 within the window
        ([0.0] * 2, 1.0, False),  # at the limit: not capped
        ([0.0] * 3, 60.0, False),  # the window passed
        ([0.0, 30.0, 59.0], 59.5, True),
        ([0.0, 30.0, 59.0], 60.5, False),  # the first one aged out
    ],
)
def test_refusal_window(refusals_at: list[float], check_at: float, capped: bool) -> None:
    w = RefusalWindow(limit=2, window=60.0)
    for now in refusals_at:
        w.refused(A, now)
    assert w.capped(A, check_at) is capped
    assert not w.capped(B, check_at)


def test_a_zero_refusal_cap_is_off() -> None:
    w = RefusalWindow(limit=0, window=60.0)
    for _ in range(100):
        w.refused(A, 0.0)
    assert not w.capped(A, 0.0)


def test_each_successful_handshake_earns_its_address_one_more_refusal() -> None:
    # A NAT'd fleet reconnecting through a saturated gate: most handshakes succeed, some
    # dialers give up mid-handshake. Its failures never outnumber its successes by the cap.
    w = RefusalWindow(limit=2, window=60.0)
    for i in range(1_000):
        w.upgraded(A, i * 0.05)
        if i % 3 == 0:
            w.refused(A, i * 0.05)
    assert not w.capped(A, 50.0)
    # An address that only fails is capped at the limit, whatever the others earned.
    for _ in range(3):
        w.refused(B, 50.0)
    assert w.capped(B, 50.0)
    # The credit is spent: refusals beyond the successes by more than the limit cap it.
    for _ in range(1_000):
        w.refused(A, 50.0)
    assert w.capped(A, 50.0)
    # A refusal after a successful handshake (not on the allowlist) takes its credit back.
    s = RefusalWindow(limit=2, window=60.0)
    for _ in range(3):
        s.upgraded(A, 0.0)
        s.refused(A, 0.0, after_upgrade=True)
    assert s.capped(A, 0.0)
    # Credit ages out with the window like the refusals.
    c = RefusalWindow(limit=2, window=60.0)
    for _ in range(10):
        c.upgraded(A, 0.0)
    for _ in range(3):
        c.refused(A, 61.0)
    assert c.capped(A, 61.0)


def test_the_refusal_window_keeps_bounded_state_per_address_and_in_all() -> None:
    w = RefusalWindow(limit=2, window=60.0, max_addresses=100)
    for i in range(100_000):
        w.upgraded(A, i * 0.01)  # 1,000 s at 100 per second
    assert len(w._buckets[A]) <= 13
    for i in range(1_000):
        w.refused(f"10.1.{i // 256}.{i % 256}", 1_000.0)
    assert len(w._buckets) == 100
    assert A not in w._buckets  # the least recently seen went first


def test_log_limiter_one_line_per_cause_and_ip_per_period() -> None:
    lim = LogLimiter(period=60.0)
    table = [
        ("shed", A, 0.0, 0),
        ("shed", A, 1.0, None),
        ("shed", A, 2.0, None),
        ("shed", B, 2.0, 0),  # another IP: its own line
        ("cap", A, 2.0, 0),  # another cause: its own line
        ("shed", A, 61.0, 2),  # the next line says how many were suppressed
        ("shed", A, 62.0, None),
    ]
    for cause, ip, now, expected in table:
        assert lim.allow(cause, ip, now) == expected, (cause, ip, now)
