"""`heartbeat.net.compat`: one version gate, every fix uninstallable, the Yamux limits."""

from __future__ import annotations

import importlib.metadata
import logging
import struct
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from heartbeat.net import compat, p2p
from heartbeat.net.compat import _recompile, accept_loop, net_stream_read, reconcile
from heartbeat.net.errors import CompatError
from heartbeat.net.refusals import REFUSALS, RefusalReason
from heartbeat.tools.loadgen.light import light_connection
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(60)]

PROTOCOL = "fil/heartbeat-test-compat/1.0.0"


def _stock_state() -> dict[str, Any]:
    """Every attribute a fix replaces, as it is now."""
    from libp2p.network.connection.swarm_connection import SwarmConn
    from libp2p.network.stream.net_stream import NetStream
    from libp2p.network.swarm import Swarm
    from libp2p.stream_muxer import muxer_multistream
    from libp2p.stream_muxer.yamux.yamux import YamuxStream
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask
    from noise.backends.default import noise_backend
    from noise.noise_protocol import NoiseProtocol

    from heartbeat.net.compat.log_fold import LOGGERS
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    return {
        "find_parent_task": TrioManager.__dict__["_find_parent_task"],
        "trio_task": FunctionTask.__dict__["trio_task"],
        "add_conn": Swarm.__dict__["add_conn"],
        "inbound": Swarm.__dict__["_do_handle_inbound_connection"],
        "window_update": YamuxStream.__dict__["_auto_tune_and_send_window_update"],
        "net_stream_read": NetStream.__dict__["read"],
        "muxer": muxer_multistream.__dict__["Yamux"],
        "yamux_start": HeartbeatYamux.start,
        "read_frames": HeartbeatYamux.__dict__["_fil_read_frames"],
        "swarm_conn_start": SwarmConn.__dict__["start"],
        "cipher": noise_backend.ciphers["ChaChaPoly"],
        "handshake_done": NoiseProtocol.__dict__["handshake_done"],
        "filters": [list(logging.getLogger(n).filters) for n in LOGGERS],
        "swarm_globals": {k for k in vars(sys.modules[Swarm.__module__]) if k.startswith("_fil")},
    }


#: Taken at collection, before any test installs a fix: py-libp2p's own state.
STOCK = _stock_state()


@pytest.fixture
def stock() -> Iterator[None]:
    """Every fix uninstalled (asserting the stock state is back), then as before."""
    before = compat.installed_fixes()
    compat.uninstall_all()
    assert _stock_state() == STOCK
    yield
    compat.uninstall_all()
    assert _stock_state() == STOCK
    for fix in compat.FIXES:
        if before[fix.NAME]:
            fix.install()


@pytest.mark.usefixtures("stock")
def test_install_all_then_uninstall_all_restores_stock() -> None:
    every = compat.CompatOptions()  # every fix (the buffered reader is in by default)
    installed = compat.install_all(every)
    assert installed == dict.fromkeys(installed, True)
    changed = ("add_conn", "inbound", "muxer", "cipher", "net_stream_read")
    assert all(_stock_state()[k] != STOCK[k] for k in changed)
    assert compat.install_all(every) == installed  # idempotent
    compat.uninstall_all()
    assert _stock_state() == STOCK
    before = compat.install_all(compat.CompatOptions(memory_cuts=(), throttle_reconcile=False))
    assert not before["yamux_session"] and not before["reconcile"] and before["task_lookup"]


@pytest.mark.usefixtures("stock")
def test_gate_refuses_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version  # the module compat calls through
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda d: "0.9.0" if d == "libp2p" else real(d),
    )
    with pytest.raises(CompatError, match=r"libp2p==0\.9\.0") as refused:
        compat.install_all()
    assert refused.value.what == "libp2p==0.9.0"
    assert _stock_state() == STOCK


@pytest.mark.usefixtures("stock")
def test_gate_refuses_another_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compat.FILES, "libp2p.network.swarm", "0" * 64)
    with pytest.raises(CompatError, match=r"libp2p/network/swarm\.py"):
        compat.install_all()
    assert _stock_state() == STOCK


@pytest.mark.usefixtures("stock")
def test_allow_unpatched_runs_stock_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    compat.install_all()
    monkeypatch.setitem(compat.FILES, "noise.state", "0" * 64)
    with caplog.at_level(logging.WARNING, logger="heartbeat.net.compat"):
        installed = compat.install_all(allow_unpatched=True)
    assert not any(installed.values())
    assert _stock_state() == STOCK
    [record] = [r for r in caplog.records if r.name == "heartbeat.net.compat"]
    assert "refuses every new connection after max_connections" in record.getMessage()


