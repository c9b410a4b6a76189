"""The inbound handshake gate: bounded handshakes at once, a bounded wait, the excess shed.

Real hosts on loopback. A silent TCP client (it connects and never starts Noise) holds the
only handshake slot; a real dialer then waits for the slot, is closed unanswered after the
queue wait (fast, long before its own deadline) and counted as shed; once the slot is free a
dialer gets through.
"""

from __future__ import annotations

import pytest
import trio

from heartbeat.net import p2p
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(60)]


async def test_excess_handshakes_are_shed_fast_and_the_next_one_gets_through() -> None:
    shed_calls: list[int] = []
    key = p2p.new_identity()
    limits = p2p.HostLimits.server(16, max_pending_inbound=1, handshake_queue_wait=0.5)
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.gate_inbound_upgrades(server, 99, 99.0, on_shed=lambda: shed_calls.append(1))
        assert gate is p2p.handshake_gate(server)  # the one build_host installed: kept
        assert (gate.concurrent, gate.max_wait) == (1, 0.5)
        [listen] = p2p.listen_multiaddrs(server)
        addr = f"{listen}/p2p/{p2p.peer_id_of(key)}"
        port = int(listen.split("/")[4])
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        # The silent client's handshake holds the slot.
        await eventually(lambda: gate.in_progress == 1, timeout=5)
        started = trio.current_time()
        with pytest.raises(p2p.StreamError):
            async with p2p.light_connection(p2p.new_identity(), addr, timeout=10):
                pass
        waited = trio.current_time() - started
        assert 0.4 <= waited < 3.0, waited  # shed after the queue wait, not at the deadline
        assert (gate.shed, len(shed_calls), gate.upgraded) == (1, 1, 0)

        await silent.aclose()  # its handshake fails at once: the slot is free
        async with p2p.light_connection(p2p.new_identity(), addr, timeout=10) as conn:
            assert conn.remote_peer_id == p2p.peer_id_of(key)
        assert gate.upgraded == 1 and gate.shed == 1
        assert gate.in_progress == 0 and gate.waiting == 0
