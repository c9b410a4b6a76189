"""The beat codec and the bounded stream decoder, fed without any socket."""

from __future__ import annotations

import json
import re

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heartbeat.errors import HeartbeatError
from heartbeat.protocol.tipset import format_head
from heartbeat.protocol.wire import (
    MAX_HEAD_SEEN_AT,
    MAX_HEAD_TIMESTAMP,
    MAX_HEIGHT,
    PROTOCOL_ALIASES,
    PROTOCOL_ID,
    Beat,
    BeatDecodeError,
    BeatDecoder,
    BeatError,
    BeatRejected,
    RejectReason,
    SourceState,
    encode_cbor,
    encode_json,
    validate_nickname,
)

A = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
B = "bafy2bzaceb3qxbzw6tqeyb2bmxmswjmqtcw7jx6mlxa54kdgbyrvuyw5jv3x2"
GENESIS = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
F1 = "f1abjxfbp274xpdqcpuaykwkfb43omjotacm2p3za"

BEAT = Beat(f"{{{A},{B}}}", 3_000_000, "alpha", "f01234")
FULL = Beat(f"{{{A},{B}}}", 3_000_000, "alpha node", "f01234", GENESIS, 1_700_000_000, False, "v1")
GOOD = {"Head": f"{{{A}}}", "Height": 5, "Nickname": "alpha", "MinerAddress": "t01000"}


def decode_all(
    data: bytes, chunks: list[int] | None = None, max_beat_size: int | None = None
) -> list[object]:
    decoder = BeatDecoder() if max_beat_size is None else BeatDecoder(max_beat_size)
    out: list[object] = []
    if chunks is None:
        out += decoder.feed(data)
    else:
        start = 0
        for cut in [*sorted(chunks), len(data)]:
            out += decoder.feed(data[start:cut])
            start = cut
            assert decoder.buffered <= decoder._max_buffer
    assert decoder.buffered == 0
    out += decoder.finish()  # a clean end: nothing left over
    return out


def cbor_of(obj: object) -> bytes:
    return cbor2.dumps(obj)


def json_of(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- strategies -------------------------------------------------------------------------------

cids = st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=8, max_size=60).map(lambda s: "b" + s)
heads = st.one_of(
    st.lists(cids, max_size=5, unique=True).map(format_head),
    st.lists(cids, max_size=5, unique=True).map(lambda c: "{ " + " ".join(c) + " }"),
)
nicknames = st.text(
    st.one_of(st.characters(categories=("L", "Nd")), st.sampled_from(" -_.:@")), max_size=64
).filter(validate_nickname)
F4 = "f410fkkld55ioe7qg24wvt7fu6pbknb56ht7pt4zamxa"
# as sent -> as decoded
MINERS = {
    "": "",
    "<empty>": "",
    "f01234": "f01234",
    "f001234": "f01234",
    "t00": "t00",
    "t01000": "t01000",
    F1: F1,
    F4: F4,
}
miners = st.sampled_from(sorted(MINERS))
sent_beats = st.builds(
    Beat,
    head=heads,
    height=st.integers(0, MAX_HEIGHT),
    nickname=nicknames,
    miner_address=miners,
    genesis_cid=st.none() | cids,
    head_timestamp=st.none() | st.integers(0, MAX_HEAD_TIMESTAMP),
    syncing=st.none() | st.booleans(),
    version=st.none()
    | st.text(st.characters(categories=("L", "N", "P", "Zs")), max_size=64).filter(str.isprintable),
    source_state=st.none() | st.sampled_from(SourceState),
    source_error=st.none()
    | st.text(st.characters(categories=("L", "N", "Zs")), max_size=200).filter(str.isprintable),
    head_seen_at=st.none() | st.integers(0, MAX_HEAD_SEEN_AT),
    network_name=st.none() | st.sampled_from(["mainnet", "calibrationnet", "devnet-1"]),
)


def decoded_form(beat: Beat) -> Beat:
    """What the decoder gives for a beat as sent: the miner address normalised."""
    return Beat(
        beat.head,
        beat.height,
        beat.nickname,
        MINERS[beat.miner_address],
        beat.genesis_cid,
        beat.head_timestamp,
        beat.syncing,
        beat.version,
        beat.source_state,
        beat.source_error,
        beat.head_seen_at,
        beat.network_name,
    )


