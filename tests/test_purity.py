"""The pure core stays pure: no I/O libraries imported, no clock read.

Each module is imported in a fresh interpreter so that what the test process already loaded
does not hide an import. Modules that do not exist yet are skipped: the list grows by itself.
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
    "heartbeat.wire",
    "heartbeat.tipset",
    "heartbeat.address",
    "heartbeat.durations",
    "heartbeat.policy",
    "heartbeat.head",
    "heartbeat.config",
    "heartbeat.lotus.apiinfo",
    "aggregator.errors",
    "aggregator.fleet",
    "aggregator.consensus",
    "aggregator.ratelimit",
    "aggregator.config",
    "aggregator.alerts.rules",
]
FORBIDDEN = ("trio", "libp2p", "prometheus_client", "httpx", "sqlite3")
CLOCK_CALL = re.compile(r"\btime\.(?:time|monotonic)(?:_ns)?\(")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # the parent package does not exist yet
        return None


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    if _spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
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
    spec = _spec(module)
    if spec is None or spec.origin is None:
        pytest.skip(f"{module} does not exist yet")
    source = Path(spec.origin).read_text(encoding="utf-8")
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
