"""`heartbeat.net.p2p_memory`: py-libp2p's per-connection memory, cut from outside.

Each cut must refuse any source but the one it was written for (and then change nothing),
must switch back to py-libp2p's code, and on real hosts over loopback must keep serving:
beats decoded by the aggregator through a one-task Yamux session with no accept loop and
per-message Noise ciphers; an inbound connection's listener task and its slot in the
swarm's inbound limiter released when it closes (py-libp2p 0.8.1 keeps both until the host
stops: after `max_connections` connections ever accepted it refuses every new one).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from aggregator.config import build_config
from aggregator.variants import MEMORY_CUTS, BenchVariants, parse_memory_cuts
from heartbeat.errors import ConfigError
from heartbeat.net import compat, p2p
from heartbeat.net.compat import inbound_limiter, noise_memory, yamux_session
from heartbeat.protocol.wire import PROTOCOL_ID, Beat, encode_cbor
from heartbeat.tools.loadgen.light import light_connection
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(60)]

PROTOCOL = "fil/heartbeat-test-memory/1.0.0"
HEAD = "{bafy2bzaceheadaaaaaaaaaaaaaaa}"


CUTS = compat.MEMORY_CUTS
_FIX = {
    "yamux": yamux_session,
    "accept": compat.accept_loop,
    "noise": noise_memory,
    "inbound": inbound_limiter,
}


def install_memory_cuts(cuts: Any = CUTS) -> dict[str, bool]:
    """The compat gate's install with these memory cuts: {cut: installed}."""
    installed = compat.install_all(compat.CompatOptions(memory_cuts=tuple(cuts)))
    return {c: installed[_FIX[c].NAME] for c in CUTS}


def installed_cuts() -> tuple[str, ...]:
    return tuple(c for c in CUTS if _FIX[c].installed())


@pytest.fixture
def restore_cuts() -> Iterator[None]:
    """Leave the process as the test found it (the fixes are process-wide)."""
    before = compat.installed_fixes()
    yield
    for fix in reversed(compat.FIXES):
        if not before[fix.NAME]:
            fix.uninstall()
    for fix in compat.FIXES:
        if before[fix.NAME]:
            fix.install()
    assert compat.installed_fixes() == before


def test_variants_name_the_same_cuts() -> None:
    assert MEMORY_CUTS == CUTS
    assert BenchVariants().memory_cuts == MEMORY_CUTS
    assert parse_memory_cuts("none") == ()
    assert parse_memory_cuts("all") == MEMORY_CUTS
    assert parse_memory_cuts("inbound, yamux") == ("yamux", "inbound")
    with pytest.raises(ValueError, match="stacks"):
        parse_memory_cuts("yamux,stacks")


def test_cli_flag() -> None:
    from aggregator.cli_parser import build_parser as _parser

    def variants(*argv: str) -> BenchVariants:
        return BenchVariants.from_args(_parser().parse_args(["run", *argv]))

    cut = variants("--memory-cuts", "noise,inbound")
    assert cut.memory_cuts == ("noise", "inbound")
    assert cut.argv() == ["--memory-cuts", "noise,inbound"]
    assert variants("--memory-cuts", "none").argv() == ["--memory-cuts", "none"]
    assert variants().argv() == []
    # worker 0 hands its variants to its workers, whose parser takes them back
    from aggregator.config import build_config
    from aggregator.workers import worker_argv

    argv = worker_argv(1, "/tmp/link", build_config({}), cut)
    assert argv[-2:] == ["--memory-cuts", "noise,inbound"]
    worker_args = _parser().parse_args(argv[argv.index("worker") :])
    assert BenchVariants.from_args(worker_args) == cut
    with pytest.raises(ConfigError, match="--memory-cuts"):
        variants("--memory-cuts", "stacks")


@pytest.mark.usefixtures("restore_cuts")
def test_install_and_switch_back() -> None:
    from libp2p.network.connection.swarm_connection import SwarmConn
    from libp2p.network.swarm import Swarm
    from noise.backends.default import noise_backend
    from noise.noise_protocol import NoiseProtocol

    from heartbeat.net.compat.yamux_limits import HeartbeatYamux as Yamux  # the seam

    install_memory_cuts(())
    stock = (
        Yamux.start,
        SwarmConn.start,
        Swarm._do_handle_inbound_connection,
        NoiseProtocol.handshake_done,
        noise_backend.ciphers["ChaChaPoly"],
    )
    assert install_memory_cuts() == dict.fromkeys(CUTS, True)
    cut = (
        Yamux.start,
        SwarmConn.start,
        Swarm._do_handle_inbound_connection,
        NoiseProtocol.handshake_done,
        noise_backend.ciphers["ChaChaPoly"],
    )
    assert all(a is not b for a, b in zip(stock, cut, strict=True))
    assert install_memory_cuts() == dict.fromkeys(CUTS, True)  # idempotent
    assert install_memory_cuts(()) == dict.fromkeys(CUTS, False)
    back = (
        Yamux.start,
        SwarmConn.start,
        Swarm._do_handle_inbound_connection,
        NoiseProtocol.handshake_done,
        noise_backend.ciphers["ChaChaPoly"],
    )
    assert all(a is b for a, b in zip(stock, back, strict=True))
    # accept needs yamux: refused alone
    with pytest.raises(ValueError, match="needs the yamux cut"):
        install_memory_cuts(["accept"])
    with pytest.raises(ValueError, match="unknown"):
        install_memory_cuts(["stacks"])


