"""The decoder's fast path agrees with its full scanner on every input.

`BeatDecoder(fast_path=False)` sends every CBOR frame through the full scanner (the decoder as
it was before the fast path). The property: for any stream, cut into any chunks, under any
size limit, both decoders return the same beats and the same rejects (reason and detail) from
every `feed`, hold the same number of bytes after it, and raise the same error (reason,
detail, what was decoded before it) at the same `feed` or at `finish`. The streams are built
to reach the fast path's edges: flat maps with every header width, repeated keys, bad UTF-8,
every scalar kind, a nested or tagged value anywhere, reserved bytes, cut and corrupted
frames, and real beats.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from heartbeat.protocol.fastpath import flat_map
from heartbeat.protocol.wire import (
    Beat,
    BeatDecodeError,
    BeatDecoder,
    BeatRejected,
    RejectReason,
    encode_cbor,
)
from tests.test_wire import BEAT, FULL, GOOD, sent_beats

KEYS = ["Head", "Height", "Nickname", "MinerAddress", "GenesisCID", "Version", "Syncing", "x"]
A = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"


def header(major: int, arg: int, width: int) -> bytes:
    """A CBOR header with its argument in the short form (width 0, when it fits) or in
    1, 2, 4 or 8 bytes (non-canonical widths included: the scanner accepts them)."""
    if width == 0 and arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if size >= width and arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise AssertionError(arg)


widths = st.sampled_from([0, 0, 0, 1, 2, 4, 8])
# the widths the fast path walks (strings: short, 1 or 2 length bytes); flat_frames has all
beat_widths = st.sampled_from([0, 0, 0, 0, 1, 2])

#: Values outside the fast path's shape: simple values (one- and two-byte, some malformed),
#: reserved and break bytes, and values the scanner must look inside (nested, tagged,
#: indefinite, too deep).
ODD = [
    b"\xe0",
    b"\xf3",
    b"\xf8\x10",
    b"\xf8\x20",
    b"\xfc",
    b"\xfe",
    b"\xff",
    b"\x1c",
    b"\x80",
    b"\x82\x01\x02",
    b"\xa1\x61a\x01",
    b"\xa1\x61a\x81\x81\x81\x81\x01",
    b"\xc1\x1a\x00\x00\x00\x01",
    b"\xc1\x05",
    b"\xd8\x20\x61a",
    b"\x9f\x01\xff",
    b"\x7f\x61a\xff",
    b"\x5f\x41a\xff",
]


@st.composite
def text_item(draw: st.DrawFn, pool: list[str] | None = None) -> bytes:
    if pool is not None and draw(st.booleans()):
        raw = draw(st.sampled_from(pool)).encode()
    else:
        raw = draw(st.text(max_size=30)).encode()
    if draw(st.integers(0, 15)) == 0:  # not UTF-8 (a lone byte, a surrogate, cut sequence)
        raw += draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x80"]))
    return header(3, len(raw), draw(widths)) + raw


@st.composite
def scalar_item(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return header(0, draw(st.integers(0, 2**64 - 1)), draw(widths))
    if kind == 1:
        return header(1, draw(st.integers(0, 2**64 - 1)), draw(widths))
    if kind == 2:
        raw = draw(st.binary(max_size=20))
        return header(2, len(raw), draw(widths)) + raw
    if kind == 3:
        return draw(st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7"]))
    if kind == 4:
        if draw(st.booleans()):
            return cbor2.dumps(draw(st.floats()))
        return draw(st.sampled_from([b"\xf9\x3c\x00", b"\xf9\x7e\x00", b"\xfa\x7f\x80\x00\x00"]))
    if kind in (5, 6):
        return draw(st.sampled_from(ODD))
    return draw(text_item(["{" + A + "}", A, "alpha", "f01234", "", "v1"]))


@st.composite
def flat_frames(draw: st.DrawFn) -> bytes:
    """A map that is, or nearly is, the fast path's flat shape."""
    pairs = draw(st.integers(0, 12))
    items = []
    for _ in range(pairs):
        key = draw(text_item(KEYS)) if draw(st.integers(0, 9)) else draw(scalar_item())
        items.append(key + draw(scalar_item()))
    announced = pairs + draw(st.sampled_from([0, 0, 0, 0, -1, 1])) if pairs else pairs
    return header(5, max(announced, 0), draw(st.sampled_from([0, 0, 1, 2]))) + b"".join(items)


@st.composite
def good_maps(draw: st.DrawFn) -> bytes:
    """A valid beat's pairs in some order, header widths varied, maybe a key repeated (with
    its value or another), maybe a scalar of any kind under a key of its own."""
    pairs: list[tuple[str, object]] = list({**GOOD, "Head": "{" + A + "}"}.items())
    pairs = draw(st.permutations(pairs))
    if draw(st.booleans()):
        key, value = draw(st.sampled_from(pairs))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.sampled_from([value, 7]))))
    extra = draw(st.none() | scalar_item() | st.sampled_from(ODD))
    body = b""
    for key, value in pairs:
        raw = key.encode()
        body += header(3, len(raw), draw(beat_widths)) + raw
        if isinstance(value, int):
            body += header(0, value, draw(beat_widths))
        else:
            raw = str(value).encode()
            body += header(3, len(raw), draw(beat_widths)) + raw
    count = len(pairs)
    if extra is not None:  # before, between or after the beat's pairs
        at = draw(st.sampled_from([0, len(body)]))
        body = body[:at] + b"\x65Extra" + extra + body[at:]
        count += 1
    return header(5, count, draw(st.sampled_from([0, 1]))) + body


