"""`heartbeat.net.install_fast_task_lookup`: the same parent task as py-libp2p's walk.

py-libp2p 0.8.1 finds a new task's parent by walking every task of the manager's tree
(O(connections) per accepted connection); the installed lookup must give the same answer for
every trio task on every manager, on a real task tree: a listening host, full-host clients
and light connections on loopback, with streams open, and again after one client leaves.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol

from heartbeat.net import p2p
from heartbeat.net.compat import task_lookup
from heartbeat.net.errors import CompatError
from heartbeat.tools.loadgen.light import light_connection


def install_fast_task_lookup() -> bool:
    try:
        task_lookup.install()
    except CompatError:
        return False
    return True


PROTOCOL = TProtocol("fil/heartbeat-test-tasks/1.0.0")

pytestmark = [pytest.mark.timeout(60)]


def _managers() -> list[Any]:
    from libp2p.tools.anyio_service.trio_manager import TrioManager

    return [o for o in gc.get_objects() if isinstance(o, TrioManager)]


def _check_equivalence() -> tuple[int, int, int]:
    """Compare both lookups for every started task against every manager, synchronously
    (no await: the tree cannot change meanwhile). (managers, tasks, non-None answers)."""
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    fast = TrioManager._find_parent_task
    walk = task_lookup.original_find_parent_task
    assert walk is not None and fast is not walk
    managers = _managers()
    trio_tasks = [trio.lowlevel.current_task()]  # not a FunctionTask: None everywhere
    for manager in managers:
        for task in FunctionTask.iterate_tasks(*manager._root_tasks):
            if task.has_trio_task:
                trio_tasks.append(task.trio_task)
    found = 0
    for manager in managers:
        for trio_task in trio_tasks:
            expected = walk(manager, trio_task)
            assert fast(manager, trio_task) is expected, (manager, trio_task)
            found += expected is not None
    return len(managers), len(trio_tasks) - 1, found


def test_install_is_idempotent() -> None:
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    assert install_fast_task_lookup() is True
    find, prop = TrioManager._find_parent_task, FunctionTask.__dict__["trio_task"]
    assert install_fast_task_lookup() is True
    assert TrioManager._find_parent_task is find
    assert FunctionTask.__dict__["trio_task"] is prop


def test_refuses_other_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    def _find_parent_task(self: Any, trio_task: Any) -> Any:  # a different implementation
        return self._task_index.get(trio_task)

    task_lookup.uninstall()
    monkeypatch.setattr(TrioManager, "_find_parent_task", _find_parent_task)
    prop = FunctionTask.__dict__["trio_task"]
    with pytest.raises(CompatError, match="body differs") as refused:
        task_lookup.install()
    assert refused.value.what == "libp2p.tools.anyio_service.trio_manager"
    assert TrioManager._find_parent_task is _find_parent_task
    assert FunctionTask.__dict__["trio_task"] is prop


def test_refuses_other_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.tools.anyio_service.trio_manager import TrioManager

    def _find_parent_task(self: Any, task: Any, default: Any = None) -> Any:
        return default

    task_lookup.uninstall()
    monkeypatch.setattr(TrioManager, "_find_parent_task", _find_parent_task)
    assert install_fast_task_lookup() is False
    assert TrioManager._find_parent_task is _find_parent_task


@pytest.mark.integration
async def test_same_parent_as_the_walk_on_a_real_host() -> None:
    assert install_fast_task_lookup() is True
    received: list[bytes] = []
    done = trio.Event()
    expected = 4

    async def handler(stream: Any) -> None:
        data = b""
        try:
            with trio.fail_after(10):
                while not data.endswith(b"\n"):
                    data += await stream.read(64)
            await stream.write(b"ok " + data)
            await stream.close()
        except p2p.StreamClosed:
            await stream.reset()
            return
        received.append(data)
        if len(received) >= expected:
            done.set()

    server_key = p2p.new_identity()
    limits = p2p.HostLimits.server(64)
    async with p2p.running_host(server_key, ["/ip4/127.0.0.1/tcp/0"], limits) as server:
        p2p.set_stream_handlers(server, [PROTOCOL], handler)
        [listen] = p2p.listen_multiaddrs(server)
        addr = f"{listen}/p2p/{p2p.peer_id_of(server_key)}"
        info = p2p.peer_info_from_multiaddr(addr)
        async with (
            p2p.running_host(p2p.new_identity()) as client_a,
            p2p.running_host(p2p.new_identity()) as client_b,
            light_connection(p2p.new_identity(), addr) as light_a,
            light_connection(p2p.new_identity(), addr) as light_b,
        ):
            streams = []
            for i, host in enumerate((client_a, client_b)):
                with trio.fail_after(10):
                    await host.connect(info)
                    stream = await host.new_stream(info.peer_id, [PROTOCOL])
                await stream.write(b"host %d\n" % i)
                streams.append(stream)
            for i, light in enumerate((light_a, light_b)):
                stream = await light.open_stream(PROTOCOL)
                await stream.write(b"light %d\n" % i)
                streams.append(stream)
            for stream in streams:  # streams work: each gets its echo
                with trio.fail_after(10):
                    assert (await stream.read(64)).startswith(b"ok ")
            with trio.fail_after(10):
                await done.wait()
            assert sorted(received) == [b"host 0\n", b"host 1\n", b"light 0\n", b"light 1\n"]
            assert p2p.connection_count(server) == 4

            await trio.testing.wait_all_tasks_blocked()
            managers, tasks, found = _check_equivalence()
            # A real tree: one manager per host, its connections' and sessions' tasks in it.
            assert managers >= 3 and tasks >= 8 and found == tasks

            await light_a.close()
            with trio.fail_after(10):
                while p2p.connection_count(server) != 3:
                    await trio.sleep(0.05)
            await trio.testing.wait_all_tasks_blocked()
            _check_equivalence()

            # New connections and streams after the churn, found through the lookup.
            async with light_connection(p2p.new_identity(), addr) as light_c:
                expected = 5
                done = trio.Event()
                stream = await light_c.open_stream(PROTOCOL)
                await stream.write(b"light 2\n")
                with trio.fail_after(10):
                    assert await stream.read(64) == b"ok light 2\n"
                    await done.wait()
                await trio.testing.wait_all_tasks_blocked()
                _check_equivalence()


@pytest.mark.parametrize(("argv", "expected"), [([], True), (["--no-fast-task-lookup"], False)])
def test_benchmark_variant_flag(argv: list[str], expected: bool) -> None:
    """A benchmark variant, not a setting: a hidden flag only (aggregator/variants.py)."""
    from aggregator.cli_parser import build_parser as _parser
    from aggregator.variants import BenchVariants

    variants = BenchVariants.from_args(_parser().parse_args(["run", *argv]))
    assert variants.fast_task_lookup is expected
    assert variants.compat_options().fast_task_lookup is expected
    assert ("--no-fast-task-lookup" in variants.argv()) is not expected


def test_variants_are_not_settings(tmp_path: Any) -> None:
    from aggregator.__main__ import parse_args
    from heartbeat.errors import ConfigError

    path = tmp_path / "aggregator.toml"
    path.write_text("fast_task_lookup = false\n")
    with pytest.raises(ConfigError, match="fast_task_lookup"):
        parse_args(["run", "--config", str(path)], env={})
    _, config = parse_args(["run", "--no-fast-task-lookup"], env={})
    assert not hasattr(config, "fast_task_lookup")


async def test_parent_chain_walk_matches_the_tree_walk() -> None:
    """The index's answer is checked along the parent chain: a task detached from its
    parent, or under another manager, is not found; a chain deeper than the check falls
    back to py-libp2p's walk. Each case against the walk itself."""
    from libp2p.tools.anyio_service.trio_manager import TrioManager
    from libp2p.tools.anyio_service.trio_tasks import FunctionTask

    assert install_fast_task_lookup() is True
    walk = task_lookup.original_find_parent_task

    async def noop() -> None:
        return None

    def task(parent: Any) -> Any:
        made = FunctionTask("t", False, parent, noop, ())
        if parent is not None:
            parent.add_child(made)
        return made

    class Manager:
        def __init__(self, *roots: Any) -> None:
            self._root_tasks = set(roots)

    trio_tasks: list[Any] = []

    async def sleeper(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        trio_tasks.append(trio.lowlevel.current_task())
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            await nursery.start(sleeper)
        root = task(None)
        child = task(root)
        grandchild = task(child)
        grandchild.trio_task = trio_tasks[0]
        deep = root
        for _ in range(300):
            deep = task(deep)
        deep.trio_task = trio_tasks[1]
        manager, other = Manager(root), Manager(task(None))
        # called with the duck-typed Manager stand-in, not a real TrioManager
        fast: Callable[[Any, Any], Any] = TrioManager._find_parent_task
        cases = [
            (manager, trio_tasks[0], grandchild),  # found along the chain
            (other, trio_tasks[0], None),  # another manager's tree
            (manager, trio_tasks[1], deep),  # deeper than the check: the walk
            (manager, trio_tasks[2], None),  # no FunctionTask at all
        ]
        for mgr, trio_task, expected in cases:
            assert walk(mgr, trio_task) is expected
            assert fast(mgr, trio_task) is expected
        root.children.discard(child)  # detached: no longer in the manager's tree
        assert walk(manager, trio_tasks[0]) is None
        assert fast(manager, trio_tasks[0]) is None
        nursery.cancel_scope.cancel()