# --- constants and types ----------------------------------------------------------------------


def test_protocol_ids() -> None:
    assert PROTOCOL_ID == "fil/heartbeat/1.0.0"
    assert PROTOCOL_ALIASES == ("/fil/heartbeat/1.0.0",)


def test_reject_reasons_are_bounded_labels() -> None:
    values = [reason.value for reason in RejectReason]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", value) for value in values)
    oversize: str = RejectReason.OVERSIZE  # a StrEnum member is a str
    assert oversize == "oversize"


def test_error_hierarchy() -> None:
    assert issubclass(BeatError, HeartbeatError)
    assert issubclass(BeatDecodeError, BeatError)
    assert issubclass(BeatRejected, BeatError)
    rejected = BeatRejected(RejectReason.MISSING_KEY, "key=Head")
    assert (rejected.reason, rejected.detail) == (RejectReason.MISSING_KEY, "key=Head")


def test_decoder_refuses_beat_size_above_buffer() -> None:
    with pytest.raises(ValueError):
        BeatDecoder(max_beat_size=10, max_buffer=5)


# --- encoders ---------------------------------------------------------------------------------


def test_encode_cbor_omits_unset_optionals() -> None:
    data = encode_cbor(BEAT)
    assert data[0] == 0xA4  # definite-length map of 4 pairs
    assert cbor2.loads(data) == {
        "Head": BEAT.head,
        "Height": 3_000_000,
        "Nickname": "alpha",
        "MinerAddress": "f01234",
    }


def test_encode_cbor_full() -> None:
    data = encode_cbor(FULL)
    assert data[0] == 0xA8
    assert cbor2.loads(data)["GenesisCID"] == GENESIS
    assert cbor2.loads(data)["Syncing"] is False


def test_encode_json_is_legacy_line() -> None:
    data = encode_json(FULL)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    obj = json.loads(data)
    assert obj["GenesisCID"] == {"/": GENESIS}
    assert list(obj)[:4] == ["Head", "Height", "Nickname", "MinerAddress"]
    assert "GenesisCID" not in json.loads(encode_json(BEAT))


# --- round trips and chunking -------------------------------------------------------------------


@given(sent_beats)
def test_cbor_round_trip(beat: Beat) -> None:
    assert decode_all(encode_cbor(beat)) == [decoded_form(beat)]


@given(sent_beats)
def test_json_round_trip(beat: Beat) -> None:
    assert decode_all(encode_json(beat)) == [decoded_form(beat)]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(sent_beats, min_size=1, max_size=8),
    st.sampled_from([encode_cbor, encode_json]),
    st.data(),
)
def test_split_anywhere_gives_same_beats(
    blist: list[Beat], encode: object, data: st.DataObject
) -> None:
    stream = b"".join(encode(b) for b in blist)  # type: ignore[operator]
    whole = decode_all(stream)
    assert whole == [decoded_form(b) for b in blist]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_all(stream, cuts) == whole


@pytest.mark.parametrize("encode", [encode_cbor, encode_json])
def test_one_byte_chunks(encode: object) -> None:
    stream = b"".join(encode(b) for b in [BEAT, FULL, BEAT])  # type: ignore[operator]
    assert decode_all(stream, list(range(len(stream)))) == [BEAT, FULL, BEAT]


@pytest.mark.parametrize("encode", [encode_cbor, encode_json])
def test_many_beats_back_to_back(encode: object) -> None:
    many = [Beat(BEAT.head, h, "n", "") for h in range(2000)]
    stream = b"".join(encode(b) for b in many)  # type: ignore[operator]
    assert len(stream) > 65536  # more than one buffer's worth in one feed
    assert decode_all(stream) == many


def _sniffed(decoder: BeatDecoder) -> tuple[str | None, int]:
    # read through a call so mypy does not keep the "encoding is None" narrowing across feed()
    return (decoder.encoding, decoder.buffered)


def test_encoding_is_sniffed_from_first_byte() -> None:
    decoder = BeatDecoder()
    assert decoder.encoding is None
    assert decoder.feed(b"") == []
    assert decoder.encoding is None
    decoder.feed(encode_json(BEAT)[:5])
    assert _sniffed(decoder) == ("json", 5)
    cbor = BeatDecoder()
    cbor.feed(encode_cbor(BEAT)[:5])
    assert _sniffed(cbor) == ("cbor", 5)