def test_inbound_patch_applies_to_this_source_only() -> None:
    import inspect

    from libp2p.network.swarm import Swarm

    stock = inbound_limiter._original or Swarm.__dict__["_do_handle_inbound_connection"]
    source = inspect.getsource(stock)
    patched = inbound_limiter.patched_inbound_source(source)
    assert patched is not None and patched.count("_fil_hold_inbound(self, _fil_conn)") == 1
    changed = source.replace("await self.manager.wait_finished()", "await trio.sleep_forever()")
    assert inbound_limiter.patched_inbound_source(changed) is None


def test_per_message_cipher_matches_noise_cipher() -> None:
    from cryptography.exceptions import InvalidTag
    from noise.backends.default.ciphers import ChaCha20Cipher

    key = os.urandom(32)
    stock, lean = ChaCha20Cipher(), noise_memory._per_message_cipher_class(ChaCha20Cipher)()
    stock.initialize(key)
    lean.initialize(key)
    assert lean.cipher is None  # no AEAD object held between messages
    for n in (0, 1, 2**40):
        sealed = lean.encrypt(key, n, b"ad", b"beat")
        assert sealed == stock.encrypt(key, n, b"ad", b"beat")
        assert lean.decrypt(key, n, b"ad", sealed) == b"beat"
        assert stock.decrypt(key, n, b"ad", sealed) == b"beat"
    with pytest.raises(InvalidTag):
        lean.decrypt(key, 0, b"ad", bytes([sealed[0] ^ 1]) + sealed[1:])
    assert lean.rekey(key) == stock.rekey(key)


# -- real hosts on loopback ---------------------------------------------------------------------


def _server_tasks(outside: trio.Nursery) -> Counter[str]:
    """Every task of this trio run by name, except those under `outside` (the clients)."""
    names: Counter[str] = Counter()

    def walk(task: trio.lowlevel.Task) -> None:
        for nursery in task.child_nurseries:
            if nursery is outside:
                continue
            for child in nursery.child_tasks:
                names[child.name] += 1
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def _tasks_per_connection(cuts: tuple[str, ...], clients: int = 4) -> float:
    """Tasks the server adds per held connection (one stream each)."""
    assert install_memory_cuts(cuts) == {c: c in cuts for c in CUTS}
    key = p2p.new_identity()
    frames = 0

    async def handler(stream: Any) -> None:
        nonlocal frames
        try:
            while await stream.read(1024):
                frames += 1
        except p2p.StreamClosed:
            await stream.close()

    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(64), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            idle = _server_tasks(nursery)

            async def client() -> None:
                async with light_connection(p2p.new_identity(), addr) as conn:
                    stream = await conn.open_stream(PROTOCOL)
                    await stream.write(b"x")
                    await done.wait()

            for _ in range(clients):
                nursery.start_soon(client)
            await eventually(lambda: frames == clients)
            await trio.testing.wait_all_tasks_blocked()
            held = _server_tasks(nursery)
            done.set()
    return sum((held - idle).values()) / clients


@pytest.mark.integration
@pytest.mark.usefixtures("restore_cuts")
async def test_three_tasks_per_connection_instead_of_seven() -> None:
    assert await _tasks_per_connection(()) == 7
    assert await _tasks_per_connection(("yamux",)) == 4
    assert await _tasks_per_connection(CUTS) == 3


@pytest.mark.integration
@pytest.mark.usefixtures("restore_cuts")
@pytest.mark.parametrize("cuts", [(), CUTS], ids=["py-libp2p", "cut"])
async def test_inbound_task_and_limiter_slot_released_on_close(cuts: tuple[str, ...]) -> None:
    """30 connections one after the other to a host that allows 8 at once."""
    install_memory_cuts(cuts)
    key = p2p.new_identity()

    async def handler(stream: Any) -> None:
        try:
            while await stream.read(1024):
                pass
        except p2p.StreamClosed:
            await stream.close()

    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(8), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        swarm: Any = srv.get_network()
        served = 0
        for _ in range(30):
            try:
                async with light_connection(p2p.new_identity(), addr, timeout=3) as conn:
                    stream = await conn.open_stream(PROTOCOL, timeout=3)
                    await stream.write(b"x")
                served += 1
            except p2p.StreamError:
                pass
            await eventually(lambda: p2p.connection_count(srv) == 0)
        with trio.move_on_after(1):
            await eventually(lambda: swarm._inbound_limiter.borrowed_tokens == 0)
        if cuts:
            assert served == 30
            assert swarm._inbound_limiter.borrowed_tokens == 0
        else:  # py-libp2p 0.8.1: every accepted connection keeps its task and its slot
            assert served == 8
            assert swarm._inbound_limiter.borrowed_tokens == 8