# Weighted towards frames that decode (a framing fault ends the stream, and with it the
# chance to compare what follows): garbage and near-flat maps are a minority.
frames = st.one_of(
    good_maps(),
    good_maps(),
    good_maps(),
    flat_frames(),
    flat_frames(),
    sent_beats.map(encode_cbor),
    st.sampled_from([encode_cbor(BEAT), encode_cbor(FULL), b"\xa0", b"\x01", b"\x80"]),
    st.binary(max_size=40),
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(frames, min_size=1, max_size=6))))
    if data and draw(st.integers(0, 4)) == 0:  # corrupt a few bytes somewhere
        at = draw(st.integers(0, len(data) - 1))
        noise = draw(st.binary(min_size=1, max_size=4))
        data[at : at + len(noise)] = noise
    if data and draw(st.integers(0, 4)) == 0:  # cut the stream short
        del data[draw(st.integers(0, len(data) - 1)) :]
    return bytes(data)


def _items(items: list[Beat | BeatRejected]) -> list[object]:
    return [x if isinstance(x, Beat) else ("rejected", x.reason, x.detail) for x in items]


def run(data: bytes, cuts: list[int], max_beat: int, fast: bool) -> list[object]:
    """Every step's outcome: per feed, (items, bytes held) or the error; then finish."""
    decoder = BeatDecoder(max_beat_size=max_beat, max_buffer=2 * max_beat, fast_path=fast)
    trace: list[object] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        try:
            trace.append((_items(decoder.feed(data[start:cut])), decoder.buffered))
        except BeatDecodeError as exc:
            trace.append(("error", exc.reason, exc.detail, _items(exc.decoded)))
            return trace
        start = cut
    try:
        trace.append(("finish", _items(decoder.finish())))
    except BeatDecodeError as exc:
        trace.append(("error", exc.reason, exc.detail, _items(exc.decoded)))
    return trace


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams(),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from([8, 32, 64, 128, 256, 4096, 4096, 4096]),
)
@example(encode_cbor(FULL) * 3, [], 4096)
@example(encode_cbor(FULL) * 3, list(range(1, 600)), 4096)
@example(encode_cbor(FULL), [], len(encode_cbor(FULL)) - 1)
def test_fast_path_and_full_scanner_agree(data: bytes, cuts: list[int], max_beat: int) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    assert run(data, cuts, max_beat, True) == run(data, cuts, max_beat, False)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sent_beats, min_size=1, max_size=6), st.data())
def test_agree_on_real_beats_cut_anywhere(beats: list[Beat], data: st.DataObject) -> None:
    stream = b"".join(encode_cbor(b) for b in beats)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    fast = run(stream, cuts, 4096, True)
    assert fast == run(stream, cuts, 4096, False)
    assert [x for step in fast[:-1] for x in step[0]] == [  # type: ignore[index]
        x for x in BeatDecoder().feed(stream)
    ]


# --- which frames the fast path takes (the rest is the scanner's) ----------------------------


def test_fast_path_takes_real_beats_whole() -> None:
    for beat in (BEAT, FULL):
        frame = encode_cbor(beat)
        found = flat_map(bytearray(frame * 2), len(frame), 4096)
        assert found is not None and found[1] == 2 * len(frame)
        assert found[0] == cbor2.loads(frame)


DECLINED = [
    ("nested value", cbor2.dumps({**GOOD, "Future": [1]})),
    ("tagged value", cbor2.dumps({**GOOD, "T": cbor2.CBORTag(1, 5)})),
    ("integer key", b"\xa1\x01\x02"),
    ("repeated key", b"\xa2\x61a\x01\x61a\x02"),
    ("repeated key, other width", b"\xa2\x61a\x01\x78\x01a\x02"),
    ("bad utf-8 value", b"\xa1\x61a\x62\xff\xfe"),
    ("surrogate key", b"\xa1\x63\xed\xa0\x80\x01"),
    ("not a map", b"\x82\x01\x02"),
    ("indefinite map", b"\xbf\x61a\x01\xff"),
    ("two-byte simple value", b"\xa1\x61a\xf8\x20"),
    ("4-byte string length", b"\xa1\x7a\x00\x00\x00\x01a\x01"),
]


@pytest.mark.parametrize(("name", "frame"), DECLINED)
def test_fast_path_declines(name: str, frame: bytes) -> None:
    assert flat_map(bytearray(frame), 0, 4096) is None, name


def test_fast_path_declines_incomplete_and_oversize() -> None:
    frame = encode_cbor(FULL)
    for cut in range(len(frame)):
        assert flat_map(bytearray(frame[:cut]), 0, 4096) is None
    assert flat_map(bytearray(frame), 0, len(frame) - 1) is None
    assert flat_map(bytearray(frame), 0, len(frame)) is not None


def test_refusals_stay_the_scanners() -> None:
    """A frame the fast path declines gets exactly the scanner's verdict."""
    for frame, reason in [
        (b"\xa2\x61a\x01\x61a\x02", RejectReason.DUPLICATE_KEY),
        (b"\xa1\x61a\x62\xff\xfe", RejectReason.BAD_UTF8),
    ]:
        (item,) = BeatDecoder().feed(frame)
        assert not isinstance(item, Beat) and item.reason is reason
    with pytest.raises(BeatDecodeError) as info:
        BeatDecoder(max_beat_size=64).feed(encode_cbor(FULL))
    assert info.value.reason is RejectReason.OVERSIZE
