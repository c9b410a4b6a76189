"""The agent says what is wrong, on the wire: unit tests on trio's fake clock.

The beat's health keys (`make_beat`), the classification of node failures
(`heartbeat.agent.health`), the extra beat on a change (coalesced, throttled, the timer's
grid kept) and what that does to the aggregator's default per-peer rate limit, and the
agent's health metrics. No sockets: the loop runs over the fake connector of
tests/test_agent_loop.py.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from prometheus_client import generate_latest

from aggregator.config import AggregatorConfig
from aggregator.ratelimit import TokenBucket
from heartbeat.agent.cli import make_head_source
from heartbeat.agent.config import build_config
from heartbeat.agent.head import (
    Head,
    NodeBadResponse,
    NodeRpcError,
    NodeTimeout,
    NodeUnauthorized,
    NodeUnreachable,
    SourceStatus,
)
from heartbeat.agent.health import ErrorKind, classify, source_state, wire_text
from heartbeat.agent.loop import BeatLoop, make_beat
from heartbeat.agent.lotus.client import connect_cause
from heartbeat.agent.lotus.source import LotusHeadSource
from heartbeat.agent.metrics import make_registry
from heartbeat.agent.rpcstats import RpcStats, method_label
from heartbeat.agent.sources import StaticHeadSource, fake_cid
from heartbeat.protocol.beat import MAX_SOURCE_ERROR_LENGTH, SourceState
from heartbeat.protocol.wire import Beat, BeatDecoder, encode_cbor, encode_json
from tests.test_agent_loop import CID, HEAD, FakeConnector, loop_for, rel

pytestmark = pytest.mark.timeout(30)

TARGET = "/ip4/127.0.0.1/tcp/9081/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"

UNAUTHORIZED = SourceStatus(
    reachable=False,
    mode="unreachable",
    state=SourceState.UNAUTHORIZED,
    error="unauthorized: check the token and its permission (FULLNODE_API_INFO, http 401)",
)


def decoded(connector: FakeConnector, index: int = 0) -> list[Beat]:
    data = b"".join(d for _, d in connector.streams[index].writes)
    beats = BeatDecoder().feed(data)
    assert all(isinstance(b, Beat) for b in beats)
    return [b for b in beats if isinstance(b, Beat)]


def times(connector: FakeConnector, index: int = 0) -> list[float]:
    return rel([t for t, _ in connector.streams[index].writes], connector.t0)


# -- make_beat ------------------------------------------------------------------------


def test_beat_without_a_head_says_empty_head_height_zero_and_why() -> None:
    beat = make_beat(None, nickname="n", miner_address="f01234", version="v", status=UNAUTHORIZED)
    assert (beat.head, beat.height, beat.miner_address) == ("{}", 0, "f01234")
    assert beat.source_state is SourceState.UNAUTHORIZED
    assert beat.source_error == UNAUTHORIZED.error
    assert beat.head_seen_at is None and beat.genesis_cid is None
    assert beat.source_down
    # both encodings carry it, and every receiver of ours decodes it back
    for encode in (encode_cbor, encode_json):
        assert BeatDecoder().feed(encode(beat)) == [beat]
    assert b'"Head":"{}"' in encode_json(beat)
    assert b'"SourceState":"unauthorized"' in encode_json(beat)


def test_beat_with_a_head_carries_seen_at_state_and_network_name() -> None:
    head = Head(cids=(CID,), height=9, timestamp=1_700_000_000, seen_at=1_700_000_004_250)
    status = SourceStatus(True, "polling", network_name="calibrationnet")
    beat = make_beat(head, nickname="n", miner_address="", version="v", status=status)
    assert (beat.head_seen_at, beat.network_name) == (1_700_000_004_250, "calibrationnet")
    assert (beat.source_state, beat.source_error) == (SourceState.OK, None)
    # a source that says nothing about itself: no health keys, as before
    plain = make_beat(head, nickname="n", miner_address="", version="v")
    assert (plain.source_state, plain.network_name) == (None, None)


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "state", "kind", "text"),
    [
        (
            NodeUnauthorized("Filecoin.ChainHead", 401),
            SourceState.UNAUTHORIZED,
            ErrorKind.UNAUTHORIZED,
            "unauthorized: check the token and its permission (FULLNODE_API_INFO, http 401)",
        ),
        (
            NodeUnauthorized("Filecoin.ChainHead", 403),
            SourceState.UNAUTHORIZED,
            ErrorKind.UNAUTHORIZED,
            "unauthorized: check the token and its permission (FULLNODE_API_INFO, http 403)",
        ),
        (
            NodeUnreachable("Filecoin.ChainHead: connection refused (127.0.0.1:1234)"),
            SourceState.UNREACHABLE,
            ErrorKind.UNREACHABLE,
            "unreachable: Filecoin.ChainHead: connection refused (127.0.0.1:1234)",
        ),
        (
            NodeTimeout("Filecoin.ChainHead: no answer within 5s"),
            SourceState.UNREACHABLE,
            ErrorKind.TIMEOUT,
            "unreachable: Filecoin.ChainHead: no answer within 5s",
        ),
        (
            NodeRpcError("Filecoin.ChainHead", -32601, "method 'Filecoin.ChainHead' not found"),
            SourceState.UNREACHABLE,
            ErrorKind.RPC_ERROR,
            "unreachable: Filecoin.ChainHead: rpc error -32601: method 'Filecoin.ChainHead' "
            "not found (is FULLNODE_API_INFO a Lotus full node API?)",
        ),
        (
            NodeRpcError("Filecoin.ChainHead", 1, "blockstore closed"),
            SourceState.NO_HEAD,
            ErrorKind.RPC_ERROR,
            "no head: Filecoin.ChainHead: rpc error 1: blockstore closed",
        ),
        (
            NodeBadResponse("ChainHead: the node answered without a head"),
            SourceState.NO_HEAD,
            ErrorKind.BAD_RESPONSE,
            "no head: ChainHead: the node answered without a head",
        ),
    ],
)
def test_classify(exc: Exception, state: SourceState, kind: ErrorKind, text: str) -> None:
    failure = classify(exc)  # type: ignore[arg-type]
    assert (failure.state, failure.kind, failure.text) == (state, kind, text)


def test_unauthorized_names_the_setting_it_came_from() -> None:
    failure = classify(NodeUnauthorized("Filecoin.ActorAddress", 401), setting="MINER_API_INFO")
    assert "MINER_API_INFO" in failure.text and "check the token" in failure.text


def test_error_text_fits_the_wire() -> None:
    text = wire_text("a\nb\tc\x00" + "x" * 500)
    assert len(text) == MAX_SOURCE_ERROR_LENGTH and text.isprintable()
    assert text.startswith("a b c ") and text.endswith("…")
    long = classify(NodeRpcError("Filecoin.ChainHead", 1, "y" * 1000))
    assert len(long.text) <= MAX_SOURCE_ERROR_LENGTH and long.text.isprintable()


def test_state_precedence() -> None:
    refused = classify(NodeUnreachable("x"))
    assert source_state(failure=refused, stalled="s", has_head=True, syncing=True) == (
        SourceState.UNREACHABLE,
        "unreachable: x",
    )
    assert source_state(failure=None, stalled="unreachable: hung", has_head=True, syncing=True)[
        0
    ] is (SourceState.UNREACHABLE)
    assert source_state(failure=None, stalled=None, has_head=False, syncing=None)[0] is (
        SourceState.NO_HEAD
    )
    assert source_state(failure=None, stalled=None, has_head=True, syncing=True) == (
        SourceState.SYNCING,
        None,
    )
    assert source_state(failure=None, stalled=None, has_head=True, syncing=None) == (
        SourceState.OK,
        None,
    )


def test_connect_cause_reads_the_cause_chain() -> None:
    def chained(outer: BaseException, inner: BaseException) -> BaseException:
        outer.__cause__ = inner
        return outer

    refused = chained(httpx.ConnectError("x"), OSError("all attempts"))
    assert refused.__cause__ is not None
    refused.__cause__.__cause__ = ExceptionGroup("g", [ConnectionRefusedError(111, "refused")])
    assert connect_cause(refused) == "connection refused"
    assert connect_cause(chained(httpx.ConnectError("x"), socket.gaierror(-2, "no"))) == (
        "DNS lookup failed"
    )
    assert connect_cause(httpx.ConnectError("x")) == "ConnectError"


# -- the extra beat ------------------------------------------------------------------------


class Changing:
    """A head that a test moves; the loop is woken as the source's listeners would."""

    def __init__(self, head: Head | None = HEAD) -> None:
        self.head = head
        self.loop: BeatLoop | None = None

    def set(self, height: int) -> None:
        self.head = Head(cids=(fake_cid("changing", height),), height=height)
        assert self.loop is not None
        self.loop.wake()