def test_json_disabled() -> None:
    decoder = BeatDecoder(allow_json=False)
    with pytest.raises(BeatDecodeError) as info:
        decoder.feed(encode_json(BEAT))
    assert info.value.reason is RejectReason.UNSUPPORTED_ENCODING
    with pytest.raises(BeatDecodeError):
        decoder.feed(encode_cbor(BEAT))
    assert BeatDecoder(allow_json=False).feed(encode_cbor(BEAT)) == [BEAT]


def test_legacy_go_filecoin_line() -> None:
    line = (
        b'{"Head":"{ ' + A.encode() + b" " + B.encode() + b' }","Height":123,'
        b'"Nickname":"alpha","MinerAddress":"t01234","GenesisCID":{"/":"'
        + GENESIS.encode()
        + b'"}}\n'
    )
    assert decode_all(line) == [Beat(f"{{ {A} {B} }}", 123, "alpha", "t01234", GENESIS)]


def test_json_blank_lines_and_crlf_tolerated() -> None:
    line = json.dumps(GOOD).encode()
    assert len(decode_all(line + b"\r\n\n  \n" + line + b"\n")) == 2


@pytest.mark.parametrize(
    ("variant", "normalised"),
    [("", ""), ("<empty>", ""), ("empty", ""), ("[UNDEFINED_ADDRESS]", ""), ("f00042", "f042")],
)
def test_miner_address_normalised(variant: str, normalised: str) -> None:
    (beat,) = decode_all(cbor_of({**GOOD, "MinerAddress": variant}))
    assert isinstance(beat, Beat) and beat.miner_address == normalised


def test_null_optionals_are_absent() -> None:
    obj = {**GOOD, "GenesisCID": None, "HeadTimestamp": None, "Syncing": None, "Version": None}
    (beat,) = decode_all(cbor_of(obj))
    assert beat == Beat(str(GOOD["Head"]), 5, "alpha", "t01000")


def test_unknown_keys_ignored_but_counted() -> None:
    obj = {**GOOD, "Future": {"nested": [1, 2.5, None]}, "Extra": "x" * 100}
    assert isinstance(decode_all(cbor_of(obj))[0], Beat)
    assert isinstance(decode_all(json_of(obj))[0], Beat)
    big = {**GOOD, "Extra": "x" * 4000}
    with pytest.raises(BeatDecodeError) as info:
        decode_all(cbor_of(big))
    assert info.value.reason is RejectReason.OVERSIZE


# --- rejected beats (values; the stream stays in sync) ----------------------------------------

REJECTS = [
    ([1, 2], RejectReason.NOT_A_MAP),
    ("text", RejectReason.NOT_A_MAP),
    ({k: v for k, v in GOOD.items() if k != "Head"}, RejectReason.MISSING_KEY),
    ({k: v for k, v in GOOD.items() if k != "MinerAddress"}, RejectReason.MISSING_KEY),
    ({**GOOD, "Head": 5}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Height": True}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Height": 5.0}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Height": "5"}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Height": -1}, RejectReason.OUT_OF_RANGE),
    ({**GOOD, "Height": 2**63}, RejectReason.OUT_OF_RANGE),
    ({**GOOD, "Nickname": None}, RejectReason.WRONG_TYPE),
    ({**GOOD, "MinerAddress": 1234}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Head": "a,b"}, RejectReason.BAD_HEAD),
    ({**GOOD, "Head": "{x}"}, RejectReason.BAD_HEAD),
    ({**GOOD, "MinerAddress": "f1nope"}, RejectReason.BAD_ADDRESS),
    ({**GOOD, "MinerAddress": "f09223372036854775808"}, RejectReason.BAD_ADDRESS),
    ({**GOOD, "Nickname": "x" * 65}, RejectReason.BAD_NICKNAME),
    ({**GOOD, "Nickname": "bad\nname"}, RejectReason.BAD_NICKNAME),
    ({**GOOD, "Nickname": "a\x1b[31m"}, RejectReason.BAD_NICKNAME),
    ({**GOOD, "GenesisCID": 7}, RejectReason.WRONG_TYPE),
    ({**GOOD, "GenesisCID": "nope"}, RejectReason.BAD_GENESIS),
    ({**GOOD, "HeadTimestamp": -5}, RejectReason.OUT_OF_RANGE),
    ({**GOOD, "HeadTimestamp": 2**40}, RejectReason.OUT_OF_RANGE),
    ({**GOOD, "HeadTimestamp": False}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Syncing": 1}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Version": 1}, RejectReason.WRONG_TYPE),
    ({**GOOD, "Version": "v" * 65}, RejectReason.BAD_VERSION),
    ({**GOOD, "Version": "v1\r\n"}, RejectReason.BAD_VERSION),
]


