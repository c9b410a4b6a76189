"""The pure token bucket, flood detection and log limiter."""

from __future__ import annotations

import pytest

from aggregator.ratelimit import LogLimiter, PeerRateLimiter, RateDecision, TokenBucket


def test_bucket_starts_full_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.4)  # 0.8 token
    assert bucket.allow(0.5)  # 1.0 token
    assert not bucket.allow(0.5)
    # A long pause refills to the burst, never beyond.
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_bucket_rejects_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_peers_are_limited_independently() -> None:
    limiter = PeerRateLimiter(rate=1.0, burst=2, flood_drops=100)
    assert limiter.check("a", 0) is RateDecision.ACCEPT
    assert limiter.check("a", 0) is RateDecision.ACCEPT
    assert limiter.check("a", 0) is RateDecision.DROP
    assert limiter.check("b", 0) is RateDecision.ACCEPT
    limiter.forget("a")
    assert limiter.check("a", 0) is RateDecision.ACCEPT
    assert len(limiter) == 2


def test_drop_history_exists_only_for_peers_that_dropped() -> None:
    """One state per connected peer: the drop history (a deque, ~0.7 KB) comes with the
    first drop, not with the peer."""
    limiter = PeerRateLimiter(rate=1.0, burst=1, flood_drops=3, flood_window=10.0)
    assert limiter.check("calm", 0.0) is RateDecision.ACCEPT
    assert limiter.check("calm", 1.0) is RateDecision.ACCEPT
    assert limiter._peers["calm"].drops is None
    assert limiter.check("busy", 0.0) is RateDecision.ACCEPT
    assert limiter.check("busy", 0.1) is RateDecision.DROP
    assert list(limiter._peers["busy"].drops or ()) == [0.1]


def test_flooding_peer_is_disconnected_after_n_drops_in_window() -> None:
    limiter = PeerRateLimiter(rate=1.0, burst=1, flood_drops=3, flood_window=10.0)
    assert limiter.check("p", 0.0) is RateDecision.ACCEPT
    decisions = [limiter.check("p", 0.1 * i) for i in range(1, 5)]
    assert decisions == [RateDecision.DROP] * 3 + [RateDecision.DISCONNECT]


def test_drops_spread_over_longer_than_window_never_disconnect() -> None:
    limiter = PeerRateLimiter(rate=0.1, burst=1, flood_drops=2, flood_window=5.0)
    decisions = []
    now = 0.0
    for _ in range(50):
        decisions.append(limiter.check("p", now))
        now += 3.0  # one drop every 3 s: at most 2 within any 5 s window
    assert RateDecision.DISCONNECT not in decisions
    assert RateDecision.DROP in decisions


def test_log_limiter_once_per_key_per_interval() -> None:
    logs = LogLimiter(interval=60.0)
    assert logs.allow("a", 0.0)
    assert not logs.allow("a", 30.0)
    assert not logs.allow("a", 59.9)
    assert logs.allow("b", 30.0)
    assert logs.take_suppressed("a") == 2
    assert logs.take_suppressed("a") == 0
    assert logs.allow("a", 60.0)


def test_log_limiter_memory_is_bounded() -> None:
    logs = LogLimiter(interval=10.0, max_keys=10)
    for i in range(100):
        assert logs.allow(f"k{i}", float(i) / 100)
    assert len(logs._last) <= 10
    # Expired keys are pruned first.
    logs2 = LogLimiter(interval=1.0, max_keys=4)
    for i in range(4):
        logs2.allow(f"old{i}", 0.0)
    assert logs2.allow("new", 5.0)
    assert set(logs2._last) == {"new"}
