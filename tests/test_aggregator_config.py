"""The aggregator's configuration: precedence, parsing and one ConfigError per bad value."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.config import (
    AggregatorConfig,
    build_config,
    parse_allowlist,
    parse_http_listen,
    setting_label,
)
from heartbeat.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    config = build_config(state_dir=Path("/state"))
    assert config.listen == ("/ip4/0.0.0.0/tcp/9081",)
    assert (config.http_host, config.http_port) == ("0.0.0.0", 9082)
    assert config.identity_file == Path("/state/aggregator.key")
    assert config.state_db == Path("/state/aggregator.db")
    assert config.beat_timeout == 30.0
    assert (config.beat_timeout_min, config.beat_timeout_max) == (10.0, 120.0)
    assert config.lag_threshold == 5
    assert config.stall_after == 300.0
    assert config.retention == 86_400.0
    assert config.http_url == "http://127.0.0.1:9082"
    assert config.allowlist_file is None


def test_precedence_flags_over_env_over_file() -> None:
    file = {"rate-limit": 1.0, "rate_burst": 3, "beat_timeout": "45s", "name": "file"}
    env = {"FIL_HEARTBEAT_AGGREGATOR_RATE_BURST": "7", "FIL_HEARTBEAT_AGGREGATOR_NAME": "env"}
    flags = {"name": "flag", "listen": None, "command": "run"}
    config = build_config(flags, env, file)
    assert config.rate_limit == 1.0
    assert config.rate_burst == 7
    assert config.beat_timeout == 45.0
    assert config.name == "flag"
    assert config.listen == ("/ip4/0.0.0.0/tcp/9081",)


def test_values_from_text() -> None:
    config = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/9081"],
            "http_listen": "[::1]:9999",
            "stall_after": "1m30s",
            "gc_threshold": "1000,10,10",
            "legacy_metrics": True,
            "allowlist_file": "/etc/allow",
        },
        {
            "FIL_HEARTBEAT_AGGREGATOR_GC_FREEZE": "false",
            "FIL_HEARTBEAT_AGGREGATOR_LOG_FORMAT": "JSON",
        },
    )
    assert config.listen == ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/9081")
    assert (config.http_host, config.http_port) == ("::1", 9999)
    assert config.http_url == "http://[::1]:9999"
    assert config.stall_after == 90.0
    assert config.gc_threshold == (1000, 10, 10)
    assert config.legacy_metrics is True
    assert config.gc_freeze is False
    assert config.log_format == "json"
    assert config.allowlist_file == Path("/etc/allow")


def test_env_listen_is_comma_separated() -> None:
    config = build_config(
        env={"FIL_HEARTBEAT_AGGREGATOR_LISTEN": "/ip4/1.2.3.4/tcp/1, /ip6/::/tcp/2"}
    )
    assert config.listen == ("/ip4/1.2.3.4/tcp/1", "/ip6/::/tcp/2")


@pytest.mark.parametrize(
    ("flags", "setting"),
    [
        ({"listen": ["/ip4/1.2.3/tcp/1"]}, "listen"),
        ({"listen": ["/ip4/127.0.0.1/udp/1"]}, "listen"),
        ({"listen": ["/ip4/127.0.0.1/tcp/99999"]}, "listen"),
        ({"listen": ["/ip4/300.0.0.1/tcp/1"]}, "listen"),
        ({"http_listen": "localhost"}, "http_listen"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"rate_limit": "0"}, "rate_limit"),
        ({"rate_burst": "0"}, "rate_burst"),
        ({"stall_after": "5 minutes"}, "stall_after"),
        ({"beat_timeout": "-1s"}, "beat_timeout"),
        ({"beat_timeout_min": "3m"}, "beat_timeout_min"),
        ({"gc_threshold": "1,2"}, "gc_threshold"),
        ({"legacy_metrics": "maybe"}, "legacy_metrics"),
        ({"log_format": "xml"}, "log_format"),
        ({"max_beat_size": "100000"}, "max_beat_size"),
        ({"max_connections_per_ip": "0"}, "max_connections_per_ip"),
        ({"max_streams_total": "0"}, "max_streams_total"),
        ({"max_memory_mb": "lots"}, "max_memory_mb"),
        ({"max_peers": "100", "max_connections": "100"}, "max_peers"),
        ({"max_pending_inbound": "-1"}, "max_pending_inbound"),
        ({"max_connections_per_peer": "0"}, "max_connections_per_peer"),
        ({"handshake_queue_wait": "0s"}, "handshake_queue_wait"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(flags)
    # the flag and the variable, never the internal key alone
    assert info.value.setting == setting_label(setting)
    assert f"FIL_HEARTBEAT_AGGREGATOR_{setting.upper()}" in str(info.value)


def test_bad_values_say_where_they_came_from_and_give_an_example() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(env={"FIL_HEARTBEAT_AGGREGATOR_BEAT_TIMEOUT": "30"})
    text = str(info.value)
    assert text.startswith("--beat-timeout / FIL_HEARTBEAT_AGGREGATOR_BEAT_TIMEOUT: ")
    assert "'30' (from env)" in text and "e.g. 30s" in text
    assert (
        setting_label("allowlist_file") == "--allowlist / FIL_HEARTBEAT_AGGREGATOR_ALLOWLIST_FILE"
    )


def test_origins_say_where_each_value_came_from() -> None:
    origins: dict[str, str] = {}
    build_config(
        {"rate_limit": "3"},
        {"FIL_HEARTBEAT_AGGREGATOR_RATE_BURST": "20"},
        {"max_nodes": 10},
        origins=origins,
    )
    assert origins == {"rate_limit": "flag", "rate_burst": "env", "max_nodes": "file"}


def test_unknown_settings_in_env_or_file_are_errors() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(env={"FIL_HEARTBEAT_AGGREGATOR_RATE_LIMT": "3"})
    assert info.value.setting == "FIL_HEARTBEAT_AGGREGATOR_RATE_LIMT"
    assert "did you mean FIL_HEARTBEAT_AGGREGATOR_RATE_LIMIT?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_config(file={"bogus": 1})
    assert info.value.setting == "bogus"
    # Other programs' variables are not ours to judge.
    assert build_config(env={"FIL_HEARTBEAT_NICKNAME": "x"}) == AggregatorConfig()


def test_toml_types_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(file={"max_connections": True})
    assert info.value.setting == setting_label("max_connections")
    with pytest.raises(ConfigError) as info:
        build_config(file={"alerts": "yes"})
    assert info.value.setting == setting_label("alerts")
    config = build_config(file={"alerts": {"alertmanager_url": "http://127.0.0.1:9093"}})
    assert config.alerts == {"alertmanager_url": "http://127.0.0.1:9093"}


def test_host_limits_all_four_layers() -> None:
    from aggregator.app import host_limits

    derived = host_limits(build_config({"max_connections": "1000"}))
    assert derived.max_connections == 1000
    assert derived.max_streams == 4000
    assert derived.max_memory_mb == 512
    assert derived.max_peers == 2064
    assert derived.pending_inbound == 64  # not derived: handshakes are CPU-bound
    assert derived.handshake_queue_wait == 5.0
    assert derived.max_connections_per_peer == 2
    config = build_config(
        {"max_streams_total": "9000", "max_peers": "5000"},
        {
            "FIL_HEARTBEAT_AGGREGATOR_MAX_MEMORY_MB": "2048",
            "FIL_HEARTBEAT_AGGREGATOR_MAX_PENDING_INBOUND": "300",
        },
        {"max_connections_per_peer": 3, "max_connections": 1000, "handshake_queue_wait": "2s"},
    )
    limits = host_limits(config)
    assert (limits.max_streams, limits.max_memory_mb, limits.max_peers) == (9000, 2048, 5000)
    assert (limits.pending_inbound, limits.max_connections_per_peer) == (300, 3)
    assert limits.handshake_queue_wait == 2.0


def test_cli_limit_flags(tmp_path: Path) -> None:
    from aggregator.__main__ import parse_args

    _, config = parse_args(
        [
            "run",
            "--max-streams-total",
            "100",
            "--max-memory-mb",
            "600",
            "--max-peers",
            "20000",
            "--max-pending-inbound",
            "32",
            "--max-connections-per-peer",
            "1",
            "--identity-file",
            str(tmp_path / "k"),
        ],
        env={},
    )
    assert (config.max_streams_total, config.max_memory_mb, config.max_peers) == (100, 600, 20000)
    assert (config.max_pending_inbound, config.max_connections_per_peer) == (32, 1)


def test_parse_http_listen() -> None:
    assert parse_http_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_http_listen(":9082") == ("0.0.0.0", 9082)
    assert parse_http_listen("[::]:80") == ("::", 80)
    with pytest.raises(ValueError):
        parse_http_listen("127.0.0.1")


def test_parse_allowlist() -> None:
    text = "# fleet\n12D3KooWAbc  # alpha\n\n  QmXyz\n"
    assert parse_allowlist(text) == frozenset({"12D3KooWAbc", "QmXyz"})
    with pytest.raises(ValueError, match="line 2"):
        parse_allowlist("ok\nnot a peer\n")


def test_cli_flags_become_config(tmp_path: Path) -> None:
    from aggregator.__main__ import parse_args

    toml = tmp_path / "agg.toml"
    toml.write_text('rate_burst = 4\n[alerts]\nalertmanager_url = "http://127.0.0.1:9093"\n')
    command, config = parse_args(
        [
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/1",
            "--listen",
            "/ip6/::1/tcp/2",
            "--http-listen",
            "127.0.0.1:0",
            "--legacy-metrics",
            "--stall-after",
            "2m",
            "--config",
            str(toml),
            "--identity-file",
            str(tmp_path / "k"),
        ],
        env={"FIL_HEARTBEAT_AGGREGATOR_NAME": "east"},
    )
    assert command == "run"
    assert config.listen == ("/ip4/127.0.0.1/tcp/1", "/ip6/::1/tcp/2")
    assert config.legacy_metrics and config.stall_after == 120.0 and config.name == "east"
    assert config.rate_burst == 4
    assert config.alerts == {"alertmanager_url": "http://127.0.0.1:9093"}
    assert config.identity_file == tmp_path / "k"
    assert parse_args([], env={})[0] == "run"


def test_cli_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from aggregator.__main__ import main

    assert main(["run", "--rate-limit", "lots"]) == 2
    assert "--rate-limit / FIL_HEARTBEAT_AGGREGATOR_RATE_LIMIT" in capsys.readouterr().err


def test_gc_monitor_measures_pauses() -> None:
    import gc

    from aggregator.gcmon import GcMonitor

    ticks = iter([1.0, 1.004, 2.0, 2.3])
    monitor = GcMonitor(clock=lambda: next(ticks))
    monitor._callback("start", {"generation": 0})
    monitor._callback("stop", {"generation": 0})
    monitor._callback("start", {"generation": 2})
    monitor._callback("stop", {"generation": 2})
    assert monitor.count == 2 and monitor.by_generation == [1, 0, 1]
    assert monitor.max == pytest.approx(0.3)
    buckets = dict(monitor.cumulative_buckets())
    assert buckets["0.005"] == 1 and buckets["0.5"] == 2 and buckets["+Inf"] == 2
    with GcMonitor() as real:
        gc.collect()
    assert real.count >= 1
    assert real._callback not in gc.callbacks


# -- probation, reset-state, legacy name, listen ports in use --------------------------------


def test_probation_and_reset_state_settings() -> None:
    defaults = build_config(state_dir=Path("/state"))
    assert (defaults.probation, defaults.max_probation, defaults.max_probation_per_ip) == (
        60.0,
        1000,
        64,
    )
    assert defaults.reset_state is False
    file = {"probation": "2m", "max_probation": 10, "reset_state": True}
    config = build_config({}, {"FIL_HEARTBEAT_AGGREGATOR_MAX_PROBATION_PER_IP": "3"}, file)
    assert (config.probation, config.max_probation, config.max_probation_per_ip) == (120.0, 10, 3)
    assert config.reset_state is True
    env = build_config({}, {"FIL_HEARTBEAT_AGGREGATOR_RESET_STATE": "true"})
    assert env.reset_state is True
    from aggregator.__main__ import parse_args

    _, cli = parse_args(["run", "--reset-state", "--probation", "0s"], env={})
    assert cli.reset_state is True
    assert cli.probation == 0.0
    with pytest.raises(ConfigError, match="FIL_HEARTBEAT_AGGREGATOR_MAX_PROBATION"):
        build_config({"max_probation": "0"})


def test_legacy_metrics_labelled_with_the_name() -> None:
    from aggregator.fleet import Fleet
    from aggregator.fleet_reference import render_reference
    from aggregator.metrics import create_metrics

    snap = Fleet().snapshot(0.0)
    metrics = create_metrics(lambda: snap, legacy=True, name='east"1')
    text = metrics.fleet.render(snap)
    assert 'connected_nodes{aggregator="east\\"1"} 0\n' in text
    assert 'aggregator="aggregator"' not in text
    reference = render_reference(snap, legacy=True, name='east"1').decode()
    assert 'connected_nodes{aggregator="east\\"1"} 0.0' in reference


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "HOME": str(cwd)},
        check=False,
    )


@pytest.mark.integration  # a real listening socket and the aggregator's process
@pytest.mark.parametrize("which", ["listen", "http"])
def test_listen_port_in_use_exits_2_before_opening_anything(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"/ip4/127.0.0.1/tcp/{port}" if which == "listen" else "/ip4/127.0.0.1/tcp/0"
        http = f"127.0.0.1:{port}" if which == "http" else "127.0.0.1:0"
        proc = _run_cli(
            "run",
            "--listen",
            listen,
            "--http-listen",
            http,
            "--state-db",
            str(tmp_path / "agg.db"),
            "--identity-file",
            str(tmp_path / "agg.key"),
            cwd=tmp_path,
        )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    flag = "--listen" if which == "listen" else "--http-listen"
    assert f"127.0.0.1:{port}" in lines[0]
    assert flag in lines[0]
    assert not (tmp_path / "agg.db").exists()
    assert not (tmp_path / "agg.key").exists()


def test_port_zero_is_not_checked() -> None:
    config = build_config({"listen": ["/ip4/127.0.0.1/tcp/0"], "http_listen": "127.0.0.1:0"})
    from aggregator.__main__ import busy_listen_address

    assert busy_listen_address(config) is None
