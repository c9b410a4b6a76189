"""`install_yamux_tuning`: a receiver of small frames no longer credits every read back.

py-libp2p 0.8.1 sends a WINDOW_UPDATE after every read (`RELEASE_ON_READ`): one frame
written per beat read. Real hosts on loopback: a light client writes 20 small frames, the
server reads them one by one, and the test counts the WINDOW_UPDATE frames the server's
streams send: one per read with release on read; with the tuning only the first read's
window growth (Yamux's auto-tuning), and the credit for the rest is kept until half the
window is consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from heartbeat.net import p2p
from heartbeat.net.compat import yamux_credit
from heartbeat.tools.loadgen.light import light_connection
from tests.helpers import eventually


def install_yamux_tuning(*, release_on_read: bool) -> bool:
    """The `yamux_credit` fix in (release_on_read=False) or out (py-libp2p's credit)."""
    if release_on_read:
        yamux_credit.uninstall()
    else:
        yamux_credit.install()
    return yamux_credit.installed() is not release_on_read


PROTOCOL = "fil/heartbeat-test-yamux/1.0.0"
FRAME = b"b" * 300
FRAMES = 20

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def restore_yamux() -> Iterator[None]:
    """Leave the process as the test found it (the tuning is process-wide)."""
    installed = yamux_credit.original_window_update is not None
    yield
    if installed:
        assert install_yamux_tuning(release_on_read=False)
    else:
        install_yamux_tuning(release_on_read=True)


async def _window_updates_for_reads(release_on_read: bool, monkeypatch: pytest.MonkeyPatch) -> int:
    """WINDOW_UPDATE frames sent while the server read FRAMES frames."""
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    assert install_yamux_tuning(release_on_read=release_on_read)
    received = 0
    all_read = trio.Event()
    updates = 0
    send_window_update = YamuxStream.send_window_update

    async def counted(self: Any, increment: int, skip_lock: bool = False) -> None:
        nonlocal updates
        updates += 1
        await send_window_update(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)

    async def handler(stream: Any) -> None:
        nonlocal received
        while received < len(FRAME) * FRAMES:
            received += len(await stream.read(len(FRAME)))
        all_read.set()
        await stream.read(1)  # until the client closes

    key = p2p.new_identity()
    async with p2p.running_host(
        key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(16), identify_peers=False
    ) as srv:
        p2p.set_stream_handlers(srv, [PROTOCOL], handler)
        [listen] = p2p.listen_multiaddrs(srv)
        addr = f"{listen}/p2p/{p2p.peer_id_of(key)}"
        async with light_connection(p2p.new_identity(), addr, timeout=10) as conn:
            stream = await conn.open_stream(PROTOCOL)
            for _ in range(FRAMES):
                await stream.write(FRAME)
            with trio.fail_after(10):
                await all_read.wait()
            if release_on_read:  # the last read's update is sent right after it
                await eventually(lambda: updates >= FRAMES, timeout=5)
            counted_updates = updates
            await stream.close()
    return counted_updates


async def test_the_tuning_keeps_the_credit_until_half_the_window(
    restore_yamux: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = await _window_updates_for_reads(False, monkeypatch)
    assert updates <= 1  # the first read's window growth at most, not one per read


async def test_release_on_read_credits_every_read_back(
    restore_yamux: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = await _window_updates_for_reads(True, monkeypatch)
    assert updates >= FRAMES


def test_the_patch_refuses_any_other_source() -> None:
    import inspect

    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    original = yamux_credit.original_window_update or YamuxStream._auto_tune_and_send_window_update
    source = inspect.getsource(original)
    patched = yamux_credit.patched_window_update_source(source)
    assert patched is not None and "_yamux_release_on_read" not in patched
    assert "_window_update_full_grow" in patched  # the growth and the half-window credit stay
    changed = source.replace("total_delta = delta + bytes_read", "total_delta = delta", 1)
    assert yamux_credit.patched_window_update_source(changed) is None
    assert yamux_credit.patched_window_update_source("def f(self):\n    super().f()\n") is None
