"""Agent configuration: targets, precedence, and a ConfigError naming every bad setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heartbeat.agent.config import (
    ALERTS_PERIOD,
    AgentConfig,
    build_config,
    config_path,
    parse_toml,
)
from heartbeat.agent.targets import EXAMPLE_TARGET, parse_peer_id, parse_target
from heartbeat.errors import ConfigError

PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
QM_PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
T1 = f"/ip4/127.0.0.1/tcp/9081/p2p/{PEER}"
T2 = f"/dns4/agg.example.org/tcp/9081/p2p/{QM_PEER}"
DEFAULT_ID = Path("/nonexistent/state/agent.key")
BASE_ENV = {"FIL_HEARTBEAT_TARGETS": T1, "FIL_HEARTBEAT_HEAD_SOURCE": "static"}


def build(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    toml: dict[str, Any] | None = None,
) -> AgentConfig:
    return build_config(
        flags or {},
        env if env is not None else dict(BASE_ENV),
        toml,
        default_identity_file=DEFAULT_ID,
    )


# -- targets ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        T1,
        T2,
        f"/ip6/::1/tcp/1/p2p/{PEER}",
        f"/dns6/h.example/tcp/65535/p2p/{PEER}",
        f"/dns/h/tcp/4001/ipfs/{PEER}",
        EXAMPLE_TARGET,
    ],
)
def test_valid_targets(text: str) -> None:
    target = parse_target(text)
    assert target.addr.endswith(f"/p2p/{target.peer_id}")
    assert "/ipfs/" not in target.addr


def test_ipfs_is_normalised_to_p2p() -> None:
    target = parse_target(f"/ip4/10.0.0.1/tcp/4001/ipfs/{PEER}")
    assert target.addr == f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"
    assert (target.host, target.port, target.peer_id) == ("10.0.0.1", 4001, PEER)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/ip4/127.0.0.1/tcp/9081", "missing /p2p/"),
        ("ip4/127.0.0.1/tcp/9081/p2p/" + PEER, "must start with"),
        (f"/ip4/127.0.0.1/udp/9081/p2p/{PEER}", "transport /udp"),
        (f"/unix/x/tcp/9081/p2p/{PEER}", "protocol /unix"),
        (f"/ip4/300.0.0.1/tcp/9081/p2p/{PEER}", "invalid /ip4 host"),
        (f"/ip6/127.0.0.1/tcp/9081/p2p/{PEER}", "invalid /ip6 host"),
        (f"/dns4/bad_host!/tcp/9081/p2p/{PEER}", "invalid /dns4 host"),
        (f"/ip4/127.0.0.1/tcp/0/p2p/{PEER}", "invalid tcp port"),
        (f"/ip4/127.0.0.1/tcp/70000/p2p/{PEER}", "invalid tcp port"),
        ("/ip4/127.0.0.1/tcp/9081/p2p/notapeerid0OIl", "invalid peer id"),
        (
            "/ip4/127.0.0.1/tcp/9081/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9Hy",
            "invalid peer id",
        ),
        (f"/ip4/127.0.0.1/tcp/9081/p2p/{PEER}/extra", "expected"),
        ("", "must start with"),
    ],
)
def test_bad_targets_name_the_setting_and_show_an_example(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(text)
    assert info.value.setting == "--target / FIL_HEARTBEAT_TARGETS"
    assert why in info.value.message
    assert EXAMPLE_TARGET in info.value.message


def test_peer_id_checks_the_multihash() -> None:
    assert parse_peer_id(PEER) == PEER
    assert parse_peer_id(QM_PEER) == QM_PEER
    assert parse_peer_id("Qm" + "1" * 44) is None
    assert parse_peer_id("") is None


# -- building the config --------------------------------------------------------


def test_defaults() -> None:
    config = build()
    assert [t.addr for t in config.targets] == [T1]
    assert (config.beat_period, config.reconnect_period, config.jitter) == (3.0, 10.0, 0.2)
    assert config.error_log_period == 600.0
    assert config.encoding == "cbor"
    assert config.log_format == "text"
    assert config.identity_file == DEFAULT_ID
    assert config.metrics_listen is None
    assert config.targets[0].beat_period == 3.0
    assert config.targets[0].role == "primary"


def test_several_targets_from_flags_and_env_list() -> None:
    config = build(env={**BASE_ENV, "FIL_HEARTBEAT_TARGETS": f"{T1}, {T2}"})
    assert [t.addr for t in config.targets] == [T1, T2]
    config = build(flags={"targets": [T2, T1]})
    assert [t.addr for t in config.targets] == [T2, T1]


def test_alerts_target_has_its_own_periods() -> None:
    alerts = f"/ip4/127.0.0.2/tcp/9999/p2p/{PEER}"
    config = build(flags={"beat_period": "1s"}, env={**BASE_ENV, "FIL_HEARTBEAT_ALERTS": alerts})
    primary, alert = config.targets
    assert primary.beat_period == 1.0
    assert alert.role == "alerts"
    assert alert.addr == alerts
    assert (
        (alert.beat_period, alert.reconnect_period)
        == (ALERTS_PERIOD, ALERTS_PERIOD)
        == (
            10.0,
            10.0,
        )
    )


def test_precedence_flags_over_env_over_toml_over_defaults() -> None:
    toml = {
        "beat_period": "7s",
        "reconnect_period": "20s",
        "nickname": "fromtoml",
        "encoding": "json",
    }
    env = {**BASE_ENV, "FIL_HEARTBEAT_BEAT_PERIOD": "5s", "FIL_HEARTBEAT_NICKNAME": "fromenv"}
    config = build(flags={"nickname": "fromflag"}, env=env, toml=toml)
    assert config.nickname == "fromflag"
    assert config.beat_period == 5.0
    assert config.reconnect_period == 20.0
    assert config.encoding == "json"
    assert config.jitter == 0.2
    config = build(env=env, toml=toml)
    assert config.nickname == "fromenv"


def test_toml_file_keys() -> None:
    toml = parse_toml(
        f"""
        [agent]
        target = ["{T1}"]
        beat-period = "1m30s"
        head_source = "simulated"
        metrics_listen = "127.0.0.1:9083"
        """
    )
    config = build(env={}, toml=toml)
    assert config.beat_period == 90.0
    assert config.head_source == "simulated"
    assert config.metrics_listen == ("127.0.0.1", 9083)


def test_config_path_flag_over_env() -> None:
    assert config_path({"config": "/a.toml"}, {"FIL_HEARTBEAT_CONFIG": "/b.toml"}) == "/a.toml"
    assert config_path({}, {"FIL_HEARTBEAT_CONFIG": "/b.toml"}) == "/b.toml"
    assert config_path({}, {}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("beat_period = ", "invalid TOML"), ("bogus = 1", "unknown key")],
)
def test_bad_toml(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(text)
    assert info.value.setting == "--config / FIL_HEARTBEAT_CONFIG"
    assert message in info.value.message


def test_head_source_defaults_to_lotus_with_fullnode_api_info() -> None:
    env = {
        "FIL_HEARTBEAT_TARGETS": T1,
        "FULLNODE_API_INFO": "tok:/ip4/127.0.0.1/tcp/1234/http",
        "STORAGE_API_INFO": "tok:/ip4/127.0.0.1/tcp/2345/http",
    }
    config = build(env=env)
    assert config.head_source == "lotus"
    assert config.fullnode_api_info == "tok:/ip4/127.0.0.1/tcp/1234/http"
    assert config.miner_api_info == "tok:/ip4/127.0.0.1/tcp/2345/http"


def test_no_head_source_says_what_to_set() -> None:
    with pytest.raises(ConfigError) as info:
        build(env={"FIL_HEARTBEAT_TARGETS": T1})
    assert info.value.setting == "--head-source / FIL_HEARTBEAT_HEAD_SOURCE"
    assert "FULLNODE_API_INFO" in info.value.message
    assert "static|simulated" in info.value.message


def test_miner_address_is_normalised() -> None:
    assert build(flags={"miner_address": "f00123"}).miner_address == "f0123"
    assert build(flags={"miner_address": "<empty>"}).miner_address == ""


# Every bad value names its setting: (flags, env additions, expected setting label).
BAD = [
    ({"beat_period": "3"}, {}, "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD"),
    ({}, {"FIL_HEARTBEAT_BEAT_PERIOD": "fast"}, "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD"),
    ({"beat_period": "0s"}, {}, "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD"),
    (
        {},
        {"FIL_HEARTBEAT_RECONNECT_PERIOD": "-1s"},
        "--reconnect-period / FIL_HEARTBEAT_RECONNECT_PERIOD",
    ),
    ({"jitter": "1.5"}, {}, "--jitter / FIL_HEARTBEAT_JITTER"),
    ({"jitter": "x"}, {}, "--jitter / FIL_HEARTBEAT_JITTER"),
    ({"error_log_period": "10"}, {}, "--error-log-period / FIL_HEARTBEAT_ERROR_LOG_PERIOD"),
    ({}, {"FIL_HEARTBEAT_TARGETS": "/ip4/1.2.3.4/tcp/1"}, "--target / FIL_HEARTBEAT_TARGETS"),
    ({}, {"FIL_HEARTBEAT_TARGETS": ""}, "--target / FIL_HEARTBEAT_TARGETS"),
    ({"targets": [T1, T1]}, {}, "--target / FIL_HEARTBEAT_TARGETS"),
    ({}, {"FIL_HEARTBEAT_ALERTS": "nope"}, "--alerts / FIL_HEARTBEAT_ALERTS"),
    ({"nickname": "semi;colon"}, {}, "--nickname / FIL_HEARTBEAT_NICKNAME"),
    ({"nickname": "bell\x07"}, {}, "--nickname / FIL_HEARTBEAT_NICKNAME"),
    ({}, {"FIL_HEARTBEAT_NICKNAME": "x" * 65}, "--nickname / FIL_HEARTBEAT_NICKNAME"),
    ({"head_source": "magic"}, {}, "--head-source / FIL_HEARTBEAT_HEAD_SOURCE"),
    ({"head_source": "lotus"}, {}, "--fullnode-api-info / FULLNODE_API_INFO"),
    (
        {},
        {"FIL_HEARTBEAT_HEAD_SOURCE": "lotus", "FULLNODE_API_INFO": "tok:/ip4/x/udp/1"},
        "--fullnode-api-info / FULLNODE_API_INFO",
    ),
    ({"miner_address": "f1nope"}, {}, "--miner-address / FIL_HEARTBEAT_MINER_ADDRESS"),
    (
        {},
        {"FIL_HEARTBEAT_METRICS_LISTEN": "9083"},
        "--metrics-listen / FIL_HEARTBEAT_METRICS_LISTEN",
    ),
    (
        {},
        {"FIL_HEARTBEAT_METRICS_LISTEN": "127.0.0.1:99999"},
        "--metrics-listen / FIL_HEARTBEAT_METRICS_LISTEN",
    ),
    ({}, {"FIL_HEARTBEAT_LOG_FORMAT": "xml"}, "--log-format / FIL_HEARTBEAT_LOG_FORMAT"),
    ({}, {"FIL_HEARTBEAT_ENCODING": "protobuf"}, "--encoding / FIL_HEARTBEAT_ENCODING"),
    ({"static_height": "-1"}, {}, "--static-height / FIL_HEARTBEAT_STATIC_HEIGHT"),
    ({"static_height": "ten"}, {}, "--static-height / FIL_HEARTBEAT_STATIC_HEIGHT"),
    ({"static_head": "{notacid}"}, {}, "--static-head / FIL_HEARTBEAT_STATIC_HEAD"),
    ({"block_delay": "30"}, {}, "--block-delay / FIL_HEARTBEAT_BLOCK_DELAY"),
    ({"seed": "abc"}, {}, "--seed / FIL_HEARTBEAT_SEED"),
    ({"lag_epochs": "-3"}, {}, "--lag-epochs / FIL_HEARTBEAT_LAG_EPOCHS"),
    (
        {"identity_file": ""},
        {"FIL_HEARTBEAT_IDENTITY_FILE": " "},
        "--identity-file / FIL_HEARTBEAT_IDENTITY_FILE",
    ),
]


@pytest.mark.parametrize(("flags", "env", "setting"), BAD)
def test_every_bad_value_names_its_setting(
    flags: dict[str, Any], env: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build(flags=flags, env={**BASE_ENV, **env})
    assert info.value.setting == setting
    assert str(info.value).startswith(setting)


def test_bad_toml_values_name_the_setting_too() -> None:
    with pytest.raises(ConfigError) as info:
        build(toml={"beat_period": True})
    assert info.value.setting == "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD"
    assert "config file" in info.value.message


def test_the_parser_table_covers_every_field_once() -> None:
    from dataclasses import fields

    from heartbeat.agent.config import _PARSERS, AgentConfig

    keys = [key for key, _ in _PARSERS]
    assert len(keys) == len(set(keys))
    assert set(keys) == {f.name for f in fields(AgentConfig)}
