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
from heartbeat.tools.loadgen.light import light_connection
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
            async with light_connection(p2p.new_identity(), addr, timeout=10):
                pass
        waited = trio.current_time() - started
        assert 0.4 <= waited < 3.0, waited  # shed after the queue wait, not at the deadline
        assert (gate.shed, len(shed_calls), gate.upgraded) == (1, 1, 0)

        await silent.aclose()  # its handshake fails at once: the slot is free
        async with light_connection(p2p.new_identity(), addr, timeout=10) as conn:
            assert conn.remote_peer_id == p2p.peer_id_of(key)
        assert gate.upgraded == 1 and gate.shed == 1
        assert gate.in_progress == 0 and gate.waiting == 0


def _server_addr(server: object, key: object) -> tuple[str, int]:
    [listen] = p2p.listen_multiaddrs(server)  # type: ignore[arg-type]
    return f"{listen}/p2p/{p2p.peer_id_of(key)}", int(listen.split("/")[4])  # type: ignore[arg-type]


async def _closed_by_server(stream: trio.SocketStream, within: float) -> bool:
    """True if the server closes `stream` (EOF or reset) within `within` seconds."""
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_an_idle_socket_flood_from_one_ip_does_not_starve_another() -> None:
    key = p2p.new_identity()
    limits = p2p.HostLimits.server(256, max_pending_inbound=8, handshake_queue_wait=5.0)
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.handshake_gate(server)
        assert gate is not None
        addr, port = _server_addr(server, key)
        idle: list[trio.SocketStream] = []
        try:
            for _ in range(40):  # five times the slots, from another "host"
                idle.append(
                    await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
                )
            await eventually(lambda: gate.in_progress + gate.waiting >= 40, timeout=5)
            for _ in range(5):
                started = trio.current_time()
                async with light_connection(p2p.new_identity(), addr, timeout=10) as conn:
                    assert conn.remote_peer_id == p2p.peer_id_of(key)
                # Well under the queue wait and the first-bytes deadline: the hog yielded.
                assert trio.current_time() - started < 1.5
            assert gate.refused.get("gate_shed_contended", 0) >= 5
        finally:
            for s in idle:
                await s.aclose()


async def test_a_silent_dialer_is_closed_after_the_first_bytes_deadline() -> None:
    key = p2p.new_identity()
    limits = p2p.HostLimits.server(16, max_pending_inbound=4, first_bytes_timeout=0.5)
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.handshake_gate(server)
        assert gate is not None
        _, port = _server_addr(server, key)
        started = trio.current_time()
        async with await trio.open_tcp_stream("127.0.0.1", port) as silent:
            assert await _closed_by_server(silent, within=5)
        assert 0.4 <= trio.current_time() - started < 3.0
        await eventually(lambda: gate.in_progress == 0, timeout=5)
        assert gate.refused == {"first_bytes_timeout": 1}


async def test_an_ip_over_the_refusal_cap_is_closed_at_accept() -> None:
    from heartbeat.net.refusals import REFUSALS

    key = p2p.new_identity()
    limits = p2p.HostLimits.server(
        16, max_pending_inbound=4, first_bytes_timeout=0.2, refusal_cap=2, refusal_window=60.0
    )
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.handshake_gate(server)
        assert gate is not None
        addr, port = _server_addr(server, key)
        before = REFUSALS["per_ip_refusal_cap"]
        for _ in range(3):  # three refusals: over the cap of 2
            async with await trio.open_tcp_stream(
                "127.0.0.1", port, local_address="127.0.0.2"
            ) as silent:
                assert await _closed_by_server(silent, within=5)
        await eventually(lambda: gate.refused.get("first_bytes_timeout") == 3, timeout=5)
        started = trio.current_time()
        async with await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2") as s:
            assert await _closed_by_server(s, within=5)
        assert trio.current_time() - started < 0.15  # at accept, not after the deadline
        assert gate.refused["per_ip_refusal_cap"] == 1
        assert REFUSALS["per_ip_refusal_cap"] == before + 1
        assert gate.in_progress == 0
        # Another IP is unaffected.
        async with light_connection(p2p.new_identity(), addr, timeout=10) as conn:
            assert conn.remote_peer_id == p2p.peer_id_of(key)


async def test_a_plaintext_offer_is_refused_and_counted_as_security_negotiation() -> None:
    def line(text: bytes) -> bytes:  # a multistream message: varint length, text, newline
        return bytes([len(text) + 1]) + text + b"\n"

    key = p2p.new_identity()
    limits = p2p.HostLimits.server(16, max_pending_inbound=4)
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        gate = p2p.handshake_gate(server)
        assert gate is not None
        _, port = _server_addr(server, key)
        async with await trio.open_tcp_stream("127.0.0.1", port) as dialer:
            await dialer.send_all(line(b"/multistream/1.0.0") + line(b"/plaintext/2.0.0"))
            received = b""
            with trio.fail_after(5):
                while b"na\n" not in received:
                    received += await dialer.receive_some(4096)
        # The dialer gave up after the refusal: the negotiation failed, counted by reason.
        await eventually(lambda: gate.refused.get("security_negotiation") == 1, timeout=5)
        assert gate.in_progress == 0


def test_libp2p_upgrade_errors_are_folded_into_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from heartbeat.net.gate import Libp2pUpgradeLogFilter

    folded = Libp2pUpgradeLogFilter(period=60.0)

    def record(msg: str, level: int, created: float) -> logging.LogRecord:
        r = logging.LogRecord("libp2p.network.swarm", level, __file__, 1, msg, None, None)
        r.created = created
        return r

    with caplog.at_level(logging.WARNING, logger="heartbeat.net.gate"):
        kept = [
            folded.filter(record("fail to upgrade mux for peer x", logging.ERROR, t))
            for t in (0.0, 1.0, 2.0, 61.0)
        ]
        other = folded.filter(record("something else", logging.ERROR, 3.0))
        debug = folded.filter(record("upgrade debug", logging.DEBUG, 3.0))
    assert kept == [False] * 4 and other and debug  # folded; others pass through
    lines = [m for _, _, m in caplog.record_tuples if m.startswith("libp2p_upgrade_failed")]
    assert len(lines) == 2 and "suppressed=0" in lines[0] and "suppressed=2" in lines[1]
