"""Table tests for heartbeat.agent.lotus.apiinfo."""

from __future__ import annotations

import pytest

from heartbeat.agent.lotus.apiinfo import ApiInfo, parse_api_info
from heartbeat.errors import ConfigError

TOK = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJBbGxvdyI6WyJyZWFkIl19.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("value", "miner", "expected"),
    [
        (
            f"{TOK}:/ip4/127.0.0.1/tcp/1234/http",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v1", "ws://127.0.0.1:1234/rpc/v1", TOK),
        ),
        (
            "/ip4/127.0.0.1/tcp/1234/http",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v1", "ws://127.0.0.1:1234/rpc/v1", None),
        ),
        (
            f"{TOK}:/ip4/10.0.0.2/tcp/2345/http",
            True,
            ApiInfo("http://10.0.0.2:2345/rpc/v0", "ws://10.0.0.2:2345/rpc/v0", TOK),
        ),
        (
            "/ip4/127.0.0.1/tcp/1234",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v1", "ws://127.0.0.1:1234/rpc/v1", None),
        ),
        (
            "/ip4/127.0.0.1/tcp/1234/ws",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v1", "ws://127.0.0.1:1234/rpc/v1", None),
        ),
        (
            "/dns4/lotus.example/tcp/443/wss",
            False,
            ApiInfo("https://lotus.example:443/rpc/v1", "wss://lotus.example:443/rpc/v1", None),
        ),
        (
            "/dns/lotus.example/tcp/443/https",
            False,
            ApiInfo("https://lotus.example:443/rpc/v1", "wss://lotus.example:443/rpc/v1", None),
        ),
        (
            "/dns6/lotus.example/tcp/1234/tls/http",
            False,
            ApiInfo("https://lotus.example:1234/rpc/v1", "wss://lotus.example:1234/rpc/v1", None),
        ),
        (
            "/ip6/::1/tcp/1234/http",
            False,
            ApiInfo("http://[::1]:1234/rpc/v1", "ws://[::1]:1234/rpc/v1", None),
        ),
        (
            f"{TOK}:https://lotus.example",
            False,
            ApiInfo("https://lotus.example/rpc/v1", "wss://lotus.example/rpc/v1", TOK),
        ),
        (
            "wss://lotus.example:1234",
            False,
            ApiInfo("https://lotus.example:1234/rpc/v1", "wss://lotus.example:1234/rpc/v1", None),
        ),
        (
            "http://127.0.0.1:1234/rpc/v0",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v0", "ws://127.0.0.1:1234/rpc/v0", None),
        ),
        (
            "  :/ip4/127.0.0.1/tcp/1234/http  ",
            False,
            ApiInfo("http://127.0.0.1:1234/rpc/v1", "ws://127.0.0.1:1234/rpc/v1", None),
        ),
    ],
)
def test_single_endpoint(value: str, miner: bool, expected: ApiInfo) -> None:
    assert parse_api_info(value, setting="FULLNODE_API_INFO", miner=miner) == [expected]


def test_several_endpoints_keep_their_order_and_tokens() -> None:
    value = f"{TOK}:/ip4/10.0.0.1/tcp/1234/http, /ip4/10.0.0.2/tcp/1234/http,b:https://c"
    infos = parse_api_info(value, setting="FULLNODE_API_INFO")
    assert [(i.url, i.token) for i in infos] == [
        ("http://10.0.0.1:1234/rpc/v1", TOK),
        ("http://10.0.0.2:1234/rpc/v1", None),
        ("https://c/rpc/v1", "b"),
    ]


def test_repr_hides_token() -> None:
    (info,) = parse_api_info(f"{TOK}:/ip4/127.0.0.1/tcp/1234/http", setting="X")
    assert TOK not in repr(info)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "TOKEN:",
        "/ip4/127.0.0.1",
        "/ip4/127.0.0.1/udp/1234/http",
        "/ip4/127.0.0.1/tcp/99999/http",
        "/ip4/127.0.0.1/tcp/abc/http",
        "/ip4/999.0.0.1/tcp/1234/http",
        "/ip6/zz/tcp/1234/http",
        "/unix/tmp/lotus.sock/tcp/1/http",
        "/ip4/127.0.0.1/tcp/1234/quic",
        "ftp://host",
        "localhost:1234",
        "/ip4/127.0.0.1/tcp/1234/http,,/ip4/127.0.0.1/tcp/1235/http",
        "http://host:notaport",
    ],
)
def test_bad_values_raise_config_error_with_example(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_api_info(value, setting="FULLNODE_API_INFO")
    assert info.value.setting == "FULLNODE_API_INFO"
    assert "e.g. TOKEN:/ip4/127.0.0.1/tcp/1234/http" in str(info.value)


def test_miner_error_names_miner_setting_and_example() -> None:
    with pytest.raises(ConfigError) as info:
        parse_api_info("nope", setting="MINER_API_INFO", miner=True)
    assert info.value.setting == "MINER_API_INFO"
    assert "/tcp/2345/" in str(info.value)
