"""Agent health end to end: a real aggregator over libp2p on loopback, beats written with the
project's encoder, read back over real HTTP (/api/v1/nodes, /metrics, /api/v1/propagation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

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
