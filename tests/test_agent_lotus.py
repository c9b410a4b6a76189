"""The agent end to end with the Lotus head source.

FakeLotus (real HTTP + WebSocket JSON-RPC) → FULLNODE_API_INFO / MINER_API_INFO in the
environment mapping → `build_config` → `run_agent` → a real libp2p receiver. Real
clock and sockets; every wait is a bounded condition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from heartbeat.agent.cli import run_agent
from heartbeat.agent.config import build_config
from heartbeat.agent.loop import Agent
from heartbeat.protocol.tipset import format_head
from heartbeat.protocol.wire import Beat
from tests.fakelotus import FakeLotus
from tests.receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TOKEN = "secret-token"


def api_info(fake: FakeLotus) -> str:
    """The ecosystem's `TOKEN:MULTIADDR` form, as `lotus auth api-info` prints it."""
    return f"{TOKEN}:/ip4/127.0.0.1/tcp/{fake.port}/http"


def expected_head(fake: FakeLotus) -> dict[str, object]:
    """What a beat must say about the fake node's current head."""
    return {
        "head": format_head(fake.cids_at(fake.height)),
        "height": fake.height,
        "head_timestamp": fake.genesis_timestamp + fake.height * fake.block_delay,
        "genesis_cid": fake.genesis_cid,
    }


def head_of(beat: Beat) -> dict[str, object]:
    return {
        "head": beat.head,
        "height": beat.height,
        "head_timestamp": beat.head_timestamp,
        "genesis_cid": beat.genesis_cid,
    }


async def wait_beat(
    receiver: Receiver, predicate: Callable[[Beat], bool], timeout: float = 8.0
) -> Beat:
    """The first beat from now on that satisfies `predicate`."""
    seen = len(receiver.beats)
    with trio.fail_after(timeout):
        while True:
            await receiver.wait_for(seen + 1, timeout=timeout)
            for _, beat in receiver.beats[seen:]:
                if predicate(beat):
                    return beat
            seen = len(receiver.beats)


async def test_lotus_head_source_end_to_end(tmp_path: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        fake = FakeLotus(token=TOKEN, height=200, miner_address="t01234")
        # the node is catching up: a sync targets a tipset far above its head
        fake.sync_state = {
            "ActiveSyncs": [
                {"Stage": 3, "Height": 195, "Base": fake.tipset(190), "Target": fake.tipset(260)},
            ]
        }
        await fake.start(nursery)
        receiver = Receiver()
        await receiver.start(nursery)
        env = {"FULLNODE_API_INFO": api_info(fake), "MINER_API_INFO": api_info(fake)}
        flags = {
            "targets": [receiver.addr],
            "nickname": "lotus-e2e",
            "beat_period": "200ms",
            "reconnect_period": "1s",
        }
        config = build_config(flags, env, default_identity_file=tmp_path / "agent.key")
        assert config.head_source == "lotus"  # chosen because FULLNODE_API_INFO is set

        async def start_agent(*, task_status: trio.TaskStatus[Agent]) -> None:
            await run_agent(config, shutdown=stop.wait, task_status=task_status)

        agent: Agent = await nursery.start(start_agent)

        # 1. beats say what the node says; ActorAddress comes from MINER_API_INFO
        first = await wait_beat(receiver, lambda b: b.miner_address == "t01234")
        assert head_of(first) == expected_head(fake)
        assert first.syncing is True
        assert first.nickname == "lotus-e2e"

        # 2. the node goes away: beats keep coming, with the last known head
        last = expected_head(fake)
        await fake.go_unreachable()
        source = agent.head_source
        assert source is not None
        with trio.fail_after(8):
            while source.status.reachable:  # found by the next failed poll
                await receiver.wait_for(len(receiver.beats) + 1)
        during = len(receiver.beats)
        await receiver.wait_for(during + 5)
        assert [head_of(b) for _, b in receiver.beats[during:]] == [last] * (
            len(receiver.beats) - during
        )

        # 3. it comes back with a reorg at the same height: the new head arrives
        await fake.come_back()
        fake.reorg()
        assert expected_head(fake)["head"] != last["head"]
        new = await wait_beat(receiver, lambda b: b.head != last["head"])
        assert head_of(new) == expected_head(fake)
        assert new.miner_address == "t01234"

        stop.set()
        await receiver.wait_streams_ended(1)
        await receiver.stop()
        nursery.cancel_scope.cancel()
    assert receiver.decode_errors == [] and receiver.rejected == []
