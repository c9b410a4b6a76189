"""The shortcuts of `to_beat` and `BeatDecoder` give exactly what the full checks give.

- `to_beat` validates a beat whose head, nickname, miner address and genesis were already
  accepted in one pass (`codec._known_beat`) and builds it without the frozen dataclass's
  ``__init__`` (`beat.trusted_beat`); anything else takes the full check (`_checked_beat`).
  Property: for any map, warm or cold, `to_beat` equals `_checked_beat` (the same Beat, or the
  same reason and detail), and only values of accepted beats are remembered.
- `BeatDecoder` gives a frame equal to the last one that gave a Beat that Beat again, and does
  not walk a frame that reads as the last one walked did (`fastpath.Layout`).
  Properties: streams that repeat frames, or that vary a frame's bytes the walk does not read
  (any of them: a value, a string's body, turned into bad UTF-8 or a repeated key), cut
  anywhere, decode as the full scanner decodes them.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from heartbeat.protocol import codec
from heartbeat.protocol.beat import Beat, BeatRejected, SourceState, trusted_beat
from heartbeat.protocol.codec import encode_cbor, forget_known, to_beat
from heartbeat.protocol.fastpath import Layout, _reads, flat_map
from heartbeat.protocol.wire import BeatDecoder
from tests.test_decoder_fastpath import frames, run
from tests.test_wire import FULL, GOOD, MINERS, sent_beats

ARGS = ("{x}", 5, "al", "f01", "bafyx", 7, False, "v1", SourceState.OK, "e", 3, "mainnet")


def test_trusted_beat_is_a_beat_in_every_way() -> None:
    beat = trusted_beat(*ARGS)
    plain = Beat(*ARGS)
    assert type(beat) is Beat and beat == plain and hash(beat) == hash(plain)
    assert repr(beat) == repr(plain) and beat.source_down == plain.source_down
    assert pickle.loads(pickle.dumps(beat)) == plain
    assert dataclasses.replace(beat, height=6) == dataclasses.replace(plain, height=6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        beat.height = 6  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del beat.head


def test_trusted_beat_takes_beats_fields_in_order() -> None:
    params = list(inspect.signature(trusted_beat).parameters)
    assert params == [f.name for f in dataclasses.fields(Beat)]
    assert [getattr(trusted_beat(*ARGS), name) for name in params] == list(ARGS)


# Values for every key a beat has: valid ones, and each way the full check refuses one.
ANY = st.sampled_from([None, 0, -1, True, 1.5, "", "x", b"x", [1], {"/": "x"}])
GENESIS = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
VALUES: dict[str, st.SearchStrategy[object]] = {
    "Head": st.sampled_from([GOOD["Head"], "{}", "{x}", GENESIS, "a,b"]) | ANY,
    "Height": st.sampled_from([0, 5, 2**63 - 1, 2**63]) | ANY,
    "Nickname": st.sampled_from(["alpha", "alpha node", "x" * 65, "a\nb"]) | ANY,
    "MinerAddress": st.sampled_from([*MINERS, "f1nope", "f09223372036854775808"]) | ANY,
    "GenesisCID": st.sampled_from([GENESIS, "nope", {"/": GENESIS}, {"/": 1}]) | ANY,
    "HeadTimestamp": st.sampled_from([0, 1_700_000_000, 2**40 - 1, 2**40]) | ANY,
    "Syncing": st.sampled_from([False, True]) | ANY,
    "Version": st.sampled_from(["v1", "v" * 64, "v" * 65, "v\r\n"]) | ANY,
    "SourceState": st.sampled_from([*(s.value for s in SourceState), "OK", "lost"]) | ANY,
    "SourceError": st.sampled_from(["refused", "e" * 200, "e" * 201, "a\x1b"]) | ANY,
    "HeadSeenAt": st.sampled_from([0, 1_796_173_921_234, 2**43 - 1, 2**43]) | ANY,
    "StateNetworkName": st.sampled_from(["mainnet", "n" * 64, "n" * 65, "a\tb"]) | ANY,
    "Extra": ANY,
}


@st.composite
def beat_maps(draw: st.DrawFn) -> dict[str, object]:
    """A map of some of a beat's keys, each value valid more often than not."""
    out: dict[str, object] = {}
    for key, values in VALUES.items():
        kind = draw(st.integers(0, 9))
        if kind == 0:
            continue  # absent
        if key in GOOD and kind < 7:
            out[key] = GOOD[key]
        else:
            out[key] = draw(values)
    return out


def _outcome(result: Beat | BeatRejected) -> object:
    if isinstance(result, Beat):
        return ("beat", result, type(result))
    return ("rejected", result.reason, result.detail)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(beat_maps(), min_size=1, max_size=4), st.booleans(), st.booleans())
@example([{**GOOD, "GenesisCID": {"/": GENESIS}}, {**GOOD, "GenesisCID": GENESIS}], True, False)
def test_to_beat_equals_the_full_check(
    objs: list[dict[str, object]], legacy: bool, cold: bool
) -> None:
    if cold:
        forget_known()
    for obj in objs * 2:  # the second time round its values may be known
        expected = _outcome(codec._checked_beat(obj, legacy))
        assert _outcome(to_beat(obj, legacy)) == expected


@given(sent_beats)
def test_known_and_unknown_give_the_same_beat(beat: Beat) -> None:
    obj = {k: v for k, v in codec._wire_map(beat).items()}
    forget_known()
    cold = to_beat(obj, legacy=False)
    assert codec._known_beat(obj) == cold  # the full check remembered it all
    assert to_beat(obj, legacy=False) == cold and isinstance(cold, Beat)


