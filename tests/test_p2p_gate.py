"""The inbound handshake gate: bounded handshakes at once, a bounded wait, the excess shed.

Real hosts on loopback. A silent TCP client (it connects and never starts Noise) holds the
only handshake slot; a real dialer then waits for the slot, is closed unanswered after the
queue wait (fast, long before its own deadline) and counted as shed; once the slot is free a
dialer gets through.
"""

from __future__ import annotations

import pytest
import trio

from heartbeat import p2p
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(60)]


async def test_excess_handshakes_are_shed_fast_and_the_next_one_gets_through() -> None:
    shed_calls: list[int] = []
    key = p2p.new_identity()
    limits = p2p.HostLimits.server(
        16, max_pending_inbound=1, handshake_queue_wait=0.5
    )
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


def _accept_queue(server: p2p.IHost) -> int:
    """Connections in the kernel's accept queue of the server's (one) listen socket."""
    import socket
    import struct

    [sock] = p2p.listen_sockets(server)
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])  # tcpi_unacked: the accept queue


@pytest.mark.parametrize("throttle", [True, False])
async def test_a_full_queue_leaves_new_connections_in_the_kernel_backlog(throttle: bool) -> None:
    key = p2p.new_identity()
    limits = p2p.HostLimits.server(
        16, max_pending_inbound=1, max_handshake_queue=1, throttle_accepts=throttle
    )
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.handshake_gate(server)
        assert gate is not None
        [listen] = p2p.listen_multiaddrs(server)
        port = int(listen.split("/")[4])

        def held() -> int:  # in a handshake, waiting for one, or in the kernel's queue
            return gate.in_progress + gate.waiting + _accept_queue(server)

        # Silent clients (TCP only, never a Noise byte): one handshake slot, one queue
        # place, the other three left in the kernel's accept queue.
        silent = []
        for k in range(1, 6):
            silent.append(await trio.open_tcp_stream("127.0.0.1", port))
            await eventually(lambda k=k: held() == k, timeout=5)
        if throttle:
            assert (gate.in_progress, gate.waiting) == (1, 1)
            assert _accept_queue(server) == 3 and gate.accept_pauses == 1
            await silent[0].aclose()  # its handshake fails: the queue moves, one is accepted
            await eventually(lambda: _accept_queue(server) == 2 and gate.waiting == 1, timeout=15)
            assert gate.in_progress == 1
            assert gate.accept_pauses == 2
        else:  # py-libp2p's way: all accepted at once, waiting in the process
            assert (gate.in_progress, gate.waiting) == (1, 4)
            assert _accept_queue(server) == 0 and gate.accept_pauses == 0
        for stream in silent:
            await stream.aclose()
        await eventually(lambda: held() == 0, timeout=15)
        # And a real dialer still gets through.
        addr = f"{listen}/p2p/{p2p.peer_id_of(key)}"
        async with p2p.light_connection(p2p.new_identity(), addr, timeout=10) as conn:
            assert conn.remote_peer_id == p2p.peer_id_of(key)
