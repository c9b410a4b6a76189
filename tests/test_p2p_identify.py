"""`identify_peers=False`: a host that never identifies its remote peers, but answers them.

py-libp2p 0.8.1 identifies every peer on every new connection (a stream, a negotiation, a
protobuf and peerstore records); the aggregator and the agent need none of it. Both cases
run the same real exchange on loopback: a full-host client (identify on) connects to the
server and opens a stream; whether the server learnt the client's protocols tells whether it
ran identify, and the client learning the server's tells that the server still answers.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol

from heartbeat.net import p2p
from tests.helpers import eventually

PROTOCOL = TProtocol("fil/heartbeat-test-identify/1.0.0")
IDENTIFY = "/ipfs/id/1.0.0"

pytestmark = [pytest.mark.timeout(60)]


def _protocols(host: Any, peer: Any) -> list[str]:
    try:
        return [str(p) for p in host.get_peerstore().get_protocols(peer)]
    except Exception:  # py-libp2p's PeerStoreError: the peer is not known yet
        return []


async def _exchange(identify_peers: bool) -> tuple[list[str], list[str]]:
    """(what the server knows of the client's protocols, what the client knows of the server's)."""

    async def handler(stream: Any) -> None:
        await stream.write(await stream.read(64))
        await stream.close()

    server_key, client_key = p2p.new_identity(), p2p.new_identity()
    async with p2p.running_host(
        server_key,
        ["/ip4/127.0.0.1/tcp/0"],
        p2p.HostLimits.server(16),
        identify_peers=identify_peers,
    ) as server:
        p2p.set_stream_handlers(server, [PROTOCOL], handler)
        [listen] = p2p.listen_multiaddrs(server)
        info = p2p.peer_info_from_multiaddr(f"{listen}/p2p/{p2p.peer_id_of(server_key)}")
        async with p2p.running_host(client_key) as client:
            with trio.fail_after(10):
                await client.connect(info)
                stream = await client.new_stream(info.peer_id, [PROTOCOL])
                await stream.write(b"ping")
                assert await stream.read(64) == b"ping"
            # The client's own identify of the server completes: the server answers.
            await eventually(lambda: IDENTIFY in _protocols(client, info.peer_id), timeout=10)
            client_id = client.get_id()
            if identify_peers:
                await eventually(lambda: IDENTIFY in _protocols(server, client_id), timeout=10)
            await trio.testing.wait_all_tasks_blocked()
            return _protocols(server, client_id), _protocols(client, info.peer_id)


async def test_default_host_identifies_its_peers() -> None:
    server_knows, client_knows = await _exchange(identify_peers=True)
    assert IDENTIFY in server_knows
    assert PROTOCOL in client_knows


async def test_host_without_identify_learns_nothing_but_still_answers() -> None:
    server_knows, client_knows = await _exchange(identify_peers=False)
    assert server_knows == []
    assert PROTOCOL in client_knows and IDENTIFY in client_knows
