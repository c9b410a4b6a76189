"""The Lotus head source says what is wrong: against the fake Lotus node on loopback.

A refused token, a node that goes silent, one that goes away, one whose head goes
backwards, JSON-RPC errors, and StateNetworkName once per (re)connection. Real clock and
sockets with short periods; every wait is a bounded condition.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from heartbeat.agent.health import ErrorKind
from heartbeat.agent.lotus.source import LotusHeadSource
from heartbeat.protocol.beat import SourceState
from tests.fakelotus import FakeLotus, fake_lotus
from tests.helpers import eventually

__all__ = ["fake_lotus"]  # the fixture, re-exported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def started(
    nursery: trio.Nursery, fake_lotus: FakeLotus
) -> AsyncIterator[Callable[..., object]]:
    async def start(**kwargs: object) -> LotusHeadSource:
        kwargs.setdefault("poll_period", 0.1)
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("stall_after", 0.3)
        kwargs.setdefault("resubscribe_delay", 0.05)
        kwargs.setdefault("retry_max", 0.2)
        full = kwargs.pop("full", [fake_lotus.api_info()])
        source = LotusHeadSource(full, **kwargs)  # type: ignore[arg-type]
        await nursery.start(source.run)
        return source

    yield start


def state_of(source: LotusHeadSource) -> SourceState:
    """Read afresh each time (mypy would keep a narrowed `source.status.state`)."""
    return source.status.state


def changes(source: LotusHeadSource) -> list[int]:
    """Counts the source's change notifications into a list (one item per call)."""
    fired: list[int] = []
    source.on_change(lambda: fired.append(len(fired)))
    return fired


