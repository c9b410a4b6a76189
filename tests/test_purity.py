"""The pure core stays pure: no I/O libraries imported, no clock read.

Each module is imported in a fresh interpreter so that what the test process already loaded
does not hide an import. The list is explicit (docs/ARCHITECTURE.md marks the same modules
pure) and strict: a listed module that cannot be found is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PURE_MODULES = [
    "heartbeat.errors",
    "heartbeat.protocol.wire",
    "heartbeat.protocol.tipset",
    "heartbeat.protocol.address",
    "heartbeat.common.durations",
    "heartbeat.agent.policy",
    "heartbeat.agent.head",
    "heartbeat.common.settings",
    "heartbeat.agent.targets",
    "heartbeat.agent.config",
    "heartbeat.agent.lotus.apiinfo",
    "aggregator.errors",
    "aggregator.networks",
    "aggregator.fleet",
    "aggregator.consensus",
    "aggregator.ratelimit",
    "aggregator.config",
    "aggregator.alerts.rules",
    "aggregator.events",
    "aggregator.counters",
    "aggregator.worklink",
]
FORBIDDEN = ("trio", "libp2p", "prometheus_client", "httpx", "sqlite3")
CLOCK_CALL = re.compile(r"\btime\.(?:time|monotonic)(?:_ns)?\(")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _source(module: str) -> Path:
    """The listed module's file; a module that is missing fails the test."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # the parent package is missing
        spec = None
    assert spec is not None and spec.origin is not None, f"listed pure module {module} is missing"
    return Path(spec.origin)


def test_the_list_names_no_module_twice() -> None:
    assert len(set(PURE_MODULES)) == len(PURE_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    _source(module)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not loaded & set(FORBIDDEN), f"{module} pulls in {sorted(loaded & set(FORBIDDEN))}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_reads_no_clock(module: str) -> None:
    source = _source(module).read_text(encoding="utf-8")
    assert not CLOCK_CALL.findall(source), f"{module} reads the clock; take `now` instead"


def test_probe_detects_an_io_import() -> None:
    # the check itself must be able to fail
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "sqlite3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "sqlite3" in json.loads(result.stdout)
    assert CLOCK_CALL.search("x = time.monotonic()")
    assert not CLOCK_CALL.search("def f(now: float) -> float: return now")


def test_a_missing_listed_module_fails() -> None:
    with pytest.raises(AssertionError, match="missing"):
        _source("heartbeat.no_such_module")
    with pytest.raises(AssertionError, match="missing"):
        _source("no_such_package.module")