@pytest.mark.usefixtures("stock")
def test_agent_cli_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from heartbeat.agent import cli

    monkeypatch.setitem(compat.FILES, "libp2p.network.swarm", "0" * 64)
    monkeypatch.setattr(cli, "setup_logging", lambda *a: None)
    ran: list[Any] = []
    monkeypatch.setattr(trio, "run", lambda *a, **k: ran.append(a))  # the cli's trio
    argv = [
        "run",
        "--target",
        "/ip4/127.0.0.1/tcp/9081/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
    ]
    argv += ["--head-source", "static", "--identity-file", str(tmp_path / "k")]
    monkeypatch.delenv("FIL_HEARTBEAT_ALLOW_UNPATCHED_LIBP2P", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "swarm.py" in err and "--allow-unpatched-libp2p" in err
    assert ran == []
    assert cli.main([*argv, "--allow-unpatched-libp2p"]) == 0
    assert len(ran) == 1 and _stock_state() == STOCK


@pytest.mark.usefixtures("stock")
def test_aggregator_cli_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import heartbeat.common.logs
    from aggregator.__main__ import main

    monkeypatch.setitem(compat.FILES, "libp2p.network.swarm", "0" * 64)
    monkeypatch.setattr(heartbeat.common.logs, "setup_logging", lambda *a: None)
    argv = ["run", "--identity-file", str(tmp_path / "k"), "--listen", "/ip4/127.0.0.1/tcp/0"]
    argv += ["--http-listen", "127.0.0.1:0", "--state-db", str(tmp_path / "db")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "swarm.py" in err and "--allow-unpatched-libp2p" in err


def test_recompiled_code_keeps_the_file_and_its_lines(tmp_path: Path) -> None:
    import importlib.util
    import traceback

    source = textwrap.dedent(
        """\
        class Thing:
            def method(self, x):
                y = x + 1
                if y > 2:
                    raise ValueError("original")
                return y
        """
    )
    path = tmp_path / "thing_module.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("thing_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["thing_module"] = module
    try:
        spec.loader.exec_module(module)
        new = _recompile.recompiled_method(
            module.Thing, "method", lambda s: s.replace('"original"', '"patched"')
        )
        module.Thing.method = new
        with pytest.raises(ValueError, match="patched") as raised:
            module.Thing().method(5)
        frame = traceback.extract_tb(raised.tb)[-1]
        assert (frame.filename, frame.lineno) == (str(path), 5)
        with pytest.raises(CompatError, match=r"thing_module\.Thing\.method"):
            _recompile.recompiled_method(module.Thing, "method", lambda s: None)
    finally:
        del sys.modules["thing_module"]


@pytest.mark.usefixtures("stock")
def test_recompiled_library_methods_keep_file_and_lines() -> None:
    import dis

    from libp2p.network.stream.net_stream import NetStream
    from libp2p.network.swarm import Swarm
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    owners = [
        (NetStream, "read"),
        (Swarm, "add_conn"),
        (Swarm, "_do_handle_inbound_connection"),
        (YamuxStream, "_auto_tune_and_send_window_update"),
    ]
    stock = {name: cls.__dict__[name].__code__ for cls, name in owners}
    compat.install_all()
    for cls, name in owners:
        old, new = stock[name], cls.__dict__[name].__code__
        assert new is not old
        assert (new.co_filename, new.co_firstlineno) == (old.co_filename, old.co_firstlineno)
        last = max(line for _, line in dis.findlinestarts(old) if line is not None)
        lines = {line for _, line in dis.findlinestarts(new) if line is not None}
        assert max(lines) <= last  # same lines: no edit shifted the code below it


def test_accept_drain_returns_queued_streams_and_the_end() -> None:
    send, receive = trio.open_memory_channel[Any](10)
    send.send_nowait("a")
    send.send_nowait("b")
    assert accept_loop._drain(receive) == (["a", "b"], False)
    send.send_nowait("c")
    send.close()
    assert accept_loop._drain(receive) == (["c"], True)
    assert accept_loop._drain(accept_loop._ENDED) == ([], True)


def test_net_stream_read_patch_keeps_line_count_and_refuses_other_sources() -> None:
    import inspect

    from libp2p.network.stream.net_stream import NetStream

    source = textwrap.dedent(inspect.getsource(net_stream_read.original_read or NetStream.read))
    patched = net_stream_read.patched_read_source(source)
    assert patched is not None and patched.count("\n") == source.count("\n")
    assert "async with self._state_lock:\n            pass" in patched
    assert patched.count("self._state_lock") == source.count("self._state_lock") + 1
    assert "libp2p.network.stream.net_stream" in compat.FILES  # the gate pins its file
    assert net_stream_read in compat.CompatOptions().wanted()
    assert net_stream_read.patched_read_source(source.replace("RESET", "RESET ")) is None


def test_reconcile_guard_keeps_line_count() -> None:
    import inspect

    from libp2p.network.swarm import Swarm

    source = inspect.getsource(reconcile.original_add_conn or Swarm.add_conn)
    patched = reconcile.patched_add_conn_source(source)
    assert patched is not None and patched.count("\n") == textwrap.dedent(source).count("\n")


# -- the Yamux limits, on real libp2p over loopback -------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("stock")
async def test_stream_cap_resets_the_excess_and_others_still_beat() -> None:
    compat.install_all()
    before = REFUSALS[RefusalReason.YAMUX_STREAM_CAP]
    received: list[bytes] = []
    key = p2p.new_identity()

    async def handler(stream: Any) -> None:
        try:
            received.append(await stream.read(64))
            await stream.close()
        except p2p.StreamClosed:
            pass

    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(64), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        async with light_connection(p2p.new_identity(), addr) as attacker:
            raw = [await attacker._muxed.open_stream() for _ in range(200)]
            await eventually(lambda: REFUSALS[RefusalReason.YAMUX_STREAM_CAP] - before >= 200 - 8)
            await eventually(lambda: sum(s.reset_received for s in raw) >= 200 - 8)
            async with light_connection(p2p.new_identity(), addr) as healthy:
                stream = await healthy.open_stream(PROTOCOL)
                await stream.write(b"beat")
                await eventually(lambda: b"beat" in received)
    assert REFUSALS[RefusalReason.YAMUX_STREAM_CAP] - before == 200 - 8


@pytest.mark.integration
@pytest.mark.usefixtures("stock")
async def test_ping_flood_closes_the_connection() -> None:
    from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_PING, YAMUX_HEADER_FORMAT

    compat.install_all()
    flood = REFUSALS[RefusalReason.YAMUX_PING_FLOOD]
    key = p2p.new_identity()
    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(64), identify_peers=False
    ) as srv:
        addr = f"{p2p.listen_multiaddrs(srv)[0]}/p2p/{p2p.peer_id_of(key)}"
        async with light_connection(p2p.new_identity(), addr) as attacker:
            await eventually(lambda: p2p.connection_count(srv) == 1)
            with trio.move_on_after(10):
                for i in range(1000):
                    ping = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, i)
                    try:
                        await attacker._muxed._write_frame(ping)
                    except p2p.LIBP2P_ERRORS:  # the server closed on us: the point
                        break
            await eventually(lambda: REFUSALS[RefusalReason.YAMUX_PING_FLOOD] == flood + 1)
            await eventually(lambda: attacker.is_closed)
            await eventually(lambda: p2p.connection_count(srv) == 0)
    assert REFUSALS[RefusalReason.YAMUX_PING_FLOOD] == flood + 1


