"""The worker link's pure core: frames, events, counters, the per-worker peer ledger."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.config import build_config, config_mapping
from aggregator.counters import IngestCounters
from aggregator.events import BeatAccepted, PeerConnected, PeerDisconnected
from aggregator.worklink import (
    FrameDecoder,
    LinkError,
    MergedCounters,
    PeerLedger,
    counters_from_wire,
    counters_to_wire,
    encode_frame,
    event_from_wire,
    event_to_wire,
)
from heartbeat.errors import ConfigError
from heartbeat.protocol.wire import Beat

PEER = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
OTHER = "12D3KooWDDb1xfQ8Rdwq6PLwBETb3buqF7yZsuryTJQUkRjS6p69"

_text = st.text(max_size=40)
beats = st.builds(
    Beat,
    head=_text,
    height=st.integers(0, 2**63 - 1),
    nickname=_text,
    miner_address=_text,
    genesis_cid=st.none() | _text,
    head_timestamp=st.none() | st.integers(0, 2**40),
    syncing=st.none() | st.booleans(),
    version=st.none() | _text,
)
events = st.one_of(
    st.builds(BeatAccepted, st.just(PEER), beats, st.floats(0, 2e9)),
    st.builds(PeerConnected, st.just(PEER), _text, st.floats(0, 2e9)),
    st.builds(PeerDisconnected, st.just(OTHER), st.floats(0, 2e9)),
)


@given(st.lists(events, max_size=20), st.integers(1, 7))
def test_events_round_trip_through_frames_fed_in_pieces(batch: list[Any], step: int) -> None:
    data = encode_frame(["hello", 1, 42]) + encode_frame(
        ["events", [event_to_wire(e) for e in batch]]
    )
    decoder = FrameDecoder()
    messages: list[list[Any]] = []
    for i in range(0, len(data), step):
        messages.extend(decoder.feed(data[i : i + step]))
    assert decoder.buffered == 0
    assert messages[0] == ["hello", 1, 42]
    assert [event_from_wire(item) for item in messages[1][1]] == batch


def test_oversize_and_garbage_frames_are_link_errors() -> None:
    with pytest.raises(LinkError, match="exceeds"):
        FrameDecoder(max_frame=100).feed((1000).to_bytes(4, "big"))
    body = b"\xff\xff"  # a break code where an item should start
    with pytest.raises(LinkError, match="undecodable"):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    body = cbor2.dumps({"not": "a list"})
    with pytest.raises(LinkError, match="not a message"):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    # A partial frame is kept, not an error.
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(["ready"])[:-1]) == []
    assert decoder.buffered > 0


@pytest.mark.parametrize(
    "item",
    [
        [],
        "beat",
        [9, PEER, 1.0],
        [1, PEER],  # disconnected without its time
        [1, 7, 1.0],  # peer id not text
        [0, PEER, None, 1.0],  # remote address not text
        [2, PEER, 1.0, "{a}", True, "n", "", None, None, None, None],  # bool height
        [2, PEER, 1.0, "{a}", "10", "n", "", None, None, None, None],  # text height
        [2, PEER, 1.0, "{a}", 10, "n", "", None, None, "yes", None],  # syncing not bool
        [2, PEER, "now", "{a}", 10, "n", "", None, None, None, None],  # time not a number
    ],
)
def test_malformed_events_are_link_errors(item: Any) -> None:
    with pytest.raises(LinkError):
        event_from_wire(item)


def _counters(**values: Any) -> IngestCounters:
    c = IngestCounters()
    for key, value in values.items():
        setattr(c, key, Counter(value) if isinstance(value, dict) else value)
    return c


def test_counters_round_trip_and_bad_counters_are_refused() -> None:
    c = _counters(
        beats_received=5,
        beats_accepted=4,
        connections=3,
        decode_errors={"malformed_cbor": 2},
        peers_refused={"fleet_full": 1},
    )
    assert counters_from_wire(cbor2.loads(cbor2.dumps(counters_to_wire(c)))) == c
    for bad in (
        [1, 2],
        {"beats_received": "5"},
        {"beats_received": True},
        {"decode_errors": {"oversize": "2"}},
        {"decode_errors": [1]},
    ):
        with pytest.raises(LinkError):
            counters_from_wire(bad)


def test_merged_counters_stay_monotonic_when_a_worker_restarts() -> None:
    local = _counters(beats_accepted=10, connections=2, decode_errors={"oversize": 1})
    merged = MergedCounters(local)
    merged.update(
        1,
        _counters(
            beats_accepted=7,
            connections=5,
            streams_open=5,
            decode_errors={"oversize": 2, "malformed_cbor": 3},
        ),
    )
    assert merged.beats_accepted == 17 and merged.connections == 7 and merged.streams_open == 5
    assert merged.decode_errors == Counter({"oversize": 3, "malformed_cbor": 3})
    merged.retire(1)  # the worker died: its totals stay, its connections are gone
    assert merged.beats_accepted == 17 and merged.connections == 2 and merged.streams_open == 0
    merged.update(1, _counters(beats_accepted=1, connections=1))  # restarted, counts from 0
    assert merged.beats_accepted == 18 and merged.connections == 3
    assert merged.decode_errors == Counter({"oversize": 3, "malformed_cbor": 3})
    local.beats_accepted += 1  # worker 0's own counters are read live
    assert merged.total().beats_accepted == 19
    merged.retire(5)  # an unknown worker: nothing happens
    assert merged.beats_accepted == 19


def test_ledger_gives_a_dead_workers_disconnects_once_per_connection() -> None:
    ledger = PeerLedger()
    ledger.record(1, PeerConnected(PEER, "1.2.3.4", 1.0))
    ledger.record(1, PeerConnected(PEER, "1.2.3.4", 2.0))  # a second connection
    ledger.record(1, PeerConnected(OTHER, "1.2.3.5", 2.0))
    ledger.record(2, PeerConnected(OTHER, "1.2.3.5", 3.0))  # moved to worker 2 meanwhile
    ledger.record(1, PeerDisconnected(OTHER, 4.0))
    ledger.record(1, PeerDisconnected(OTHER, 4.0))  # more disconnects than connects: ignored
    assert ledger.connected(1) == 2 and ledger.connected(2) == 1
    assert list(ledger.forget(1, 9.0)) == [PeerDisconnected(PEER, 9.0)] * 2
    assert list(ledger.forget(1, 9.0)) == []
    assert ledger.connected(2) == 1


def test_config_mapping_rebuilds_the_same_config(tmp_path: Path) -> None:
    config = build_config(
        {
            "workers": "3",
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "[::1]:0",
            "allowlist_file": str(tmp_path / "allow"),
            "gc_threshold": "1,2,3",
            "max_streams_total": "99",
            "rate_limit": "0.5",
        },
        state_dir=tmp_path,
    )
    mapping = config_mapping(config)
    assert build_config(file=cbor2.loads(cbor2.dumps(mapping))) == config
    assert "alerts" not in config_mapping(config, exclude=frozenset({"alerts"}))


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_bad_worker_count_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"workers": value})
    assert info.value.setting == "--workers / FIL_HEARTBEAT_AGGREGATOR_WORKERS"