@pytest.mark.parametrize(("obj", "reason"), REJECTS)
@pytest.mark.parametrize("encode", [cbor_of, json_of])
def test_bad_beat_between_good_ones(obj: object, reason: RejectReason, encode: object) -> None:
    good = encode(GOOD)  # type: ignore[operator]
    stream = good + encode(obj) + good  # type: ignore[operator]
    first, bad, last = decode_all(stream)
    assert isinstance(first, Beat) and isinstance(last, Beat)
    assert isinstance(bad, BeatRejected) and bad.reason is reason, bad


def test_json_genesis_forms() -> None:
    (beat,) = decode_all(json_of({**GOOD, "GenesisCID": {"/": GENESIS}}))
    assert isinstance(beat, Beat)
    assert beat.genesis_cid == GENESIS
    (bad,) = decode_all(json_of({**GOOD, "GenesisCID": {"/": GENESIS, "x": 1}}))
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.WRONG_TYPE
    (cbor_map,) = decode_all(cbor_of({**GOOD, "GenesisCID": {"/": GENESIS}}))
    assert isinstance(cbor_map, BeatRejected) and cbor_map.reason is RejectReason.WRONG_TYPE


def _text(s: str) -> bytes:
    raw = s.encode()
    assert len(raw) < 24
    return bytes([0x60 | len(raw)]) + raw


def test_cbor_duplicate_key_rejected() -> None:
    body = b"".join(_text(k) + cbor_of(v) for k, v in GOOD.items())
    dup = bytes([0xA5]) + body + _text("Height") + cbor_of(6)
    first, bad, last = decode_all(cbor_of(GOOD) + dup + cbor_of(GOOD))
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.DUPLICATE_KEY
    assert isinstance(first, Beat) and isinstance(last, Beat)


def test_cbor_duplicate_key_in_other_header_width_rejected() -> None:
    body = b"".join(_text(k) + cbor_of(v) for k, v in GOOD.items())
    # "Height" again, its length in a one-byte argument instead of the short form
    dup = bytes([0xA5]) + body + b"\x78\x06Height" + cbor_of(6)
    (bad,) = decode_all(dup)
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.DUPLICATE_KEY


def test_json_duplicate_key_rejected() -> None:
    line = b'{"Head":"{}","Height":1,"Height":2,"Nickname":"","MinerAddress":""}\n'
    good = json_of(GOOD)
    first, bad, last = decode_all(good + line + good)
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.DUPLICATE_KEY
    assert isinstance(first, Beat) and isinstance(last, Beat)


def test_bad_utf8_rejected() -> None:
    body = b"".join(_text(k) + cbor_of(v) for k, v in GOOD.items() if k != "Nickname")
    bad_cbor = bytes([0xA4]) + body + _text("Nickname") + b"\x62\xff\xfe"
    first, bad, last = decode_all(cbor_of(GOOD) + bad_cbor + cbor_of(GOOD))
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.BAD_UTF8
    assert isinstance(first, Beat) and isinstance(last, Beat)
    bad_json = b'{"Head":"{}","Height":1,"Nickname":"\xff","MinerAddress":""}\n'
    first, bad, last = decode_all(json_of(GOOD) + bad_json + json_of(GOOD))
    assert isinstance(bad, BeatRejected) and bad.reason is RejectReason.BAD_UTF8
    assert isinstance(first, Beat) and isinstance(last, Beat)


# --- framing faults (raised; the stream must be reset) ---------------------------------------