@pytest.mark.integration
@pytest.mark.usefixtures("restore_cuts")
async def test_aggregator_serves_beats_through_the_cut_connections(tmp_path: Path) -> None:
    from aggregator.app import run_aggregator

    config = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(tmp_path / "k"),
            "state_db": str(tmp_path / "db"),
            "gc_freeze": False,
        }
    )
    holder: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_aggregator(
                config,
                variants=BenchVariants(memory_cuts=CUTS),
                handle_signals=False,
                on_ready=holder.append,
                task_status=task_status,
            )
        )
        agg = holder[0]
        assert installed_cuts() == CUTS
        identities = [p2p.new_identity() for _ in range(3)]
        done = trio.Event()

        async def agent(i: int) -> None:
            async with light_connection(identities[i], agg.multiaddrs[0]) as conn:
                stream = await conn.open_stream(PROTOCOL_ID)
                for height in (100 + i, 101 + i):
                    beat = Beat(head=HEAD, height=height, nickname=f"n{i}", miner_address="")
                    await stream.write(encode_cbor(beat))
                await done.wait()
                await stream.close()

        async with trio.open_nursery() as agents:
            for i in range(3):
                agents.start_soon(agent, i)
            await eventually(lambda: agg.ingest.counters.beats_accepted == 6)
            for i, identity in enumerate(identities):
                node = agg.snapshot().node(p2p.peer_id_of(identity))
                assert node is not None and node.height == 101 + i
            # The aggregator's side of each connection: no AEAD object, no static key.
            served = [s for s in list(yamux_session._SESSIONS) if not s.is_initiator]
            assert len(served) == 3
            for session in served:
                noise = session.secured_conn.conn.noise_state.noise_protocol
                assert set(noise.keypairs.values()) == {None}
                assert noise.cipher_state_decrypt.cipher.cipher is None
                assert noise.cipher_state_encrypt.cipher.cipher is None
            done.set()
        await eventually(lambda: agg.ingest.counters.streams_open == 0)
        assert agg.ingest.counters.handler_errors == 0
        nursery.cancel_scope.cancel()


@pytest.mark.integration
@pytest.mark.usefixtures("restore_cuts")
async def test_a_handler_ended_by_the_peer_closing_does_not_stop_the_host() -> None:
    """py-libp2p's task manager ignores a connection shutdown escaping a task: so do the
    handler tasks of the `accept` cut (a StreamEOF out of a handler is not fatal)."""
    assert install_memory_cuts(CUTS)["accept"]
    key = p2p.new_identity()
    handled = 0

    async def handler(stream: Any) -> None:
        nonlocal handled
        handled += 1
        while True:
            await stream.read(1024)  # raises StreamEOF once the client closes

    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(8), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        swarm: Any = srv.get_network()
        for expected in (1, 2):
            async with light_connection(p2p.new_identity(), addr) as conn:
                stream = await conn.open_stream(PROTOCOL)
                await stream.write(b"x")

                def reached(e: int = expected) -> bool:
                    return handled >= e

                await eventually(reached, timeout=10)
                await stream.close()
            await eventually(lambda: p2p.connection_count(srv) == 0)
        assert not swarm.manager.is_cancelled


@pytest.mark.integration
@pytest.mark.usefixtures("restore_cuts")
async def test_shared_sweeper_reclaims_stale_streams() -> None:
    """py-libp2p's own stale-stream sweep, run for every session by one task."""
    assert install_memory_cuts(CUTS)["yamux"]
    key = p2p.new_identity()
    release = trio.Event()

    async def handler(stream: Any) -> None:
        await release.wait()  # never reads: the data stays buffered

    limits = p2p.HostLimits.server(8)
    async with (
        p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], limits, identify_peers=False) as srv,
        yamux_session.yamux_sweeper(),
    ):
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        async with light_connection(p2p.new_identity(), addr) as conn:
            stream = await conn.open_stream(PROTOCOL)
            await stream.write(b"unread")
            [session] = await eventually(
                lambda: [s for s in yamux_session._SESSIONS if not s.is_initiator and s.streams]
            )
            [yamux_stream] = session.streams.values()
            await eventually(lambda: session.stream_buffers.get(yamux_stream.stream_id))
            assert yamux_session.sweep_yamux_sessions() == 0  # open: kept
            yamux_stream.closed = True
            yamux_stream._closed_at = trio.current_time() - 3600  # closed long ago, unread
            assert yamux_session.sweep_yamux_sessions() == 1
            assert not session.streams and not session.stream_buffers
            release.set()
