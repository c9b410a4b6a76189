"""Pure tests for heartbeat.agent.head.HeadTracker."""

from __future__ import annotations

import pytest

from heartbeat.agent.head import ChangeType, Head, HeadTracker


def h(height: int, *cids: str) -> Head:
    return Head(cids=cids or (f"c{height}",), height=height)


def test_first_head_is_new_and_repeats_are_not() -> None:
    t = HeadTracker()
    assert t.latest is None
    assert t.offer(h(10), 0.0) is True
    assert t.offer(h(10), 1.0) is False
    assert t.latest == h(10)
    assert t.latest_at == 0.0


def test_tipset_key_is_a_set() -> None:
    t = HeadTracker()
    assert t.offer(h(10, "a", "b"), 0.0)
    assert not t.offer(h(10, "b", "a"), 1.0)


def test_same_height_different_tipset_is_new() -> None:
    t = HeadTracker()
    assert t.offer(h(10, "a"), 0.0)
    assert t.offer(h(10, "a", "b"), 1.0)
    assert t.latest == h(10, "a", "b")


def test_poll_and_subscription_feeding_the_same_tips() -> None:
    t = HeadTracker()
    reported = []
    feed = [
        ("sub", h(10)),
        ("poll", h(10)),
        ("poll", h(11)),
        ("sub", h(11)),
        ("sub", h(12)),
        ("poll", h(11)),  # late poll answer: must not go back
        ("poll", h(12)),
        ("sub", h(13)),
    ]
    for i, (_src, head) in enumerate(feed):
        if t.offer(head, float(i)):
            reported.append(head.height)
    assert reported == [10, 11, 12, 13]


def test_lower_unseen_head_waits_for_rewind_after() -> None:
    t = HeadTracker(rewind_after=300.0)
    assert t.offer(h(100), 0.0)
    assert not t.offer(h(50), 299.0)
    assert t.offer(h(50), 300.0)
    assert t.latest == h(50)


def test_window_is_bounded() -> None:
    t = HeadTracker(window=2, rewind_after=0.0)
    for n in (1, 2, 3):
        assert t.offer(h(n), float(n))
    # h(1) fell out of the window; with rewind_after=0 a lower head is accepted again
    assert t.offer(h(1), 10.0)
    # h(3) is still in the window (h(2) was evicted when h(1) came back)
    assert not t.offer(h(3), 11.0)
    assert t.offer(h(2), 12.0)


def test_reorg_batch_replaces_head_even_when_lower() -> None:
    t = HeadTracker()
    assert t.apply_batch([("current", h(10, "a"))], 0.0)
    assert t.apply_batch([("apply", h(11, "b"))], 1.0)
    # reorg: 11/b is replaced by 10/a2 then 11/b2... last apply is the head
    batch: list[tuple[ChangeType, Head]] = [
        ("revert", h(11, "b")),
        ("revert", h(10, "a")),
        ("apply", h(10, "a2")),
    ]
    assert t.apply_batch(batch, 2.0)
    assert t.latest == h(10, "a2")
    # a late poll answer with the reverted tip must not bring it back
    assert not t.offer(h(11, "b"), 3.0)
    assert t.latest == h(10, "a2")


def test_reorg_back_to_a_seen_tip_is_accepted() -> None:
    t = HeadTracker()
    t.offer(h(10, "a"), 0.0)
    t.offer(h(10, "b"), 1.0)
    assert t.apply_batch([("revert", h(10, "b")), ("apply", h(10, "a"))], 2.0)
    assert t.latest == h(10, "a")
    # a batch that ends where we already are is not new
    assert not t.apply_batch([("revert", h(10, "a")), ("apply", h(10, "a"))], 3.0)


def test_batch_without_reverts_dedupes_with_polling() -> None:
    t = HeadTracker()
    assert t.offer(h(11), 0.0)
    assert not t.apply_batch([("apply", h(11))], 1.0)
    assert t.apply_batch([("apply", h(12)), ("apply", h(13))], 2.0)
    assert t.latest == h(13)
    assert not t.apply_batch([], 3.0)
    assert not t.apply_batch([("revert", h(13))], 4.0)  # nothing applied


def test_bad_change_type_and_window() -> None:
    with pytest.raises(ValueError):
        HeadTracker().apply_batch([("bogus", h(1))], 0.0)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        HeadTracker(window=0)