def test_libp2p_error_lines_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    from heartbeat.net.compat import log_fold

    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # log_fold's time module
    fold = log_fold.FoldFilter(burst=3, period=10.0)

    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("libp2p.x", level, __file__, 1, "err", None, None)

    passed = [fold.filter(record(logging.ERROR)) for _ in range(5)]
    assert passed == [True, True, True, False, False]
    assert fold.filter(record(logging.DEBUG)) is True  # below WARNING: untouched
    now[0] += 10.0
    assert fold.filter(record(logging.ERROR)) is True and fold.dropped == 0


def test_refusal_counter_by_reason() -> None:
    from heartbeat.net.refusals import RefusalCounter

    counter = RefusalCounter()
    counter.add(RefusalReason.YAMUX_STREAM_CAP)
    counter.add("handshake_shed", 2)  # another part's reason
    assert counter[RefusalReason.YAMUX_STREAM_CAP] == 1
    assert list(counter.items()) == [("handshake_shed", 2), ("yamux_stream_cap", 1)]


def test_malloc_trim_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    from heartbeat.net.compat import malloc_trim

    calls: list[int] = []
    now = [1000.0]

    def fake_trim() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(malloc_trim, "trim", fake_trim)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # malloc_trim's time module
    monkeypatch.setattr(malloc_trim, "_last", -malloc_trim.MIN_INTERVAL)
    malloc_trim.soon()
    malloc_trim.soon()
    now[0] += malloc_trim.MIN_INTERVAL
    malloc_trim.soon()
    assert len(calls) == 2
