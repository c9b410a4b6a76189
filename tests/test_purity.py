"""The pure core stays pure: no I/O libraries imported, no clock read.

Each module is imported in a fresh interpreter so that what the test process already loaded
does not hide an import. The list is explicit (docs/ARCHITECTURE.md marks the same modules
pure) and strict: a listed module that cannot be found is a failure, never a skip.

The layering is checked on the source: only heartbeat/net/** (and the load generator,
heartbeat/tools/**) import libp2p, and aggregator/** never imports the agent or the tools.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PURE_MODULES = [
    "heartbeat.errors",
    "heartbeat.protocol.beat",
    "heartbeat.protocol.codec",
    "heartbeat.protocol.decoder",
    "heartbeat.protocol.fastpath",
    "heartbeat.protocol.wire",
    "heartbeat.protocol.tipset",
    "heartbeat.protocol.address",
    "heartbeat.common.durations",
    "heartbeat.agent.policy",
    "heartbeat.agent.head",
    "heartbeat.agent.health",
    "heartbeat.agent.rpcstats",
    "heartbeat.common.settings",
    "heartbeat.agent.targets",
    "heartbeat.agent.config",
    "heartbeat.agent.lotus.apiinfo",
    "aggregator.errors",
    "aggregator.networks",
    "aggregator.fleet",
    "aggregator.nodestate",
    "aggregator.fleet_snapshot",
    "aggregator.consensus",
    "aggregator.ratelimit",
    "aggregator.config",
    "aggregator.alerts.model",
    "aggregator.alerts.settings",
    "aggregator.alerts.rules",
    "aggregator.alerts.conditions",
    "aggregator.config_values",
    "aggregator.history",
    "aggregator.variants",
    "aggregator.help",
    "heartbeat.common.cli",
    "heartbeat.agent.config_sources",
    "heartbeat.agent.help",
    "aggregator.alerts.receivers",
    "aggregator.alerts.receivers.common",
    "aggregator.alerts.receivers.config",
    "aggregator.alerts.receivers.chat",
    "aggregator.alerts.receivers.alertmanager",
    "aggregator.alerts.receivers.webhook",
    "aggregator.alerts.receivers.slack",
    "aggregator.alerts.receivers.discord",
    "aggregator.alerts.receivers.telegram",
    "aggregator.alerts.receivers.pagerduty",
    "aggregator.events",
    "aggregator.counters",
    "aggregator.worklink",
    "aggregator.propagation",
    "aggregator.propagation_api",
    "aggregator.fleet_admission",
    "aggregator.statuspage.privacy",
    "aggregator.statuspage.format",
    "aggregator.statuspage.fleet_page",
    "aggregator.statuspage.node_page",
    "aggregator.statuspage.pages",
    "aggregator.statuspage.live",
    "aggregator.scaleout.schema",
    "aggregator.scaleout.merge",
    "aggregator.scaleout.events",
    "aggregator.scaleout.lease",
]
FORBIDDEN = ("trio", "libp2p", "prometheus_client", "httpx", "sqlite3")
CLOCK_CALL = re.compile(r"\btime\.(?:time|monotonic)(?:_ns)?\(")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""
ROOT = Path(__file__).resolve().parent.parent
# Where libp2p may be imported: the network layer, and the load generator's simulated agents.
LIBP2P_HOMES = ("heartbeat/net/", "heartbeat/tools/")
AGGREGATOR_NEVER_IMPORTS = ("heartbeat.agent", "heartbeat.tools")


def _probe_env() -> dict[str, str]:
    """The environment without coverage's start hook: coverage itself loads sqlite3."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


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


@pytest.mark.integration  # one interpreter per module
@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    _source(module)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_probe_env(),
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not loaded & set(FORBIDDEN), f"{module} pulls in {sorted(loaded & set(FORBIDDEN))}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_reads_no_clock(module: str) -> None:
    source = _source(module).read_text(encoding="utf-8")
    assert not CLOCK_CALL.findall(source), f"{module} reads the clock; take `now` instead"


@pytest.mark.integration
def test_probe_detects_an_io_import() -> None:
    # the check itself must be able to fail
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "sqlite3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=_probe_env(),
    )
    assert "sqlite3" in json.loads(result.stdout)
    assert CLOCK_CALL.search("x = time.monotonic()")
    assert not CLOCK_CALL.search("def f(now: float) -> float: return now")


def test_a_missing_listed_module_fails() -> None:
    with pytest.raises(AssertionError, match="missing"):
        _source("heartbeat.no_such_module")
    with pytest.raises(AssertionError, match="missing"):
        _source("no_such_package.module")


def test_only_the_network_layer_and_the_tools_import_libp2p() -> None:
    importers = {
        path.relative_to(ROOT).as_posix()
        for package in ("heartbeat", "aggregator")
        for path in _sources(package)
        if any(_under(name, "libp2p") for name in _imports(path))
    }
    assert importers, "the scan found no libp2p import at all"
    assert any(path.startswith("heartbeat/net/") for path in importers)
    strays = sorted(path for path in importers if not path.startswith(LIBP2P_HOMES))
    assert not strays, f"libp2p imported outside heartbeat/net: {strays}"


def test_only_the_nats_bridge_imports_nats_and_trio_asyncio() -> None:
    importers = {
        path.relative_to(ROOT).as_posix()
        for package in ("heartbeat", "aggregator", "bench")
        for path in _sources(package)
        if any(_under(name, lib) for name in _imports(path) for lib in ("nats", "trio_asyncio"))
    }
    assert importers == {"aggregator/scaleout/bridge.py"}, importers


def test_the_aggregator_never_imports_the_agent_or_the_tools() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT).as_posix()}: {name}"
        for path in _sources("aggregator")
        for name in _imports(path)
        if any(_under(name, banned) for banned in AGGREGATOR_NEVER_IMPORTS)
    )
    assert not offenders, f"aggregator imports the agent or the tools: {offenders}"


def test_the_import_scan_sees_nested_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import heartbeat.agent.loop\n"
        "def f() -> None:\n    from libp2p.peer.id import ID\n",
        encoding="utf-8",
    )
    assert {"heartbeat.agent.loop", "libp2p.peer.id"} <= _imports(source)
    assert _under("heartbeat.tools.loadgen", "heartbeat.tools")
    assert not _under("heartbeat.toolsmith", "heartbeat.tools")
