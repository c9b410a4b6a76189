"""The Lotus head source's health timing on trio's fake clock: exact virtual times.

`LotusHeadSource` runs over a scripted node (`FakeNode`: a client and a ChainNotify that
answer, hang, refuse or deny on command) instead of sockets, so the times at which the
state changes, the polls happen and StateNetworkName is asked are exact; the last test
puts a beat loop on top and shows a hung Lotus reported by the beats within one beat
period. The same behaviour over real HTTP and WebSocket is in test_agent_health_lotus.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from heartbeat.agent.head import (
    ChangeType,
    Head,
    NodeRpcError,
    NodeTimeout,
    NodeUnauthorized,
    NodeUnreachable,
)
from heartbeat.agent.health import ErrorKind
from heartbeat.agent.lotus.apiinfo import ApiInfo
from heartbeat.agent.lotus.client import ActiveSync, NetworkParams
from heartbeat.agent.lotus.source import LotusHeadSource
from heartbeat.agent.rpcstats import RpcStats
from heartbeat.agent.sources import fake_cid
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.wire import Beat, BeatDecoder
from tests.test_agent_loop import FakeConnector, loop_for, rel

pytestmark = pytest.mark.timeout(30)

INFO = ApiInfo(url="http://lotus.test:1234/rpc/v1", ws_url="ws://lotus.test:1234/rpc/v1")


class FakeNode:
    """One scripted Lotus node: `mode` is ok, hung, refused, unauthorized or rpc_error."""

    def __init__(self) -> None:
        self.height = 100
        self.mode = "ok"
        self.name = "calibrationnet"
        self.calls: list[tuple[float, str]] = []
        self.t0 = trio.current_time()
        self._subscribers: list[trio.MemorySendChannel[list[tuple[ChangeType, Head]]]] = []

    def head(self) -> Head:
        return Head(cids=(fake_cid("node", self.height),), height=self.height)

    def advance(self) -> None:
        self.height += 1
        for sub in self._subscribers:
            sub.send_nowait([("apply", self.head())])

    def drop_subscriptions(self) -> None:
        for sub in self._subscribers:
            sub.close()
        self._subscribers.clear()

    def called(self, method: str) -> list[float]:
        return [t for t, m in self.calls if m == method]

    async def answer(self, method: str) -> None:
        self.calls.append((round(trio.current_time() - self.t0, 6), method))
        if self.mode == "hung":
            await trio.sleep_forever()
        if self.mode == "refused":
            raise NodeUnreachable(f"{method}: connection refused (lotus.test:1234)")
        if self.mode == "unauthorized":
            raise NodeUnauthorized(method, 401)
        if self.mode == "rpc_error":
            raise NodeRpcError(method, 1, "chain not ready")

    async def notify(
        self,
        info: ApiInfo,
        on_changes: Callable[[list[tuple[ChangeType, Head]]], None],
        *,
        timeout: float,
        idle_timeout: float | None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.answer("Filecoin.ChainNotify")
        send, receive = trio.open_memory_channel[list[tuple[ChangeType, Head]]](100)
        self._subscribers.append(send)
        task_status.started()
        on_changes([("current", self.head())])
        async for batch in receive:
            on_changes(batch)
        raise NodeUnreachable("ChainNotify: connection closed (1006)")


class FakeClient:
    """The part of `LotusClient` the source uses, answered by a `FakeNode`."""

    def __init__(self, node: FakeNode, info: ApiInfo, timeout: float, stats: RpcStats) -> None:
        self.node = node
        self.info = info
        self.timeout = timeout

    async def _call(self, method: str) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.node.answer(method)
        except trio.TooSlowError as exc:
            raise NodeTimeout(f"{method}: no answer within {self.timeout:g}s") from exc

    async def chain_head(self) -> Head:
        await self._call("Filecoin.ChainHead")
        return self.node.head()

    async def sync_state(self) -> list[ActiveSync]:
        await self._call("Filecoin.SyncState")
        return []

    async def network_params(self) -> NetworkParams:
        await self._call("Filecoin.StateGetNetworkParams")
        return NetworkParams("calibrationnet", 30.0, 1_667_326_380)

    async def chain_get_genesis(self) -> str:
        await self._call("Filecoin.ChainGetGenesis")
        return fake_cid("genesis")

    async def state_network_name(self) -> str:
        await self._call("Filecoin.StateNetworkName")
        return self.node.name

    async def aclose(self) -> None:
        pass


def source_for(node: FakeNode, **kwargs: Any) -> LotusHeadSource:
    options: dict[str, Any] = {
        "poll_period": 3.0,
        "timeout": 5.0,
        "subscribe": False,
        "resubscribe_delay": 1.0,
        "rand": lambda: 0.5,  # no jitter
        "client_factory": lambda info, timeout, stats: FakeClient(node, info, timeout, stats),
        "notify": node.notify,
    }
    options.update(kwargs)
    return LotusHeadSource([INFO], **options)


def record(source: LotusHeadSource, t0: float) -> list[tuple[float, str, str | None]]:
    """(time, state, error) at each change the source's listeners hear of."""
    seen: list[tuple[float, str, str | None]] = []

    def on_change() -> None:
        status = source.status
        seen.append((round(trio.current_time() - t0, 6), status.state.value, status.error))

    source.on_change(on_change)
    return seen