async def test_a_head_change_sends_one_extra_beat_at_once_and_keeps_the_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chain = Changing()
    connector = FakeConnector()
    chain.loop = loop = loop_for(connector, latest=lambda: chain.head)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(4.25)
        chain.set(101)  # at 4.25: an extra beat at once
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert times(connector) == [0.0, 3.0, 4.25, 6.0, 9.0]  # the grid is not moved
    assert [b.height for b in decoded(connector)] == [1234, 1234, 101, 101, 101]
    assert loop.stats.extra_beats == 1


async def test_a_burst_of_changes_coalesces_and_extras_are_at_most_one_per_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chain = Changing()
    connector = FakeConnector()
    chain.loop = loop = loop_for(connector, latest=lambda: chain.head)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(0.5)
        for height in (1, 2, 3):  # three changes in one instant: one beat, the last head
            chain.set(height)
        await trio.sleep(0.2)  # 0.7
        chain.set(4)  # within the second after the extra at 0.5: sent at 1.5
        await trio.sleep(0.1)  # 0.8
        chain.set(5)  # coalesces into the one at 1.5
        await trio.sleep(1.5)  # 2.3
        chain.set(6)  # 1.5 + 1 = 2.5 is before the tick at 3: sent at 2.5
        await trio.sleep(0.4)  # 2.7
        chain.set(7)  # 2.5 + 1 = 3.5 is after the tick at 3: the tick carries it
        await trio.sleep(1.0)  # 3.7
        nursery.cancel_scope.cancel()
    assert times(connector) == [0.0, 0.5, 1.5, 2.5, 3.0]
    assert [b.height for b in decoded(connector)] == [1234, 3, 5, 6, 7]
    assert loop.stats.extra_beats == 3


