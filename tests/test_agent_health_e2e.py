"""Agents say what is wrong, end to end: a real agent, a real aggregator, libp2p on loopback.

FakeLotus (real HTTP + WebSocket JSON-RPC) -> `run_agent` (built from the environment, as
in production) -> two targets: the real aggregator (`run_aggregator`) and the test
receiver, which records each beat's arrival time. Shown:

1. a wrong token: the beats carry SourceState unauthorized and the advice, with Head "{}"
   and Height 0; the aggregator lists the node at once (height 0, source down);
2. the token fixed: the head arrives in an extra beat, without waiting for the timer;
3. a head change: one extra beat, well within the beat period;
4. Lotus stops: the next beat says unreachable, with the cause, and the last head.

Timing is checked only as ordering and counts, and against the beat period; the figures
measured are printed (run with -s to see them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from aggregator.nodestate import NodeState, NodeView
from heartbeat.agent.cli import run_agent
from heartbeat.agent.config import build_config
from heartbeat.agent.loop import Agent
from heartbeat.net.p2p import load_or_create_identity, peer_id_of
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.tipset import format_head
from heartbeat.protocol.wire import Beat
from tests.fakelotus import FakeLotus
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.test_aggregator_e2e import make_config, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PERIOD = 2.0  # beat period: long enough to tell an extra beat from the timer's


async def next_beat(
    receiver: Receiver, after: int, predicate: Callable[[Beat], bool], timeout: float = 8.0
) -> tuple[float, Beat, int]:
    """The first beat at index >= `after` that satisfies `predicate`: (arrival, beat, index)."""
    seen = after
    with trio.fail_after(timeout):
        while True:
            await receiver.wait_for(seen + 1, timeout=timeout)
            for index in range(seen, len(receiver.beats)):
                at, beat = receiver.beats[index]
                if predicate(beat):
                    return at, beat, index
            seen = len(receiver.beats)


async def test_agent_health_reaches_the_aggregator(tmp_path: Path) -> None:
    stop = trio.Event()
    async with running(make_config(tmp_path)) as agg, trio.open_nursery() as nursery:
        fake = FakeLotus(token="right", height=300)
        await fake.start(nursery)
        receiver = Receiver()
        await receiver.start(nursery)
        key_file = tmp_path / "agent.key"
        peer = peer_id_of(load_or_create_identity(key_file))
        env = {"FULLNODE_API_INFO": f"wrong:/ip4/127.0.0.1/tcp/{fake.port}/http"}
        flags = {
            "targets": [agg.multiaddrs[0], receiver.addr],
            "nickname": "healthe2e",
            "beat_period": f"{PERIOD}s",
            "reconnect_period": "1s",
        }
        config = build_config(flags, env, default_identity_file=key_file)

        async def start_agent(*, task_status: trio.TaskStatus[Agent]) -> None:
            await run_agent(config, shutdown=stop.wait, task_status=task_status)

        t0 = trio.current_time()
        agent: Agent = await nursery.start(start_agent)
        to_receiver = next(loop for loop in agent.loops if loop.target.addr == receiver.addr)

        # 1. a wrong token: beats at once, saying so
        at, first, _ = await next_beat(receiver, 0, lambda b: True)
        assert (first.head, first.height) == ("{}", 0)
        assert first.source_state is SourceState.UNAUTHORIZED
        assert first.source_error == (
            "unauthorized: check the token and its permission (FULLNODE_API_INFO, http 401)"
        )
        print(f"\nfirst beat {at - t0:.3f}s after the agent started")
        assert at - t0 < PERIOD

        def node_view() -> NodeView | None:
            return agg.snapshot().node(peer)

        def node_says(field: str, value: object) -> bool:
            view = node_view()
            return view is not None and getattr(view, field) == value

        view = await eventually(node_view, timeout=PERIOD)
        assert view.height == 0
        assert view.source_state == "unauthorized"
        assert "check the token" in (view.source_error or "")
        assert view.state is NodeState.SOURCE_DOWN

        # 2. the token fixed: the head comes in an extra beat, not with the next tick
        extra_before = to_receiver.stats.extra_beats
        count = len(receiver.beats)
        fixed_at = trio.current_time()
        fake.token = "wrong"
        at, ok, _ = await next_beat(receiver, count, lambda b: b.height == 300)
        assert ok.source_state is SourceState.OK and ok.source_error is None
        assert ok.head == format_head(fake.cids_at(300))
        assert ok.head_seen_at is not None
        print(f"head after the token was fixed: {at - fixed_at:.3f}s")
        # StateNetworkName is asked on the new connection, and sent; a poll says syncing
        await next_beat(
            receiver, count, lambda b: b.network_name == "calibrationnet" and b.syncing is False
        )
        await eventually(lambda: node_says("height", 300))

        # 3. a head change: exactly one extra beat carries it, well before the next tick
        await eventually(lambda: fake.subscribers == 1)
        # extra beats are at most one a second: let the last one (the network name's) age;
        # then change the head just after a timer beat, a whole period before the next
        await trio.sleep(1.1)
        await receiver.wait_for(len(receiver.beats) + 1, timeout=PERIOD + 1)
        tick_at = receiver.beats[-1][0]
        extra_before = to_receiver.stats.extra_beats
        count = len(receiver.beats)
        changed_at = trio.current_time()
        fake.advance()
        at, new, index = await next_beat(receiver, count, lambda b: b.height == 301)
        delay = at - changed_at
        print(f"head change reached the receiver in {delay * 1000:.1f} ms")
        assert index == count  # the very next beat, before the timer's next one
        assert at < tick_at + PERIOD
        assert to_receiver.stats.extra_beats == extra_before + 1
        assert new.head_seen_at is not None and new.head_seen_at >= (ok.head_seen_at or 0)
        # no second extra beat for the same change (the next poll sees the same head)
        await trio.sleep(PERIOD / 2)
        assert to_receiver.stats.extra_beats == extra_before + 1

        # 4. Lotus stops: the next beat says unreachable, with the cause and the last head
        count = len(receiver.beats)
        stopped_at = trio.current_time()
        await fake.go_unreachable()
        at, down, index = await next_beat(receiver, count, lambda b: True)
        if down.source_state is SourceState.OK:  # one already on its way when it stopped
            assert at - stopped_at < 0.2
            at, down, index = await next_beat(receiver, index + 1, lambda b: True)
        assert down.source_state is SourceState.UNREACHABLE
        assert (down.source_error or "").startswith(
            "unreachable: Filecoin.ChainHead: connection refused (127.0.0.1:"
        )
        assert down.height == 301  # the last head is kept, and said to be stale
        print(f"unreachable reported {at - stopped_at:.3f}s after Lotus stopped")
        assert at - stopped_at < PERIOD
        await eventually(lambda: node_says("source_state", "unreachable"))
        assert node_says("state", NodeState.SOURCE_DOWN)

        stop.set()
        await receiver.wait_streams_ended(1)
        nursery.cancel_scope.cancel()
    assert receiver.decode_errors == [] and receiver.rejected == []
    assert agg.ingest.counters.beats_accepted >= 5