FAULTS = [
    (b"\xbf", RejectReason.INDEFINITE_LENGTH),  # indefinite map
    (b"\xa1\x9f", RejectReason.INDEFINITE_LENGTH),
    (b"\xa1\x7f", RejectReason.INDEFINITE_LENGTH),
    (b"\xff", RejectReason.INDEFINITE_LENGTH),  # stray break
    (b"\x1f", RejectReason.MALFORMED_CBOR),
    (b"\xc1\x1a\x00\x00\x00\x01", RejectReason.TAG),
    (b"\xa1\x61a\xd8\x2a\x40", RejectReason.TAG),
    (b"\x1c", RejectReason.MALFORMED_CBOR),
    (b"\xf8\x10", RejectReason.MALFORMED_CBOR),  # two-byte simple value < 32
    (b"\xa1\x61a\x81\x81\x81\x81\x01", RejectReason.TOO_DEEP),
    (b"\x7a\x00\x10\x00\x00", RejectReason.OVERSIZE),  # 1 MiB text string header
    (b"\xbb"[:0] + b"\xbb\x00\x00\x00\x00\x00\x0f\x42\x40", RejectReason.OVERSIZE),  # 1e6 pairs
    (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", RejectReason.OVERSIZE),
    (b'{"Head": nope}\n', RejectReason.MALFORMED_JSON),
    (b'{"Height": NaN}\n', RejectReason.MALFORMED_JSON),
    (b'{"Height": -Infinity}\n', RejectReason.MALFORMED_JSON),
    (b'{"a":1}\n{"a":' + b"[" * 1500 + b"]" * 1500 + b"}\n", RejectReason.TOO_DEEP),
    (b"{" + b" " * 5000, RejectReason.OVERSIZE),
    (b'{"a":"' + b"x" * 5000 + b'"}\n', RejectReason.OVERSIZE),
]


@pytest.mark.parametrize(("data", "reason"), FAULTS)
def test_framing_faults_raise(data: bytes, reason: RejectReason) -> None:
    decoder = BeatDecoder(max_beat_size=4096, max_buffer=8192)
    with pytest.raises(BeatDecodeError) as info:
        decoder.feed(data)
    assert info.value.reason is reason
    assert decoder.buffered == 0
    with pytest.raises(BeatDecodeError):  # poisoned: the stream must be reset
        decoder.feed(encode_cbor(BEAT))


def test_oversize_refused_at_the_header_before_the_body() -> None:
    decoder = BeatDecoder(max_beat_size=512, max_buffer=1024)
    decoder.feed(b"\xa1")
    decoder.feed(b"\x61k")
    assert decoder.buffered == 3
    with pytest.raises(BeatDecodeError) as info:
        decoder.feed(b"\x79\x02\x00")  # a 512-byte string can no longer fit
    assert info.value.reason is RejectReason.OVERSIZE


def test_exact_size_limit() -> None:
    size = len(encode_cbor(FULL))
    assert decode_all(encode_cbor(FULL), max_beat_size=size) == [FULL]
    with pytest.raises(BeatDecodeError):
        decode_all(encode_cbor(FULL), max_beat_size=size - 1)
    line = encode_json(FULL)
    assert decode_all(line, max_beat_size=len(line) - 1) == [FULL]  # newline not counted
    with pytest.raises(BeatDecodeError):
        decode_all(line, max_beat_size=len(line) - 2)


def test_decode_error_keeps_what_was_decoded_before() -> None:
    decoder = BeatDecoder()
    with pytest.raises(BeatDecodeError) as info:
        decoder.feed(encode_cbor(BEAT) + encode_cbor(FULL) + b"\xbf")
    assert info.value.decoded == [BEAT, FULL]


def test_trailing_garbage_is_not_ignored() -> None:
    # cbor2.loads would return the first item and drop the rest: the decoder must not
    beat, rest = BeatDecoder().feed(encode_cbor(BEAT) + b"\x01")
    assert beat == BEAT
    assert isinstance(rest, BeatRejected) and rest.reason is RejectReason.NOT_A_MAP


# --- garbage ----------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
        | st.builds(cbor2.CBORTag, st.integers(0, 2**16), inner)
    ),
    max_leaves=12,
)