async def test_a_change_the_last_beat_already_carried_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connector = FakeConnector()
    loop = loop_for(connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(1)
        loop.wake()  # nothing changed (a source that fired for a fact the beat lacks)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert times(connector) == [0.0, 3.0]
    assert loop.stats.extra_beats == 0


async def test_state_change_before_the_first_head_is_sent_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    status = [SourceStatus(True, "polling", state=SourceState.NO_HEAD, error="no head: yet")]
    head: list[Head | None] = [None]
    connector = FakeConnector()
    loop = loop_for(connector, latest=lambda: head[0], status=lambda: status[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(1.5)
        status[0] = UNAUTHORIZED
        loop.wake()
        await trio.sleep(1.0)
        head[0], status[0] = HEAD, SourceStatus(True, "polling")
        loop.wake()
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    beats = decoded(connector)
    assert times(connector) == [0.0, 1.5, 2.5]
    assert [(b.head, b.height, b.source_state) for b in beats] == [
        ("{}", 0, SourceState.NO_HEAD),
        ("{}", 0, SourceState.UNAUTHORIZED),
        ("{" + CID + "}", 1234, SourceState.OK),
    ]
    assert beats[1].source_error == UNAUTHORIZED.error


async def test_stop_during_a_pending_extra_beat_closes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chain = Changing()
    connector = FakeConnector()
    chain.loop = loop = loop_for(connector, latest=lambda: chain.head)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(0.2)
        chain.set(1)  # sent at 0.2
        await trio.sleep(0.1)
        chain.set(2)  # due at 1.2
        loop.stop()
    assert times(connector) == [0.0, 0.2]
    assert connector.streams[0].closed
    assert trio.current_time() - connector.t0 == pytest.approx(0.3)


async def test_worst_case_schedule_is_within_the_aggregators_default_rate_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A head change every 100 ms for ten minutes (far worse than one per 30 s epoch) at
    # the default 3 s beat period: every beat passes the aggregator's default bucket.
    defaults = AggregatorConfig()
    bucket = TokenBucket(defaults.rate_limit, defaults.rate_burst)
    chain = Changing()
    connector = FakeConnector()
    chain.loop = loop = loop_for(connector, latest=lambda: chain.head)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        for height in range(6000):
            chain.set(height)
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    sent = times(connector)
    assert all(bucket.allow(t) for t in sent)
    assert len(sent) <= 600 / 3 + 600 + 2  # the timer plus at most one extra a second
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.0
    extra = [t for t in sent if t % 3.0]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(extra))


# -- metrics --------------------------------------------------------------------------


def test_health_metrics_have_every_state_and_kind_always() -> None:
    head = Head(cids=(CID,), height=77, timestamp=1_700_000_000)
    source = StaticHeadSource(head)
    stats = RpcStats()
    stats.failed(ErrorKind.TIMEOUT)
    stats.failed(ErrorKind.TIMEOUT)
    stats.answered("Filecoin.ChainHead", 0.003)
    stats.answered("Filecoin.ChainHead", 0.2)
    stats.answered("Filecoin.Bogus", 20.0)
    registry = make_registry([], source, stats)
    text = generate_latest(registry).decode()
    for state in SourceState:
        value = "1.0" if state is SourceState.OK else "0.0"
        assert f'fil_heartbeat_agent_source_state{{state="{state.value}"}} {value}' in text
    for kind in ErrorKind:
        value = "2.0" if kind is ErrorKind.TIMEOUT else "0.0"
        assert f'fil_heartbeat_agent_lotus_rpc_errors_total{{kind="{kind.value}"}} {value}' in text
    latency = "fil_heartbeat_agent_lotus_rpc_duration_seconds"
    assert f'{latency}_bucket{{le="0.005",method="ChainHead"}} 1.0' in text
    assert f'{latency}_bucket{{le="0.25",method="ChainHead"}} 2.0' in text
    assert f'{latency}_bucket{{le="+Inf",method="ChainHead"}} 2.0' in text
    assert f'{latency}_count{{method="other"}} 1.0' in text
    assert "fil_heartbeat_agent_head_height 77.0" in text
    age = next(
        line
        for line in text.splitlines()
        if line.startswith("fil_heartbeat_agent_head_age_seconds ")
    )
    assert float(age.split()[1]) > 0
    assert method_label("Filecoin.StateNetworkName") == "StateNetworkName"


@pytest.mark.parametrize(
    ("beat_period", "poll", "stall"),
    [("3s", 1.5, 1.5), ("10s", 1.5, 1.5), ("1s", 0.5, 0.5), ("200ms", 0.1, 0.5)],
)
def test_lotus_polls_and_stalls_follow_the_beat_period(
    tmp_path: Path, beat_period: str, poll: float, stall: float
) -> None:
    env = {"FULLNODE_API_INFO": "TOKEN:/ip4/127.0.0.1/tcp/1234/http"}
    flags = {"targets": [TARGET], "beat_period": beat_period}
    config = build_config(flags, env, default_identity_file=tmp_path / "agent.key")
    source = make_head_source(config)
    assert isinstance(source, LotusHeadSource)
    assert (source.poll_period, source.stall_after, source.timeout) == (poll, stall, 5.0)
    # a node silent from just after a poll is reported within one beat period (from 1 s up)
    if config.beat_period >= 1.0:
        assert source.poll_period + source.stall_after <= config.beat_period