async def test_a_hung_node_is_unreachable_stall_after_into_the_next_poll(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    source = source_for(node)
    seen = record(source, node.t0)
    await nursery.start(source.run)
    await trio.sleep(10)
    node.mode = "hung"
    await trio.sleep(10)
    # polls at 0, 3, 6, 9, 12; the one at 12 hangs: unreachable at 13.5, before its 5 s
    # deadline (17), which then names the deadline
    assert node.called("Filecoin.ChainHead") == [0.0, 3.0, 6.0, 9.0, 12.0, 18.0]
    assert seen[-2:] == [
        (13.5, "unreachable", "unreachable: ChainHead: no answer within 1.5s"),
        (17.0, "unreachable", "unreachable: Filecoin.ChainHead: no answer within 5s"),
    ]
    # ok from the first poll's answer at 0 (the facts that came first said no head yet)
    assert [state for t, state, _ in seen if t < 13.5][-1] == "ok"
    node.mode = "ok"
    await trio.sleep(10)  # the call at 18 hangs to 23, the poll at 24 answers
    assert seen[-1] == (24.0, "ok", None)


async def test_a_lost_subscription_polls_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    source = source_for(node, poll_period=3600.0, subscribe=True)
    seen = record(source, node.t0)
    await nursery.start(source.run)
    await trio.sleep(5)
    assert source.status.mode == "subscribed"
    node.mode = "refused"
    node.drop_subscriptions()
    # 1.5 s, not 1: the resubscription due at 6.0 would race the test's own wake-up at 6.0
    # (trio runs tasks due at the same instant in random order)
    await trio.sleep(1.5)
    assert node.called("Filecoin.ChainHead") == [0.0, 5.0]  # not at 3600
    # the subscription's failures are counted (the fake client counts none of its own)
    notifies = len(node.called("Filecoin.ChainNotify"))
    assert notifies >= 2
    assert source.rpc_stats.errors[ErrorKind.UNREACHABLE] == notifies  # the loss + retries
    assert seen[-1] == (
        5.0,
        "unreachable",
        "unreachable: Filecoin.ChainHead: connection refused (lotus.test:1234)",
    )


async def test_network_name_once_per_connection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    source = source_for(node)
    await nursery.start(source.run)
    await trio.sleep(30)
    assert node.called("Filecoin.StateNetworkName") == [0.0]
    assert source.status.network_name == "calibrationnet"
    node.mode = "refused"
    await trio.sleep(10)  # polls at 33, 36, 39 fail
    node.mode = "ok"
    node.name = "mainnet"
    await trio.sleep(10)  # the poll at 42 answers: a new connection
    assert node.called("Filecoin.StateNetworkName") == [0.0, 42.0]
    assert source.status.network_name == "mainnet"


async def test_a_refused_token_is_said_from_the_start(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    node.mode = "unauthorized"
    source = source_for(node)
    t0 = trio.current_time()
    await nursery.start(source.run)
    assert trio.current_time() == t0  # the first attempts failed at once
    assert source.latest is None
    assert source.status.state is SourceState.UNAUTHORIZED
    assert source.status.error == (
        "unauthorized: check the token and its permission (FULLNODE_API_INFO, http 401)"
    )


async def test_a_chain_head_error_is_no_head(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    node.mode = "rpc_error"
    source = source_for(node)
    await nursery.start(source.run)
    assert (source.status.state, source.status.error) == (
        SourceState.NO_HEAD,
        "no head: Filecoin.ChainHead: rpc error 1: chain not ready",
    )


async def test_beats_say_a_hung_lotus_within_one_beat_period(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    node = FakeNode()
    source = source_for(node, subscribe=True)
    await nursery.start(source.run)
    connector = FakeConnector()
    loop = loop_for(connector, latest=lambda: source.latest, status=lambda: source.status)
    source.on_change(loop.wake)
    await nursery.start(loop.run)
    await trio.sleep(4.5)
    node.advance()  # through the subscription: an extra beat at once
    await trio.sleep(5.5)
    node.mode = "hung"  # at 10; the poll at 12 hangs
    await trio.sleep(5.5)
    writes = connector.streams[0].writes
    beats = [b for b in BeatDecoder().feed(b"".join(d for _, d in writes)) if isinstance(b, Beat)]
    shown = list(
        zip(
            rel([t for t, _ in writes], connector.t0),
            [(b.height, b.source_state) for b in beats],
            strict=True,
        )
    )
    ok, down = SourceState.OK, SourceState.UNREACHABLE
    assert shown == [
        (0.0, (100, ok)),
        (3.0, (100, ok)),
        (4.5, (101, ok)),  # the head change, at once
        (6.0, (101, ok)),
        (9.0, (101, ok)),
        (12.0, (101, ok)),
        (13.5, (101, down)),  # the hang, 1.5 s into the poll: before the next tick
        (15.0, (101, down)),
    ]
    assert beats[6].source_error == "unreachable: ChainHead: no answer within 1.5s"
    assert beats[2].head_seen_at is not None
