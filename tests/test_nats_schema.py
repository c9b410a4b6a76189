"""The stream's payload schema (aggregator/scaleout/schema.py): pure round trips and rejects."""

from __future__ import annotations

import json
from dataclasses import replace

import cbor2
import pytest

from aggregator.networks import network_key
from aggregator.scaleout import schema
from aggregator.scaleout.natsconf import pub_ack
from aggregator.scaleout.schema import StreamBeat, StreamDecodeError, StreamEvent
from heartbeat.protocol.beat import Beat, SourceState

BEAT = Beat(
    head="{bafy2bzaceabc,bafy2bzacedef}",
    height=4_000_000,
    nickname="n1",
    miner_address="f01234",
    genesis_cid="bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2",
    head_timestamp=1_700_000_000,
    syncing=False,
    version="1.2.3",
    source_state=SourceState.OK,
    head_seen_at=1_700_000_001_234,
)


def test_beat_round_trip_is_a_plain_cbor_map() -> None:
    data = schema.encode_beat("agg-a/12D3KooWA", "12D3KooWP", 1_700_000_002.5, BEAT)
    plain = cbor2.loads(data)
    assert list(plain) == ["v", "origin", "peer_id", "at", "beat"]
    assert plain["v"] == 1 and plain["beat"]["Height"] == 4_000_000
    decoded = schema.decode(data)
    assert decoded == StreamBeat("agg-a/12D3KooWA", "12D3KooWP", 1_700_000_002.5, BEAT)
    as_json = schema.to_json(decoded)
    assert as_json["type"] == "beat" and as_json["beat"]["SourceState"] == "ok"


def test_event_round_trip() -> None:
    data = schema.encode_event(
        "agg-a", "transition", 10.0, {"peer_id": "P", "state": "down", "error": None}
    )
    decoded = schema.decode(data)
    assert decoded == StreamEvent(
        "agg-a", "transition", 10.0, {"peer_id": "P", "state": "down", "error": None}
    )
    assert schema.to_json(decoded)["kind"] == "transition"


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (b"\x01\x02", "bytes after"),
        (cbor2.dumps([1]), "not a map"),
        (cbor2.dumps({"v": 2, "origin": "a", "at": 1.0, "kind": "transition"}), "version"),
        (cbor2.dumps({"v": True, "origin": "a", "at": 1.0, "kind": "transition"}), "version"),
        (cbor2.dumps({"v": 1, "origin": "", "at": 1.0, "kind": "transition"}), "origin"),
        (cbor2.dumps({"v": 1, "origin": "a", "at": "x", "kind": "transition"}), "'at'"),
        (cbor2.dumps({"v": 1, "origin": "a", "at": 1.0, "kind": "nope"}), "kind"),
        (cbor2.dumps({"v": 1, "origin": "a", "at": 1.0, "peer_id": "p", "beat": {}}), "rejected"),
        (b"\xff", "not CBOR"),
        (b"\xa0" + b"\x00" * schema.MAX_PAYLOAD, "limit"),
    ],
)
def test_decode_rejects_with_the_typed_error(payload: bytes, what: str) -> None:
    with pytest.raises(StreamDecodeError, match=what):
        schema.decode(payload)


def test_subjects_and_ids() -> None:
    assert schema.beat_subject(None, "12D3KooWP") == "fil.heartbeat.unknown.beat.12D3KooWP"
    assert schema.beat_subject("a.b *>", "p") == "fil.heartbeat.a_b___.beat.p"
    assert schema.event_subject("bafy", "alert_firing") == "fil.heartbeat.bafy.event.alert_firing"
    with pytest.raises(ValueError):
        schema.event_subject("x", "other")
    assert schema.beat_msg_id("o", "p", 1.0005) == "o:p:1001"
    assert schema.event_msg_id("transition", "p", 2.0) == "transition:p:2000"
    with pytest.raises(ValueError, match="reserved"):
        schema.encode_event("o", "transition", 1.0, {"at": 3})


@pytest.mark.parametrize("at", [1_700_000_002.5, 1.0, 1_735_000_002.123456, 0.1])
def test_the_exports_beat_encoder_writes_what_encode_beat_writes(at: float) -> None:
    encoder = schema.BeatEncoder("agg-a/12D3KooWA")
    unknown = replace(BEAT, genesis_cid=None)
    for beat in (BEAT, BEAT, unknown, BEAT):  # cached, then a peer whose network changes
        subject, data = encoder.subject_and_payload(network_key, "12D3KooWP", at, beat)
        assert data == schema.encode_beat("agg-a/12D3KooWA", "12D3KooWP", at, beat)
        assert subject == schema.beat_subject(network_key(beat.genesis_cid), "12D3KooWP")
    assert schema.decode(data) == StreamBeat("agg-a/12D3KooWA", "12D3KooWP", at, BEAT)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"stream":"S","seq":5}', True),
        # what nats-server 2.9.10 writes (recorded): read without a JSON parse
        (b'{"stream":"FIL_HEARTBEAT", "seq":1}', True),
        (b'{"stream":"FIL_HEARTBEAT", "seq":1,"duplicate": true}', False),
        (b'{"stream":"S", "seq":1,"duplicate": false}', True),  # parsed as JSON
        (b'{"stream":"S","seq":5,"duplicate":true}', False),
        (b'{"stream": "S", "seq": 5, "duplicate": true}', False),  # parsed as JSON
        (b'{"error":{"code":503,"description":"no responders"}}', None),
        (b'{"stream":"S","seq":5,"error":{"code":10060}}', None),
        (b'{"stream":"S"}', None),
        (b"", None),
        (b"not json", None),
    ],
)
def test_a_publish_ack_is_read_stored_duplicate_or_not_stored(
    body: bytes, expected: bool | None
) -> None:
    assert pub_ack(body) is expected


def test_the_servers_own_publish_acks_take_the_compact_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_json(body: bytes) -> object:
        raise AssertionError(f"parsed as JSON: {body!r}")

    monkeypatch.setattr(json, "loads", no_json)
    assert pub_ack(b'{"stream":"FIL_HEARTBEAT", "seq":12}') is True
    assert pub_ack(b'{"stream":"FIL_HEARTBEAT", "seq":12,"duplicate": true}') is False
