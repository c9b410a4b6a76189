"""docs/PROTOCOL.md says what the code does: its keys, states, examples and sizes."""

from __future__ import annotations

import re
from pathlib import Path

import cbor2

from heartbeat.protocol.beat import (
    MAX_NETWORK_NAME_LENGTH,
    MAX_NICKNAME_LENGTH,
    MAX_SOURCE_ERROR_LENGTH,
    MAX_VERSION_LENGTH,
    PROTOCOL_ID,
    SourceState,
)
from heartbeat.protocol.tipset import MAX_CID_LENGTH, MAX_HEAD_CIDS
from heartbeat.protocol.wire import Beat, BeatDecoder, encode_cbor, encode_json

DOC = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else len(DOC)]


def json_examples() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", DOC, flags=re.S)


def test_every_key_in_the_table_is_a_wire_key_and_back() -> None:
    documented = re.findall(r"^\| `([A-Za-z]+)` \| (yes|no) \|", section("Keys"), flags=re.M)
    full = Beat(
        head="{}",
        height=0,
        nickname="",
        miner_address="",
        genesis_cid="bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2",
        head_timestamp=1,
        syncing=False,
        version="v",
        source_state=SourceState.OK,
        source_error="e",
        head_seen_at=1,
        network_name="n",
    )
    sent = BeatDecoder().feed(encode_cbor(full))
    assert sent == [full]
    wire_keys = list(cbor2.loads(encode_cbor(full)))
    assert [key for key, _ in documented] == wire_keys
    required = {key for key, need in documented if need == "yes"}
    assert required == {"Head", "Height", "Nickname", "MinerAddress"}


def test_source_states_table_is_the_enum() -> None:
    health = section("The health keys (SourceState, SourceError, HeadSeenAt, StateNetworkName)")
    rows = re.findall(r"^\| `([a-z_]+)` \|", health, flags=re.M)
    assert sorted(rows) == sorted(state.value for state in SourceState)
    assert len(rows) == len(set(rows))


def test_limits_and_protocol_id_as_documented() -> None:
    keys = section("Keys")
    assert f"At most {MAX_HEAD_CIDS} CIDs" in keys
    assert f"at most {MAX_CID_LENGTH} characters" in keys
    assert f"at most {MAX_NICKNAME_LENGTH} characters" in keys
    assert f"at most {MAX_VERSION_LENGTH} printable characters" in keys
    assert f"at most {MAX_SOURCE_ERROR_LENGTH} printable characters" in keys
    assert f"at most {MAX_NETWORK_NAME_LENGTH} printable characters" in keys
    assert f"**`{PROTOCOL_ID}`**" in DOC


def test_examples_decode_and_are_what_the_encoder_writes() -> None:
    examples = json_examples()
    assert len(examples) == 2
    for text in examples:
        beats = BeatDecoder().feed(text.encode() + b"\n")
        assert len(beats) == 1 and isinstance(beats[0], Beat), beats
        beat = beats[0]
        assert encode_json(beat) == text.encode() + b"\n"
        cbor = encode_cbor(beat)
        assert f"({len(cbor)} bytes" in DOC or f"CBOR, {len(cbor)}\nbytes" in DOC
    healthy = BeatDecoder().feed(examples[0].encode() + b"\n")[0]
    assert isinstance(healthy, Beat) and healthy.source_state is SourceState.OK
    assert encode_cbor(healthy).hex().startswith("ab" + "64" + b"Head".hex() + "787f")
    empty = BeatDecoder().feed(examples[1].encode() + b"\n")[0]
    assert isinstance(empty, Beat)
    assert (empty.head, empty.height, empty.source_down) == ("{}", 0, True)
