"""The handshake gate's decisions (heartbeat.net.fairness): pure, table-driven."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

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


class NaiveSlotTable:
    """The slot table's rules by scanning every ticket: the reference for the indexed one."""

    def __init__(self, concurrent: int, max_queue: int) -> None:
        self.concurrent, self.max_queue = concurrent, max_queue
        self.running: dict[int, tuple[str, float]] = {}
        self.queued: dict[int, tuple[str, float]] = {}
        self.held: dict[str, int] = {}

    def _hog(self, among: dict[int, tuple[str, float]]) -> str | None:
        ips = {ip for ip, _ in among.values()}
        return max(sorted(ips), key=lambda ip: self.held[ip], default=None)

    def arrive(self, ticket: int, ip: str, now: float) -> tuple[bool, int | None, int | None]:
        self.held[ip] = self.held.get(ip, 0) + 1
        if len(self.running) < self.concurrent and not self.queued:
            self.running[ticket] = (ip, now)
            return (True, None, None)
        self.queued[ticket] = (ip, now)
        preempt = None
        hog = self._hog(self.running)
        if hog is not None and hog != ip and self.held[hog] > self.held[ip]:
            preempt = min(
                (t for t, (i, _) in self.running.items() if i == hog),
                key=lambda t: self.running[t][1],
            )
        shed = None
        if len(self.queued) > self.max_queue:
            qhog = self._hog(self.queued)
            shed = max(
                (t for t, (i, _) in self.queued.items() if i == qhog),
                key=lambda t: (self.queued[t][1], t),
            )
        return (False, preempt, shed)

    def leave(self, ticket: int) -> list[int]:
        entry = self.running.pop(ticket, None) or self.queued.pop(ticket, None)
        if entry is None:
            return []
        self.held[entry[0]] -= 1
        admitted = []
        while len(self.running) < self.concurrent and self.queued:
            nxt = min(
                self.queued,
                key=lambda t: (self.held[self.queued[t][0]], self.queued[t][1], t),
            )
            self.running[nxt] = self.queued.pop(nxt)
            admitted.append(nxt)
        return admitted


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(
    concurrent=st.integers(1, 4),
    max_queue=st.integers(1, 6),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("arrive"), st.sampled_from([A, B, C, "10.0.0.4"])),
            st.tuples(st.just("leave"), st.integers(0, 12)),
        ),
        max_size=60,
    ),
)
def test_the_indexed_slot_table_decides_exactly_as_a_scan_of_every_ticket(
    concurrent: int, max_queue: int, ops: list[tuple[str, Any]]
) -> None:
    fast, naive = SlotTable(concurrent, max_queue), NaiveSlotTable(concurrent, max_queue)
    ticket = 0
    for step, (op, arg) in enumerate(ops):
        now = float(step // 2)  # ties in time too
        if op == "arrive":
            got = fast.arrive(ticket, arg, now)
            assert (got.admitted, got.preempt, got.shed) == naive.arrive(ticket, arg, now)
            ticket += 1
        else:
            assert fast.leave(arg) == naive.leave(arg)
        assert fast.running == naive.running and fast.queued == naive.queued
        for ip in (A, B, C, "10.0.0.4"):
            assert fast.holding(ip) == naive.held.get(ip, 0)
