"""Shared test hooks: the `requires_tools` marker, and the unit/integration split.

A test that opens a real socket (bind or connect) or starts a subprocess must carry the
`integration` or `e2e` marker, so that `pytest -m "not integration and not e2e"` runs only
fast, self-contained unit tests. The hooks enforce it: in an unmarked test, such a call is
refused and the test fails naming it. `requires_tools` implies `integration`.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.promservers import require_tools

# py-libp2p imports zeroconf, whose ifaddr runs `ldconfig` once when imported: import it
# here, before any test, so that a unit test importing the programs starts no process.
importlib.import_module("libp2p")

REAL_IO_MARKERS = ("integration", "e2e")
# Modules whose tests run real libp2p hosts or the programs' processes throughout, marked
# here as a whole until each test in them carries its own marker.
INTEGRATION_MODULES = frozenset(
    {
        "test_agent_cli.py",
        "test_p2p_gate.py",
        "test_p2p_identify.py",
        "test_p2p_reconcile.py",
        "test_p2p_yamux.py",
    }
)


class RealIOInUnitTest(RuntimeError):
    """An unmarked test tried to open a socket or start a process."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_tools(*tools): needs system tools (tests/promservers.py TOOLS); "
        "skips without them, fails under CI=true; implies integration",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_real_io(item):
            continue
        if item.get_closest_marker("requires_tools") or item.path.name in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


def _is_real_io(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in REAL_IO_MARKERS)


@contextmanager
def _refuse_real_io(refused: list[str]) -> Iterator[None]:
    """Replace the entry points of real I/O with ones that record and refuse the call."""

    def refusing(what: str) -> Callable[..., Any]:
        def refuse(*args: object, **kwargs: object) -> Any:
            refused.append(what)
            raise RealIOInUnitTest(f"{what} in a test without an integration/e2e marker")

        return refuse

    originals: list[tuple[Any, str, Any]] = [
        (socket.socket, "bind", socket.socket.bind),
        (socket.socket, "connect", socket.socket.connect),
        (socket.socket, "connect_ex", socket.socket.connect_ex),
        (subprocess.Popen, "_execute_child", subprocess.Popen._execute_child),  # type: ignore[attr-defined]
    ]
    for owner, name, _ in originals:
        setattr(owner, name, refusing(f"{getattr(owner, '__name__', owner)}.{name}"))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    if _is_real_io(item):
        return (yield)
    refused: list[str] = []
    with _refuse_real_io(refused):
        result = yield  # a refused call usually fails the test right here
    if refused:
        pytest.fail(
            f"{item.nodeid} opens real I/O ({', '.join(sorted(set(refused)))}): "
            "mark it integration (or e2e)",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    tools = [tool for mark in item.iter_markers("requires_tools") for tool in mark.args]
    if tools:
        require_tools(*tools)
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))
