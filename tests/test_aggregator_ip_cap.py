"""The per-IP connection cap over real libp2p: distinct peer ids from one address."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from heartbeat.net import p2p
from heartbeat.protocol.wire import PROTOCOL_ID
from heartbeat.tools.loadgen.light import light_connection
from tests.test_aggregator_e2e import beat, make_config, running, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CAP = 2
EXTRA = 3


async def test_connections_beyond_the_per_ip_cap_are_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_connections_per_ip=CAP)
    async with running(config) as agg, AsyncExitStack() as stack:
        addr = agg.multiaddrs[0]
        assert addr.startswith("/ip4/127.0.0.1/")
        keys = [p2p.new_identity(seed=bytes([i + 1]) * 32) for i in range(CAP + EXTRA)]
        assert len({p2p.peer_id_of(k) for k in keys}) == CAP + EXTRA
        counters = agg.ingest.counters

        def counted() -> int:  # connections seen by the ingest, refused ones included
            refused = counters.peers_refused["too_many_connections_per_ip"]
            return refused + min(counters.connections, CAP)

        async def wait_counted(n: int) -> None:
            await wait_for(lambda: counted() >= n)

        conns = []
        for n, key in enumerate(keys, 1):  # one at a time: the first CAP are the ones kept
            conns.append(await stack.enter_async_context(light_connection(key, addr)))
            await wait_counted(n)
        kept, excess = conns[:CAP], conns[CAP:]
        with trio.fail_after(10):
            for conn in excess:
                await conn.wait_closed()
        assert counters.peers_refused["too_many_connections_per_ip"] == EXTRA
        await wait_for(lambda: counters.connections == CAP)
        # the connections within the cap still carry beats
        for n, conn in enumerate(kept):
            assert not conn.is_closed
            stream = await conn.open_stream(PROTOCOL_ID)
            await stream.write(beat(100, f"kept{n}"))
        await wait_for(lambda: counters.beats_accepted == CAP)
        async with httpx.AsyncClient() as client:
            body = (await client.get(agg.http_url + "/metrics", timeout=10)).text
        refused = 'fil_heartbeat_peers_refused_total{reason="too_many_connections_per_ip"}'
        assert f"{refused} {EXTRA}.0" in body.splitlines()
