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
    # (source, head, asked_at): a poll answer carries when its question was asked; the
    # subscription's plain applies are pushed news.
    feed: list[tuple[str, Head, float | None]] = [
        ("current", h(10), None),
        ("poll", h(10), 0.5),
        ("poll", h(11), 1.5),
        ("apply", h(11), None),
        ("apply", h(12), None),
        ("poll", h(11), 3.5),  # late answer: asked at 3.5, before 12 arrived at 4.0
        ("poll", h(12), 5.5),
        ("apply", h(13), None),
    ]
    for i, (src, head, asked) in enumerate(feed):
        now = float(i)
        new = (
            t.offer(head, now, asked_at=asked)
            if src == "poll"
            else t.apply_batch([(src, head)], now)  # type: ignore[list-item]
        )
        if new:
            reported.append(head.height)
    assert reported == [10, 11, 12, 13]


def test_late_poll_answer_never_goes_back_or_repeats() -> None:
    t = HeadTracker()
    assert t.offer(h(10), 0.0)
    assert t.apply_batch([("apply", h(11))], 2.0)
    # asked at 1.0, before 11 arrived: older news, not the node going back
    assert not t.offer(h(10), 2.1, asked_at=1.0)
    # asked then, but a new tip: a late answer can still move forward
    assert t.offer(h(12), 2.2, asked_at=1.0)
    assert t.latest == h(12)


def test_head_going_backwards_is_reported_at_once() -> None:
    # Lotus restarted, or a failover to a node a few epochs behind: a poll asked after
    # the latest head arrived says the node's head is lower. It is reported as it is.
    t = HeadTracker()
    assert t.offer(h(100), 0.0, asked_at=0.0)
    assert t.offer(h(101), 3.0, asked_at=3.0)
    assert t.offer(h(97), 6.0, asked_at=6.0)
    assert t.latest == h(97)
    # ...even when it is a tip seen before (the other node is on our old chain)
    assert t.offer(h(101), 9.0, asked_at=9.0)
    assert t.offer(h(100), 12.0, asked_at=12.0)
    assert t.latest == h(100)
    # the same head again is not new
    assert not t.offer(h(100), 15.0, asked_at=15.0)


def test_resubscription_current_is_authoritative() -> None:
    t = HeadTracker()
    assert t.apply_batch([("current", h(50))], 0.0)
    assert t.apply_batch([("apply", h(51))], 1.0)
    # the node restarted: the new subscription's `current` is lower, and seen before
    assert t.apply_batch([("current", h(50))], 2.0)
    assert t.latest == h(50)
    # plain applies never go back (they may lag a poll)
    assert t.offer(h(53), 3.0)
    assert not t.apply_batch([("apply", h(52))], 4.0)
    assert t.latest == h(53)


def test_window_is_bounded() -> None:
    t = HeadTracker(window=2)
    for n in (1, 2, 3):
        assert t.apply_batch([("apply", h(n))], float(n))
    # h(3) is still in the window: a plain apply of it is not new
    assert not t.apply_batch([("apply", h(3))], 4.0)
    assert t.offer(h(4), 5.0)  # window now 3, 4: h(1) and h(2) fell out
    assert t.offer(h(5), 6.0)
    # h(4) is still in the window, h(3) no longer is: a late answer (asked before h(5)
    # arrived) of h(4) is old news; one of a tip that fell out is judged by its height
    assert not t.offer(h(4), 7.0, asked_at=5.5)
    assert not t.offer(h(3), 7.0, asked_at=5.5)  # lower: still refused
    assert t.offer(h(6), 7.0, asked_at=5.5)


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
    # a late poll answer (asked before the reorg) with the reverted tip must not bring it back
    assert not t.offer(h(11, "b"), 3.0, asked_at=1.5)
    assert t.latest == h(10, "a2")
    # a poll asked after the reorg that says the node is back on it is the truth
    assert t.offer(h(11, "b"), 4.0, asked_at=3.5)


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
