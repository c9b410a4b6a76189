"""LotusHeadSource and the Lotus client against the fake Lotus node on loopback.

These run on the real clock (real sockets cannot share a jumping fake clock) with short
periods; waits are bounded conditions, never fixed sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from heartbeat.agent.head import NodeBadResponse, NodeRpcError, NodeUnauthorized, NodeUnreachable
from heartbeat.agent.lotus.client import (
    ActiveSync,
    LotusClient,
    parse_active_syncs,
    parse_network_params,
    parse_tipset,
)
from heartbeat.agent.lotus.notify import chain_notify, parse_changes
from heartbeat.agent.lotus.source import LotusHeadSource, is_syncing
from heartbeat.errors import ConfigError
from tests.fakelotus import FakeLotus, fake_lotus
from tests.helpers import eventually

__all__ = ["fake_lotus"]  # the fixture, re-exported for pytest

SRC = "heartbeat.agent.lotus.source"


@pytest.fixture
async def started(
    nursery: trio.Nursery, fake_lotus: FakeLotus
) -> AsyncIterator[Callable[..., object]]:
    async def start(**kwargs: object) -> LotusHeadSource:
        kwargs.setdefault("poll_period", 0.05)
        kwargs.setdefault("timeout", 1.0)
        full = kwargs.pop("full", [fake_lotus.api_info()])
        source = LotusHeadSource(full, **kwargs)  # type: ignore[arg-type]
        await nursery.start(source.run)
        return source

    yield start


@pytest.mark.integration
async def test_polling_only(fake_lotus: FakeLotus, started: Callable[..., object]) -> None:
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    head = source.latest
    assert head is not None
    assert head.height == 100
    assert head.cids == fake_lotus.cids_at(100)
    assert head.timestamp == fake_lotus.genesis_timestamp + 100 * 30  # the smaller block's
    assert head.genesis_cid == fake_lotus.genesis_cid
    assert head.syncing is False
    assert source.block_delay == 30.0
    assert source.genesis_timestamp == fake_lotus.genesis_timestamp
    assert source.status.mode == "polling" and source.status.reachable
    fake_lotus.set_head(105)
    await eventually(lambda: source.latest is not None and source.latest.height == 105)
    assert "Filecoin.ChainNotify" not in fake_lotus.calls
    # network facts are read once
    assert fake_lotus.calls.count("Filecoin.ChainGetGenesis") == 1
    assert fake_lotus.calls.count("Filecoin.StateGetNetworkParams") == 1


@pytest.mark.integration
async def test_subscription_delivers_heads(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(poll_period=3600.0)  # type: ignore[misc]
    await eventually(lambda: fake_lotus.subscribers == 1)
    await eventually(lambda: source.status.mode == "subscribed")
    polls = fake_lotus.calls.count("Filecoin.ChainHead")
    fake_lotus.advance()
    await eventually(lambda: source.latest is not None and source.latest.height == 101)
    fake_lotus.advance(3)
    await eventually(lambda: source.latest is not None and source.latest.height == 104)
    assert fake_lotus.calls.count("Filecoin.ChainHead") == polls  # not from polling


@pytest.mark.integration
async def test_reorg_replaces_the_head(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(poll_period=3600.0)  # type: ignore[misc]
    await eventually(lambda: fake_lotus.subscribers == 1)
    old = fake_lotus.cids_at(100)
    fake_lotus.reorg(depth=2)
    new = fake_lotus.cids_at(100)
    assert new != old
    await eventually(lambda: source.latest is not None and source.latest.cids == new)
    assert source.latest is not None and source.latest.height == 100


@pytest.mark.integration
async def test_closed_channel_resubscribes(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(  # type: ignore[misc]
        poll_period=3600.0, resubscribe_delay=0.05
    )
    await eventually(lambda: fake_lotus.subscribers == 1)
    fake_lotus.close_subscriptions()
    await eventually(lambda: fake_lotus.subscriptions_total == 2 and fake_lotus.subscribers == 1)
    fake_lotus.advance()
    await eventually(lambda: source.latest is not None and source.latest.height == 101)
    # a connection cut without a close message also leads to a new subscription
    fake_lotus.drop_subscriptions()
    await eventually(lambda: fake_lotus.subscriptions_total == 3 and fake_lotus.subscribers == 1)


@pytest.mark.integration
async def test_subscription_failure_falls_back_to_polling(
    fake_lotus: FakeLotus, started: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SRC)
    fake_lotus.fail("Filecoin.ChainNotify", -32601, "method not supported")
    source: LotusHeadSource = await started(resubscribe_delay=0.02)  # type: ignore[misc]
    await eventually(lambda: fake_lotus.calls.count("Filecoin.ChainNotify") >= 3)
    assert source.status.mode == "polling"
    fake_lotus.set_head(110)
    await eventually(lambda: source.latest is not None and source.latest.height == 110)
    notes = [r for r in caplog.records if r.getMessage().startswith("chain_notify_failed")]
    assert [r.levelno for r in notes][:2] == [logging.INFO, logging.DEBUG]
    fake_lotus.heal()
    await eventually(lambda: source.status.mode == "subscribed", timeout=10)


@pytest.mark.integration
async def test_unreachable_node_keeps_head_and_escalates(
    fake_lotus: FakeLotus, started: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SRC)
    # error_every well above the poll period even on a loaded machine: the quiet DEBUG
    # attempts between the first WARNING and the first ERROR must have time to happen.
    source: LotusHeadSource = await started(error_every=2.0)  # type: ignore[misc]
    before = source.latest
    assert before is not None
    await fake_lotus.go_unreachable()
    await eventually(lambda: not source.status.reachable)
    await eventually(
        lambda: any(r.levelno == logging.ERROR for r in caplog.records if r.name == SRC)
    )
    assert source.latest == before
    assert source.status.mode == "unreachable"
    await fake_lotus.come_back()
    fake_lotus.advance()
    await eventually(lambda: source.latest is not None and source.latest.height == 101)
    assert source.status.reachable
    levels = [
        r.levelno
        for r in caplog.records
        if r.name == SRC and r.getMessage().startswith(("lotus_unreachable", "lotus_recovered"))
    ]
    assert levels[0] == logging.WARNING
    assert levels.count(logging.WARNING) == 1
    assert levels[-1] == logging.INFO
    assert logging.DEBUG in levels
    first_error = levels.index(logging.ERROR)
    assert all(lv == logging.DEBUG for lv in levels[1:first_error])
    recovered = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.getMessage().startswith("lotus_recovered")
    ]
    assert len(recovered) == 1 and "failed attempts" in recovered[0]


@pytest.mark.integration
async def test_sync_state_marks_syncing(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    assert source.latest is not None and source.latest.syncing is False
    fake_lotus.sync_state = {
        "ActiveSyncs": [
            {
                "Stage": 3,
                "Height": 95,
                "Base": fake_lotus.tipset(90),
                "Target": fake_lotus.tipset(130),
            },
        ],
        "VMApplied": 0,
    }
    await eventually(lambda: source.latest is not None and source.latest.syncing is True)
    fake_lotus.sync_state = {
        "ActiveSyncs": [
            {"Stage": 4, "Height": 130, "Base": None, "Target": fake_lotus.tipset(130)},
        ],
        "VMApplied": 0,
    }
    await eventually(lambda: source.latest is not None and source.latest.syncing is False)


@pytest.mark.parametrize(
    ("syncs", "expected"),
    [
        ([], False),
        ([ActiveSync(3, 100, 101, 100)], False),  # following the chain
        ([ActiveSync(3, 100, 105, 100)], True),
        ([ActiveSync(6, 100, 300, 100)], True),
        ([ActiveSync(4, 300, 300, 100)], False),  # complete
        ([ActiveSync(0, 0, None, None)], False),  # idle
        ([ActiveSync(5, 100, 300, 100)], False),  # errored
        ([ActiveSync(0, 0, None, None), ActiveSync(1, 100, 900, 100)], True),
    ],
)
def test_is_syncing_rule(syncs: list[ActiveSync], expected: bool) -> None:
    assert is_syncing(syncs, 100) is expected


@pytest.mark.integration
async def test_genesis_is_retried_until_it_succeeds(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.fail("Filecoin.StateGetNetworkParams")
    source: LotusHeadSource = await started(subscribe=False)  # type: ignore[misc]
    assert source.block_delay is None
    assert source.latest is not None and source.latest.genesis_cid is None
    fake_lotus.heal()
    await eventually(lambda: source.block_delay == 30.0)
    await eventually(
        lambda: source.latest is not None and source.latest.genesis_cid == fake_lotus.genesis_cid
    )


@pytest.mark.integration
async def test_miner_address_from_miner_api(
    fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    fake_lotus.miner_address = "t000777"
    source: LotusHeadSource = await started(  # type: ignore[misc]
        subscribe=False, miner=[fake_lotus.api_info(miner=True)]
    )
    assert source.miner_address == "t0777"
    assert source.latest is not None and source.latest.miner_address == "t0777"


@pytest.mark.integration
async def test_bad_miner_address_is_retried(
    fake_lotus: FakeLotus, started: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    fake_lotus.miner_address = "nonsense"
    source: LotusHeadSource = await started(  # type: ignore[misc]
        subscribe=False, miner=[fake_lotus.api_info(miner=True)]
    )
    assert source.miner_address == ""
    assert any(
        r.getMessage().startswith("miner_unreachable") and r.levelno == logging.WARNING
        for r in caplog.records
    )
    fake_lotus.miner_address = "f01234"
    await eventually(lambda: source.miner_address == "f01234")


@pytest.mark.integration
async def test_miner_override(fake_lotus: FakeLotus, started: Callable[..., object]) -> None:
    source: LotusHeadSource = await started(  # type: ignore[misc]
        subscribe=False, miner=[fake_lotus.api_info(miner=True)], miner_override="f00123"
    )
    assert source.latest is not None and source.latest.miner_address == "f0123"
    assert "Filecoin.ActorAddress" not in fake_lotus.calls
    with pytest.raises(ConfigError):
        LotusHeadSource([fake_lotus.api_info()], miner_override="f0x")


@pytest.mark.integration
async def test_failover_to_the_next_endpoint(
    nursery: trio.Nursery, fake_lotus: FakeLotus, started: Callable[..., object]
) -> None:
    dead = FakeLotus()
    await dead.start(nursery)
    await dead.go_unreachable()
    source: LotusHeadSource = await started(  # type: ignore[misc]
        subscribe=False, full=[dead.api_info(), fake_lotus.api_info()]
    )
    await eventually(lambda: source.latest is not None and source.latest.height == 100)
    assert source.status.reachable


@pytest.mark.integration
async def test_token_is_sent(nursery: trio.Nursery) -> None:
    fake = FakeLotus(token="s3cret")
    await fake.start(nursery)
    async with LotusClient(fake.api_info(), 1.0) as good:
        assert (await good.chain_head()).height == 100
    async with LotusClient(fake.api_info(token="wrong"), 1.0) as bad:
        with pytest.raises(NodeUnauthorized, match="http 401"):
            await bad.chain_head()
    got: list[object] = []
    async with trio.open_nursery() as n:
        await n.start(
            lambda task_status: chain_notify(
                fake.api_info(), got.append, timeout=1.0, task_status=task_status
            )
        )
        await eventually(lambda: len(got) == 1)
        n.cancel_scope.cancel()
    with pytest.raises(NodeUnauthorized, match="http 403"):  # hypercorn refuses with 403
        await chain_notify(fake.api_info(token="wrong"), got.append, timeout=1.0)


@pytest.mark.integration
async def test_client_errors_are_typed(fake_lotus: FakeLotus) -> None:
    async with LotusClient(fake_lotus.api_info(), 0.3) as client:
        fake_lotus.fail("Filecoin.ChainHead", 12, "nope")
        with pytest.raises(NodeRpcError) as info:
            await client.chain_head()
        assert (info.value.code, info.value.message) == (12, "nope")
        fake_lotus.heal()
        fake_lotus.delay("Filecoin.ChainHead", 2.0)
        with pytest.raises(NodeUnreachable):
            await client.chain_head()
        with pytest.raises(NodeRpcError) as info:
            await client.call("Filecoin.ChainNotify")  # WebSocket only
        assert info.value.code == -32601


# -- pure decoders of Lotus answers --------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "Cids",
                    "/",
                    "Height",
                    "Blocks",
                    "Timestamp",
                    "Type",
                    "Val",
                    "ActiveSyncs",
                    "Stage",
                    "Target",
                    "Base",
                    "NetworkName",
                    "BlockDelaySecs",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(_json)
def test_decoders_raise_only_bad_response(value: object) -> None:
    for parse in (parse_tipset, parse_active_syncs, parse_network_params, parse_changes):
        try:
            parse(value)
        except NodeBadResponse:
            pass


def test_parse_tipset_shape() -> None:
    ts = {
        "Cids": [{"/": "b2"}, {"/": "b1"}],
        "Height": 7,
        "Blocks": [{"Timestamp": 20, "Height": 7}, {"Timestamp": 19, "Height": 7}],
    }
    head = parse_tipset(ts)
    assert (head.cids, head.height, head.timestamp) == (("b2", "b1"), 7, 19)
    for bad in (
        {**ts, "Height": True},
        {**ts, "Height": -1},
        {**ts, "Cids": []},
        {**ts, "Cids": [{"/": 5}]},
        {**ts, "Blocks": [{"Timestamp": "1"}]},
    ):
        with pytest.raises(NodeBadResponse):
            parse_tipset(bad)
