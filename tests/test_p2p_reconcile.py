"""`install_throttled_reconcile`: py-libp2p's per-accept tracker reconcile, at most every 5 s.

The patch recompiles `Swarm.add_conn` from py-libp2p's own source with one condition added;
it must refuse any other source, and on a real host every connection must still be added
while the O(connections) reconcile runs once per interval instead of once per connection.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import trio

from heartbeat.net import p2p
from heartbeat.net.compat import reconcile as reconcile_fix
from heartbeat.tools.loadgen.light import light_connection
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(60)]


def test_reconcile_due_once_per_interval() -> None:
    class Swarm:
        pass

    swarm = Swarm()
    assert reconcile_fix.reconcile_due(swarm, 5.0, 100.0) is True
    assert reconcile_fix.reconcile_due(swarm, 5.0, 104.9) is False
    assert reconcile_fix.reconcile_due(swarm, 5.0, 105.0) is True
    assert reconcile_fix.reconcile_due(Swarm(), 5.0, 105.1) is True  # per swarm


def test_patch_applies_to_this_source_only() -> None:
    reconcile_fix.install()
    assert reconcile_fix.installed()
    original = inspect.getsource(reconcile_fix.original_add_conn)
    patched = reconcile_fix.patched_add_conn_source(original)
    assert patched is not None
    assert patched.count("_fil_reconcile_due(self)") == 1
    # Everything else is unchanged: only the guarded line differs.
    diff = set(patched.splitlines()) ^ set(inspect.cleandoc("\n" + original).splitlines())
    assert {line.strip() for line in diff} == {
        "if reconcile_lifecycle is not None:",
        "if reconcile_lifecycle is not None and _fil_reconcile_due(self):",
    }
    changed = original.replace("str(id(sc.muxed_conn))", "id(sc.muxed_conn)")
    assert reconcile_fix.patched_add_conn_source(changed) is None  # another version: refused
    reconcile_fix.install()  # idempotent
    assert reconcile_fix.installed()


async def test_every_connection_added_reconcile_once_per_interval() -> None:
    reconcile_fix.install()
    assert reconcile_fix.installed()
    key = p2p.new_identity()
    async with p2p.running_host(key, ["/ip4/127.0.0.1/tcp/0"], p2p.HostLimits.server(32)) as srv:
        swarm: Any = srv.get_network()
        lifecycle = swarm._resource_manager.connection_lifecycle
        calls: list[int] = []
        reconcile = lifecycle.reconcile_live_connections

        def counting(live_ids: set[str], *args: Any, **kwargs: Any) -> int:
            calls.append(len(live_ids))
            return int(reconcile(live_ids, *args, **kwargs))

        lifecycle.reconcile_live_connections = counting
        [listen] = p2p.listen_multiaddrs(srv)
        addr = f"{listen}/p2p/{p2p.peer_id_of(key)}"
        async with trio.open_nursery() as nursery:
            opened = trio.Semaphore(0)
            done = trio.Event()

            async def client() -> None:
                async with light_connection(p2p.new_identity(), addr):
                    opened.release()
                    await done.wait()

            for _ in range(4):
                nursery.start_soon(client)
            for _ in range(4):
                with trio.fail_after(10):
                    await opened.acquire()
            await eventually(lambda: p2p.connection_count(srv) == 4)
            assert calls == [0]  # the first accept reconciled (against no other connection)
            swarm._fil_last_reconcile -= 10  # the interval has passed
            nursery.start_soon(client)
            with trio.fail_after(10):
                await opened.acquire()
            await eventually(lambda: p2p.connection_count(srv) == 5)
            assert calls == [0, 4]  # the next accept reconciled against the 4 live ones
            done.set()
