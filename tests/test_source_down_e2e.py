"""Agent health end to end: a real aggregator over libp2p on loopback, beats written with the
project's encoder, read back over real HTTP (/api/v1/nodes, /metrics, /api/v1/propagation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.fleet import NodeState
from heartbeat.protocol.beat import SourceState
from heartbeat.protocol.wire import Beat, encode_cbor
from tests.helpers import eventually, metric_value
from tests.legacy_sender import scripted_sender
from tests.test_aggregator_e2e import GENESIS, HEAD_A, make_config, running, state_of

pytestmark = pytest.mark.integration

MAINNET_GENESIS_TS = 1598306400


def health_beat(
    nickname: str,
    height: int,
    state: SourceState,
    error: str | None = None,
    delay: float | None = None,
) -> bytes:
    ok = state is SourceState.OK
    ts = MAINNET_GENESIS_TS + height * 30
    return encode_cbor(
        Beat(
            head=HEAD_A if ok else "{}",
            height=height if ok else 0,
            nickname=nickname,
            miner_address="f01234",
            genesis_cid=GENESIS,
            head_timestamp=ts if ok else None,
            source_state=state,
            source_error=error,
            head_seen_at=int((ts + delay) * 1000) if ok and delay is not None else None,
            network_name="mainnet",
        )
    )


async def nodes(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    reply = await client.get(url + "/api/v1/nodes")
    assert reply.status_code == 200
    return {n["nickname"]: n for n in reply.json()}


async def test_unauthorized_source_shows_source_down_then_recovers(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as agg, httpx.AsyncClient(timeout=10) as client:
        url = agg.http_url
        addr = agg.multiaddrs[0]
        height = int((time.time() - MAINNET_GENESIS_TS) // 30)
        async with scripted_sender(addr) as good, scripted_sender(addr) as bad:
            await good.write(health_beat("good", height, SourceState.OK, delay=1.5))
            await bad.write(
                health_beat("bad", 0, SourceState.UNAUTHORIZED, "401 Unauthorized: bad token")
            )
            await eventually(lambda: state_of(agg, bad.peer_id) is NodeState.SOURCE_DOWN)

            by_nick = await nodes(client, url)
            assert by_nick["bad"]["state"] == "source_down"
            assert by_nick["bad"]["source_state"] == "unauthorized"
            assert by_nick["bad"]["source_error"] == "401 Unauthorized: bad token"
            assert by_nick["bad"]["up"] is True and by_nick["bad"]["lag_epochs"] is None
            assert by_nick["good"]["state"] == "in_consensus"
            assert by_nick["good"]["head_delay_p50"] == pytest.approx(1.5)
            fleet = (await client.get(url + "/api/v1/fleet")).json()
            (net,) = fleet["networks"]
            assert (net["network"], net["height"]) == ("mainnet", height)
            assert (net["in_consensus"], net["in_dispute"]) == (1, 0)
            assert net["counts"]["source_down"] == 1

            text = (await client.get(url + "/metrics")).text
            labels = {
                "peer_id": bad.peer_id,
                "nickname": "bad",
                "miner": "f01234",
                "network": "mainnet",
            }
            assert (
                metric_value(
                    text, "fil_heartbeat_node_source_state", **labels, state="unauthorized"
                )
                == 1
            )
            assert metric_value(text, "fil_heartbeat_node_source_state", **labels, state="ok") == 0
            assert (
                metric_value(text, "fil_heartbeat_node_state", **labels, state="source_down") == 1
            )

            # Lotus takes the token again: the next beat is ok, the node back in consensus
            await bad.write(health_beat("bad", height, SourceState.OK, delay=4.0))
            await eventually(lambda: state_of(agg, bad.peer_id) is NodeState.IN_CONSENSUS)
            by_nick = await nodes(client, url)
            assert by_nick["bad"]["state"] == "in_consensus"
            assert (by_nick["bad"]["source_state"], by_nick["bad"]["source_error"]) == ("ok", None)
            assert by_nick["bad"]["lag_epochs"] == 0

            reply = await client.get(url + "/api/v1/propagation", params={"network": "mainnet"})
            assert reply.status_code == 200
            body = reply.json()
            assert body["network"] == GENESIS and body["name"] == "mainnet"
            (tipset,) = body["tipsets"]
            assert tipset["height"] == height and tipset["head"] == [HEAD_A.strip("{}")]
            assert [(s["nickname"], s["delay"]) for s in tipset["seen"]] == [
                ("good", pytest.approx(1.5)),
                ("bad", pytest.approx(4.0)),
            ]
            bad_query = await client.get(url + "/api/v1/propagation?epochs=100")
            assert bad_query.status_code == 400
            await good.finish()
            await bad.finish()


async def test_real_agent_whose_lotus_refuses_the_token_then_stops_answering(
    tmp_path: Path,
) -> None:
    """The whole chain: FakeLotus -> the real agent (run_agent, Lotus head source) -> libp2p
    -> the aggregator -> /api/v1/nodes. A 401 from Lotus makes the node source_down with the
    agent's error text; Lotus answering again brings it back; Lotus gone makes it source_down
    again at the latest with the second beat after the agent noticed."""
    from heartbeat.agent.cli import run_agent
    from heartbeat.agent.config import build_config
    from heartbeat.agent.loop import Agent
    from tests.fakelotus import FakeLotus

    stop = trio.Event()
    async with (
        running(make_config(tmp_path)) as agg,
        httpx.AsyncClient(timeout=10) as client,
        trio.open_nursery() as nursery,
    ):
        fake = FakeLotus(token="secret", height=300)
        await fake.start(nursery)
        env = {"FULLNODE_API_INFO": f"secret:/ip4/127.0.0.1/tcp/{fake.port}/http"}
        flags = {
            "targets": [agg.multiaddrs[0]],
            "nickname": "lotus-sp",
            "beat_period": "300ms",
            "reconnect_period": "1s",
        }
        config = build_config(flags, env, default_identity_file=tmp_path / "agent.key")

        async def start_agent(*, task_status: trio.TaskStatus[Agent]) -> None:
            await run_agent(config, shutdown=stop.wait, task_status=task_status)

        agent: Agent = await nursery.start(start_agent)
        source = agent.head_source
        assert source is not None

        async def node() -> dict[str, Any]:
            return (await nodes(client, agg.http_url)).get("lotus-sp", {})

        async def state_is(state: str) -> bool:
            return (await node()).get("state") == state

        await eventually(lambda: state_is("in_consensus"), timeout=15)
        healthy = await node()
        assert (healthy["source_state"], healthy["height"]) == ("ok", 300)
        assert healthy["network"] == "calibrationnet"  # StateNetworkName, not the genesis CID

        fake.refuse_auth(401)
        await eventually(lambda: state_is("source_down"), timeout=15)
        refused = await node()
        assert refused["source_state"] == "unauthorized"
        assert refused["source_error"] and "401" in refused["source_error"]
        assert refused["up"] is True and refused["lag_epochs"] is None

        fake.refuse_auth(None)
        await eventually(lambda: state_is("in_consensus"), timeout=15)
        assert (await node())["source_error"] is None

        await fake.go_unreachable()
        with trio.fail_after(15):
            while source.status.state is SourceState.OK:
                await trio.sleep(0.05)
        view = agg.snapshot().node(healthy["peer_id"])
        assert view is not None
        noticed_at = view.beats_received
        await eventually(
            lambda: (
                (agg.snapshot().node(healthy["peer_id"]) or view).beats_received >= noticed_at + 2
            ),
            timeout=15,
        )
        gone = await node()
        assert (gone["state"], gone["source_state"]) == ("source_down", "unreachable")
        stop.set()
        nursery.cancel_scope.cancel()
