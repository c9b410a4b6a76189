"""The fan-out bus: required subscribers see everything in order, optional ones drop."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from aggregator.bus import Bus, PeerConnected, PeerDisconnected


def _event(i: int) -> PeerDisconnected:
    return PeerDisconnected(peer_id=f"p{i % 3}", at=float(i))


async def test_sync_and_async_required_subscribers_see_every_event_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    seen_sync: list[Any] = []
    seen_async: list[Any] = []
    bus.subscribe_sync("fleet", seen_sync.append)
    receive = bus.subscribe_required("store", capacity=2)

    async def consumer() -> None:
        async for event in receive:
            await trio.sleep(1.0)  # slow: every event costs a virtual second
            seen_async.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        start = trio.current_time()
        for i in range(10):
            await bus.publish(_event(i))
        publish_time = trio.current_time() - start
        bus.close()
    assert seen_sync == [_event(i) for i in range(10)]
    assert seen_async == [_event(i) for i in range(10)]
    # The channel holds 2 and the consumer 1, so the publisher waited ~7 s.
    assert publish_time == pytest.approx(7.0)
    assert bus.backpressure_seconds == pytest.approx(publish_time)


async def test_slow_optional_subscriber_never_slows_publisher_and_drops_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    fast = bus.subscribe_optional("fast", capacity=100)
    slow = bus.subscribe_optional("slow", capacity=3)
    start = trio.current_time()
    for i in range(10):
        await bus.publish(_event(i))
    assert trio.current_time() == start  # never waited
    assert bus.backpressure_seconds == 0
    assert bus.dropped == {"fast": 0, "slow": 7}
    got_slow = [slow.receive_nowait() for _ in range(3)]
    assert got_slow == [_event(i) for i in range(3)]
    got_fast = [fast.receive_nowait() for _ in range(10)]
    assert got_fast == [_event(i) for i in range(10)]


async def test_optional_subscriber_that_closes_is_removed() -> None:
    bus = Bus()
    with bus.optional_subscription("feed", capacity=4) as receive:
        await bus.publish(_event(1))
        assert receive.receive_nowait() == _event(1)
        assert bus.optional_subscribers == ["feed"]
    assert bus.optional_subscribers == []
    other = bus.subscribe_optional("feed2")
    await other.aclose()
    await bus.publish(_event(2))  # a closed receiver is dropped, not an error
    assert bus.optional_subscribers == []


async def test_duplicate_optional_name_is_refused() -> None:
    bus = Bus()
    bus.subscribe_optional("x")
    with pytest.raises(ValueError):
        bus.subscribe_optional("x")


async def test_required_subscriber_gone_is_an_error() -> None:
    bus = Bus()
    receive = bus.subscribe_required("store")
    await receive.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await bus.publish(PeerConnected("p", "1.2.3.4", 0.0))


async def test_publish_nowait_keeps_a_backlog_in_order_and_flush_waits_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()
    seen_sync: list[Any] = []
    bus.subscribe_sync("fleet", seen_sync.append)
    receive = bus.subscribe_required("store", capacity=1)
    # The channel takes one; the rest wait in the bus, in order, and the caller is told.
    assert [bus.publish_nowait(_event(i)) for i in range(4)] == [True, False, False, False]
    assert seen_sync == [_event(i) for i in range(4)]  # inline subscribers never wait
    seen: list[Any] = []

    async def consumer() -> None:
        async for event in receive:
            seen.append(event)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        # Two publishers owe the wait at once (two streams): nothing twice, nothing lost.
        nursery.start_soon(bus.flush)
        nursery.start_soon(bus.flush)
        await trio.sleep(0.5)
        assert bus.publish_nowait(_event(4)) is False  # behind the backlog, not past it
        await bus.flush()
        await trio.sleep(2.0)
        bus.close()
    assert seen == [_event(i) for i in range(5)]
    assert bus.backpressure_seconds > 0
    assert bus.published == 5


async def test_a_cancelled_flush_keeps_its_event(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()
    receive = bus.subscribe_required("store", capacity=1)
    assert bus.publish_nowait(_event(0)) is True
    assert bus.publish_nowait(_event(1)) is False
    with trio.move_on_after(1.0):
        await bus.flush()  # nobody reads: cancelled while sending
    assert receive.receive_nowait() == _event(0)
    await bus.flush()  # room now: the event the cancelled flush held is still sent
    assert receive.receive_nowait() == _event(1)