async def test_healthy_node_says_ok_network_name_and_when_the_head_was_seen(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    before = trio.current_time()
    source: LotusHeadSource = await started()  # type: ignore[misc]
    status = source.status
    assert (status.state, status.error) == (SourceState.OK, None)
    await eventually(lambda: source.status.network_name == "calibrationnet")
    assert fake_lotus.calls.count("Filecoin.StateNetworkName") == 1
    head = source.latest
    assert head is not None and head.seen_at is not None
    assert abs(head.seen_at / 1000 - time.time()) < 5
    fake_lotus.advance()
    await eventually(lambda: source.latest is not None and source.latest.height == 101)
    assert source.latest is not None and source.latest.seen_at is not None
    assert source.latest.seen_at >= head.seen_at
    assert trio.current_time() - before < 5
    # the client counted its calls
    assert source.rpc_stats.latency["ChainHead"].counts
    assert sum(source.rpc_stats.errors.values()) == 0


async def test_wrong_token_is_unauthorized_at_once_with_advice(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.token = "right"
    t0 = trio.current_time()
    source: LotusHeadSource = await started(full=[fake_lotus.api_info(token="wrong")])  # type: ignore[misc]
    assert trio.current_time() - t0 < 1.0  # started without waiting for anything
    status = source.status
    assert status.state is SourceState.UNAUTHORIZED
    assert status.error == (
        "unauthorized: check the token and its permission (FULLNODE_API_INFO, http 401)"
    )
    assert source.latest is None and not status.reachable
    await eventually(lambda: source.rpc_stats.errors[ErrorKind.UNAUTHORIZED] >= 3)
    # the token is fixed (e.g. the node's JWT secret restored): ok on the next poll
    fake_lotus.token = "wrong"
    await eventually(lambda: state_of(source) is SourceState.OK)
    assert source.latest is not None and source.latest.height == 100


async def test_refused_by_a_403_names_the_setting(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.refuse_auth(403)
    source: LotusHeadSource = await started(setting="--fullnode-api-info")  # type: ignore[misc]
    assert source.status.state is SourceState.UNAUTHORIZED
    assert "(--fullnode-api-info, http 403)" in (source.status.error or "")


async def test_silent_node_is_unreachable_before_the_call_deadline(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(timeout=5.0)  # type: ignore[misc]
    fired = changes(source)
    assert source.status.state is SourceState.OK
    before = source.latest
    fake_lotus.go_silent()
    t0 = trio.current_time()
    await eventually(lambda: state_of(source) is SourceState.UNREACHABLE)
    # the next poll (0.1 s) plus stall_after (0.3 s), far before the 5 s deadline
    assert trio.current_time() - t0 < 2.0
    assert source.status.error == "unreachable: ChainHead: no answer within 0.3s"
    assert source.latest == before  # the last head is kept
    assert fired  # the listeners heard of it at once
    fake_lotus.speak_again()
    await eventually(lambda: state_of(source) is SourceState.OK)
    assert source.status.error is None


async def test_silent_from_the_start_beats_are_not_held_back(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.go_silent()
    t0 = trio.current_time()
    source: LotusHeadSource = await started(timeout=5.0)  # type: ignore[misc]
    assert trio.current_time() - t0 < 1.5  # stall_after, not the 5 s deadline
    assert source.latest is None
    assert source.status.state is SourceState.UNREACHABLE
    fake_lotus.speak_again()
    await eventually(lambda: source.latest is not None)
    await eventually(lambda: state_of(source) is SourceState.OK)


async def test_node_going_away_is_seen_through_the_lost_subscription(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(poll_period=3600.0)  # type: ignore[misc]
    await eventually(lambda: source.status.mode == "subscribed")
    await fake_lotus.go_unreachable()
    # no poll is due for an hour: the lost subscription triggers one at once
    await eventually(lambda: state_of(source) is SourceState.UNREACHABLE, timeout=3)
    error = source.status.error or ""
    assert error.startswith("unreachable: Filecoin.ChainHead: connection refused (127.0.0.1:")
    assert source.rpc_stats.errors[ErrorKind.UNREACHABLE] >= 1


async def test_network_name_is_asked_again_after_each_reconnection(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.fail("Filecoin.StateNetworkName")
    source: LotusHeadSource = await started()  # type: ignore[misc]
    # failed at first: retried until it answers
    await eventually(lambda: fake_lotus.calls.count("Filecoin.StateNetworkName") >= 2)
    assert source.status.network_name == "calibrationnet"  # from StateGetNetworkParams
    fake_lotus.network_name = "butterflynet"
    fake_lotus.heal()
    await eventually(lambda: source.status.network_name == "butterflynet")
    asked = fake_lotus.calls.count("Filecoin.StateNetworkName")
    await trio.sleep(0.5)
    assert fake_lotus.calls.count("Filecoin.StateNetworkName") == asked  # once per connection
    # an outage, then the node (now on another network) answers again: asked once more
    await fake_lotus.go_unreachable()
    await eventually(lambda: state_of(source) is SourceState.UNREACHABLE)
    fake_lotus.network_name = "mainnet"
    await fake_lotus.come_back()
    await eventually(lambda: source.status.network_name == "mainnet")
    assert source.status.state is SourceState.OK


async def test_head_going_backwards_is_reported_as_it_is(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started()  # type: ignore[misc]
    await eventually(lambda: fake_lotus.subscribers == 1)
    fake_lotus.advance(5)
    await eventually(lambda: source.latest is not None and source.latest.height == 105)
    seen = source.latest
    assert seen is not None
    fake_lotus.fall_back(3)  # a restart from an older state: subscriptions cut, head 102
    await eventually(lambda: source.latest is not None and source.latest.height == 102)
    back = source.latest
    assert back is not None and back.cids == fake_lotus.cids_at(102)
    assert back.seen_at is not None and seen.seen_at is not None
    assert back.seen_at >= seen.seen_at  # when the agent learned of the head it has now
    # and stays there: no poll or late notification brings 105 back
    await trio.sleep(0.5)
    assert source.latest is not None and source.latest.height == 102
    fake_lotus.advance()
    await eventually(lambda: source.latest is not None and source.latest.height == 103)


async def test_polling_only_head_going_backwards(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    fake_lotus.set_head(120)
    await eventually(lambda: source.latest is not None and source.latest.height == 120)
    fake_lotus.set_head(117)  # a failover to a node three epochs behind
    await eventually(lambda: source.latest is not None and source.latest.height == 117)


@pytest.mark.parametrize(
    ("code", "state", "text"),
    [
        (1, SourceState.NO_HEAD, "no head: Filecoin.ChainHead: rpc error 1: chain not ready"),
        (
            -32601,
            SourceState.UNREACHABLE,
            "unreachable: Filecoin.ChainHead: rpc error -32601: chain not ready "
            "(is FULLNODE_API_INFO a Lotus full node API?)",
        ),
    ],
)
async def test_json_rpc_errors_by_meaning(
    fake_lotus: FakeLotus,
    started: Callable[..., object],
    code: int,
    state: SourceState,
    text: str,
) -> None:
    fake_lotus.fail("Filecoin.ChainHead", code, "chain not ready")
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    assert source.latest is None
    assert (source.status.state, source.status.error) == (state, text)
    assert source.rpc_stats.errors[ErrorKind.RPC_ERROR] >= 1


async def test_http_error_without_json_rpc_is_unreachable(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.refuse_auth(502)  # a proxy in front of a dead node
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    assert source.status.state is SourceState.UNREACHABLE
    assert source.status.error == (
        f"unreachable: Filecoin.ChainHead: http 502 (127.0.0.1:{fake_lotus.port})"
    )


async def test_syncing_node(fake_lotus: FakeLotus, started: Callable[..., object]) -> None:
    fake_lotus.sync_state = {
        "ActiveSyncs": [
            {
                "Stage": 3,
                "Height": 95,
                "Base": fake_lotus.tipset(90),
                "Target": fake_lotus.tipset(130),
            }
        ]
    }
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    assert (source.status.state, source.status.error) == (SourceState.SYNCING, None)