def _feed_garbage(data: bytes, cuts: list[int], max_beat: int, max_buffer: int) -> None:
    decoder = BeatDecoder(max_beat_size=max_beat, max_buffer=max_buffer)
    start = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            result = decoder.feed(data[start:cut])
            start = cut
            assert all(isinstance(item, Beat | BeatRejected) for item in result)
            assert decoder.buffered <= max_buffer
            assert decoder.buffered < max_beat + 9  # a partial frame, never more
    except BeatDecodeError as exc:
        assert isinstance(exc.reason, RejectReason)
        assert decoder.buffered == 0


@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_garbage_bytes_raise_only_decode_error(data: bytes, cuts: list[int]) -> None:
    _feed_garbage(data, cuts, 128, 256)


@given(st.lists(cbor_values, max_size=4), st.lists(st.integers(0, 400), max_size=6))
def test_garbage_cbor_raises_only_decode_error(values: list[object], cuts: list[int]) -> None:
    data = b"".join(cbor2.dumps(v) for v in values)
    _feed_garbage(data, cuts, 256, 512)


@given(st.lists(cbor_values, max_size=4), st.lists(st.integers(0, 400), max_size=6))
def test_garbage_json_raises_only_decode_error(values: list[object], cuts: list[int]) -> None:
    lines = [json.dumps(v, default=repr).encode() for v in values]
    _feed_garbage(b'{"x":1}\n' + b"\n".join(lines), cuts, 256, 512)


@given(st.binary(min_size=1, max_size=40), st.integers(0, 200))
def test_corrupted_beat_raises_only_decode_error(noise: bytes, at: int) -> None:
    data = bytearray(encode_cbor(FULL) * 2)
    at %= len(data)
    data[at : at + len(noise)] = noise
    _feed_garbage(bytes(data), [at], 4096, 8192)


# --- end of stream ----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [encode_cbor, encode_json])
def test_stream_ending_inside_a_beat_is_truncated(encode: object) -> None:
    one = encode(BEAT)  # type: ignore[operator]
    stream = one + one
    for cut in range(len(one) + 1, len(stream) - (encode is encode_json)):
        decoder = BeatDecoder()
        assert decoder.feed(stream[:cut]) == [BEAT]
        with pytest.raises(BeatDecodeError) as info:
            decoder.finish()
        assert info.value.reason is RejectReason.TRUNCATED
        with pytest.raises(BeatDecodeError):  # the decoder stays failed
            decoder.feed(one)


def test_truncated_is_a_bounded_label() -> None:
    assert RejectReason("truncated") is RejectReason.TRUNCATED


def test_clean_end_and_empty_stream_finish_quietly() -> None:
    decoder = BeatDecoder()
    assert decoder.finish() == []
    decoder = BeatDecoder()
    assert decoder.feed(encode_cbor(BEAT)) == [BEAT]
    assert decoder.finish() == []
    with pytest.raises(BeatDecodeError):  # nothing may follow the end
        decoder.feed(encode_cbor(BEAT))


def test_final_json_beat_without_newline_is_decoded() -> None:
    stream = encode_json(BEAT) + encode_json(FULL).rstrip(b"\n")
    for chunks in (None, list(range(len(stream)))):
        decoder = BeatDecoder()
        out: list[object] = []
        if chunks is None:
            out += decoder.feed(stream)
        else:
            for i in chunks:
                out += decoder.feed(stream[i : i + 1])
        assert out == [BEAT]
        assert decoder.finish() == [FULL]


def test_final_json_line_invalid_content_is_a_reject_not_truncation() -> None:
    decoder = BeatDecoder()
    decoder.feed(json.dumps({**GOOD, "Height": -1}).encode())
    (item,) = decoder.finish()
    assert isinstance(item, BeatRejected)
    assert item.reason is RejectReason.OUT_OF_RANGE


def test_final_json_whitespace_is_a_clean_end() -> None:
    decoder = BeatDecoder()
    assert decoder.feed(encode_json(BEAT) + b" \r") == [BEAT]
    assert decoder.finish() == []


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sent_beats, min_size=1, max_size=4), st.data())
def test_cbor_cut_anywhere_is_whole_beats_or_truncated(
    blist: list[Beat], data: st.DataObject
) -> None:
    frames = [encode_cbor(b) for b in blist]
    stream = b"".join(frames)
    cut = data.draw(st.integers(1, len(stream)))
    boundaries = {sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)}
    decoder = BeatDecoder()
    out = decoder.feed(stream[:cut])
    if cut in boundaries:
        assert decoder.finish() == []
        assert len(out) == sum(1 for b in boundaries if 0 < b <= cut)
    else:
        with pytest.raises(BeatDecodeError) as info:
            decoder.finish()
        assert info.value.reason is RejectReason.TRUNCATED


