"""The public page's redaction (aggregator/statuspage/privacy.py), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.statuspage.privacy import is_private_key, redact_history, redact_public


@pytest.mark.parametrize(
    ("key", "private"),
    [
        ("remote_address", True),
        ("remote_addr", True),
        ("source_error", True),
        ("listen_address", True),
        ("peer_addr", True),
        ("miner_address", False),
        ("nickname", False),
        ("source_state", False),
        ("address_book", False),
        ("error", False),
    ],
)
def test_private_keys(key: str, private: bool) -> None:
    assert is_private_key(key) is private


def test_redact_public_drops_addresses_and_errors_at_any_depth() -> None:
    node: dict[str, Any] = {
        "peer_id": "12D3KooWabc",
        "nickname": "n1",
        "miner_address": "f01234",
        "remote_address": "/ip4/10.0.0.5/tcp/4001",
        "source_error": "dial tcp 10.0.0.5:1234: connection refused",
        "source_state": "unreachable",
        "extra": {"local_address": "127.0.0.1", "keep": 1},
        "events": [{"remote_addr": "10.0.0.6:1", "at": 1.0}],
    }
    out = redact_public(node)
    assert out == {
        "peer_id": "12D3KooWabc",
        "nickname": "n1",
        "miner_address": "f01234",
        "source_state": "unreachable",
        "extra": {"keep": 1},
        "events": [{"at": 1.0}],
    }
    assert "10.0.0" not in repr(out)
    assert node["remote_address"] == "/ip4/10.0.0.5/tcp/4001"  # the input is left as it was
    assert node["extra"] == {"local_address": "127.0.0.1", "keep": 1}


def test_redact_history_drops_transition_errors() -> None:
    history: dict[str, Any] = {
        "peer_id": "p",
        "transitions": [
            {"at": 1.0, "state": "source_down", "error": "dial tcp 10.1.2.3:1234"},
            {"at": 2.0, "state": "in_consensus", "error": None},
        ],
        "heights": [{"at": 1.0, "height": 5, "lag": 0}],
    }
    out = redact_history(history)
    assert out["transitions"] == [
        {"at": 1.0, "state": "source_down"},
        {"at": 2.0, "state": "in_consensus"},
    ]
    assert out["heights"] == history["heights"]
    assert history["transitions"][0]["error"] == "dial tcp 10.1.2.3:1234"