def test_only_values_of_accepted_beats_are_remembered() -> None:
    forget_known()
    for bad in (
        {**GOOD, "Head": "{x}", "Nickname": "bravo"},
        {**GOOD, "Nickname": "bravo", "Version": "v\n"},
        {**GOOD, "MinerAddress": "f1nope"},
    ):
        assert isinstance(to_beat(bad, legacy=False), BeatRejected)
    assert not codec._known_nicknames and not codec._known_heads
    assert not codec._known_miners and not codec._known_genesis
    assert codec._known_beat(dict(GOOD)) is None
    beat = to_beat({**GOOD, "MinerAddress": "f001234"}, legacy=False)
    assert isinstance(beat, Beat) and beat.miner_address == "f01234"
    assert codec._known_miners == {"f001234": "f01234"}
    assert codec._known_beat({**GOOD, "MinerAddress": "f001234"}) == beat


def test_the_memory_is_bounded() -> None:
    forget_known()
    for i in range(codec._KNOWN_LIMIT + 10):
        assert isinstance(to_beat({**GOOD, "Nickname": f"n{i}"}, legacy=False), Beat)
    assert 0 < len(codec._known_nicknames) <= codec._KNOWN_LIMIT
    assert len(codec._known_heads) == 1


# --- the decoder's last frame ----------------------------------------------------------------


@st.composite
def repeating_streams(draw: st.DrawFn) -> bytes:
    """A few frames (any kind, real beats mostly) repeated in some order."""
    pool = draw(st.lists(sent_beats.map(encode_cbor) | frames, min_size=1, max_size=3))
    order = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=8))
    return b"".join(pool[i] for i in order)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    repeating_streams(),
    st.lists(st.integers(0, 1200), max_size=8),
    st.sampled_from([64, 256, 4096, 4096]),
    st.booleans(),
)
@example(encode_cbor(FULL) * 4, [], 4096, False)
@example(encode_cbor(FULL) * 4, [1, 200, 400, 401], 4096, False)
def test_repeated_frames_decode_as_the_scanner_decodes_them(
    data: bytes, cuts: list[int], max_beat: int, cold: bool
) -> None:
    if cold:
        forget_known()
    cuts = [c for c in cuts if c <= len(data)]
    assert run(data, cuts, max_beat, True) == run(data, cuts, max_beat, False)


def test_a_repeated_frame_is_the_same_beat_again() -> None:
    frame = encode_cbor(FULL)
    decoder = BeatDecoder()
    (first,) = decoder.feed(frame)
    (again,) = decoder.feed(frame)
    assert again is first
    changed = encode_cbor(dataclasses.replace(FULL, height=FULL.height + 1))
    (other,) = decoder.feed(changed)
    assert isinstance(other, Beat) and other.height == FULL.height + 1
    assert decoder.feed(frame + frame) == [first, first]  # once decoded anew, then its bytes
    held = bytearray(frame)
    assert decoder.feed(held) == [first]  # type: ignore[arg-type]
    assert len(changed) == len(frame)
    held[:] = changed  # the caller reuses its buffer: the decoder kept its own copy
    assert decoder.feed(bytes(held)) == [other]


@st.composite
def same_layout_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Frames that differ from a first one only in bytes its walk does not read, and the
    offsets where each begins (a feed per frame, as the ingest gets them)."""
    base = draw(sent_beats.map(encode_cbor) | frames.filter(lambda f: flat_map(f, 0, 4096)))
    walked = flat_map(base, 0, 4096)
    free = sorted(set(range(len(base))) - set(_reads(base))) if walked else []
    out = [base]
    for _ in range(draw(st.integers(1, 5))):
        frame = bytearray(base)
        for _ in range(draw(st.integers(0, 3)) if free else 0):
            frame[draw(st.sampled_from(free))] = draw(st.integers(0, 255))
        out.append(bytes(frame))
    starts = [sum(len(f) for f in out[:i]) for i in range(len(out))]
    return b"".join(out), starts


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(same_layout_streams(), st.lists(st.integers(0, 1200), max_size=4), st.booleans())
def test_frames_of_one_layout_decode_as_the_scanner_decodes_them(
    stream: tuple[bytes, list[int]], extra: list[int], cold: bool
) -> None:
    if cold:
        forget_known()
    data, starts = stream
    cuts = sorted({*starts[1:], *(c for c in extra if c <= len(data))})
    assert run(data, cuts, 4096, True) == run(data, cuts, 4096, False)


@settings(max_examples=300)
@given(sent_beats.map(encode_cbor), st.data())
def test_a_layout_stands_for_the_walk(frame: bytes, data: st.DataObject) -> None:
    """Any bytes it does not read changed, the walk ends where it did; a byte it reads
    changed, the layout no longer claims the frame."""
    found = flat_map(frame, 0, 4096)
    assert found is not None
    layout = Layout(frame, len(found[0]), found[1])
    reads = set(_reads(frame))
    at = data.draw(st.integers(0, len(frame) - 1))
    changed = bytearray(frame)
    changed[at] = data.draw(st.integers(0, 255).filter(lambda b: b != frame[at]))
    mine, walked = layout.flat_map(changed), flat_map(changed, 0, 4096)
    if at in reads:
        assert mine is None
    else:
        assert mine == walked  # both None when the change made bad UTF-8 or a repeated key
        assert walked is None or walked[1] == len(frame)