def test_bare_cid_head_accepted_as_one_block_key() -> None:
    for encode in (cbor_of, json_of):
        (beat,) = decode_all(encode({**GOOD, "Head": A}))
        assert isinstance(beat, Beat)
        assert beat.head == A
    for head in (f"{A} {B}", f"{A},{B}", "bafy", f"[{A}]"):
        (item,) = decode_all(cbor_of({**GOOD, "Head": head}))
        assert isinstance(item, BeatRejected)
        assert item.reason is RejectReason.BAD_HEAD


# --- agent health keys (SourceState, SourceError, HeadSeenAt, StateNetworkName) ---------------

HEALTH = {
    **GOOD,
    "Head": "{}",
    "Height": 0,
    "SourceState": "unauthorized",
    "SourceError": "unauthorized: check the token and its permission",
    "HeadSeenAt": 1_700_000_000_123,
    "StateNetworkName": "mainnet",
}


@pytest.mark.parametrize("encode", [cbor_of, json_of])
def test_health_keys_decode_in_both_encodings(encode: object) -> None:
    assert callable(encode)
    [beat] = decode_all(encode(HEALTH))
    assert isinstance(beat, Beat)
    assert beat.source_state is SourceState.UNAUTHORIZED
    assert beat.source_down
    assert beat.source_error == HEALTH["SourceError"]
    assert beat.head_seen_at == 1_700_000_000_123
    assert beat.network_name == "mainnet"
    assert (beat.head, beat.height) == ("{}", 0)


def test_health_keys_are_optional_and_old_beats_unchanged() -> None:
    [beat] = decode_all(json_of(GOOD))
    assert isinstance(beat, Beat)
    assert (beat.source_state, beat.source_error, beat.head_seen_at, beat.network_name) == (
        None,
        None,
        None,
        None,
    )
    assert not beat.source_down
    # an old encoder's output is byte-identical: the new keys are omitted when None
    assert b"Source" not in encode_cbor(BEAT) and b"Source" not in encode_json(BEAT)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("SourceState", "confused", RejectReason.OUT_OF_RANGE),
        ("SourceState", 1, RejectReason.WRONG_TYPE),
        ("SourceError", "x" * 201, RejectReason.OUT_OF_RANGE),
        ("SourceError", "line\nbreak", RejectReason.OUT_OF_RANGE),
        ("SourceError", 5, RejectReason.WRONG_TYPE),
        ("HeadSeenAt", -1, RejectReason.OUT_OF_RANGE),
        ("HeadSeenAt", MAX_HEAD_SEEN_AT + 1, RejectReason.OUT_OF_RANGE),
        ("HeadSeenAt", 1.5, RejectReason.WRONG_TYPE),
        ("HeadSeenAt", True, RejectReason.WRONG_TYPE),
        ("StateNetworkName", "n" * 65, RejectReason.OUT_OF_RANGE),
        ("StateNetworkName", ["mainnet"], RejectReason.WRONG_TYPE),
    ],
)
def test_bad_health_keys_rejected(key: str, value: object, reason: RejectReason) -> None:
    [cbor_result] = decode_all(cbor_of({**HEALTH, key: value}))
    assert isinstance(cbor_result, BeatRejected)
    assert cbor_result.reason is reason
    assert key in cbor_result.detail


def test_health_keys_reach_a_receiver_that_ignores_them() -> None:
    """A receiver that knows only the original keys (go-filecoin's aggregator decoded JSON into
    a struct and dropped unknown fields) still gets the original beat from a new agent."""
    line = encode_json(
        Beat("{}", 0, "alpha", "", source_state=SourceState.NO_HEAD, head_seen_at=None)
    )
    old_view = json.loads(line)
    assert {k: old_view[k] for k in ("Head", "Height", "Nickname", "MinerAddress")} == {
        "Head": "{}",
        "Height": 0,
        "Nickname": "alpha",
        "MinerAddress": "",
    }
    assert old_view["SourceState"] == "no_head"
