"""Coverage-guided fuzzing of heartbeat.protocol.wire.BeatDecoder with atheris (libFuzzer).

Usage (see docs/FUZZING.md):
    .venv/bin/python bench/fuzz_decoder.py -max_total_time=60 [-max_len=4096] [corpus_dir]

Each input is split in two: a few bytes choose the chunk sizes, the rest is the stream. The
harness checks that
- feed() and finish() raise nothing but BeatDecodeError and return only Beat / BeatRejected
  values;
- the decoder never buffers more than max_buffer, nor more than one partial frame;
- the chunked stream decodes exactly as the whole stream does (same beats, same rejects,
  same error);
- every decoded beat survives a re-encode / decode round trip in both encodings;
- the decoder's fast path and its full scanner alone (`fast_path=False`) agree: same beats,
  rejects and error, whole and chunked.
"""

from __future__ import annotations

import sys

try:
    import atheris
except ModuleNotFoundError:  # not a project dependency (docs/FUZZING.md)
    sys.exit("fuzz_decoder: atheris is not installed: .venv/bin/pip install atheris")

with atheris.instrument_imports():
    from heartbeat.protocol.wire import (
        Beat,
        BeatDecodeError,
        BeatDecoder,
        BeatRejected,
        encode_cbor,
        encode_json,
    )

MAX_BEAT = 512
MAX_BUFFER = 1024


def _summary(items: list[Beat | BeatRejected]) -> list[object]:
    return [item if isinstance(item, Beat) else item.reason for item in items]


def _run(stream: bytes, chunks: list[int], fast: bool = True) -> tuple[list[object], object]:
    decoder = BeatDecoder(max_beat_size=MAX_BEAT, max_buffer=MAX_BUFFER, fast_path=fast)
    out: list[Beat | BeatRejected] = []
    start = 0
    try:
        for size in [*chunks, len(stream)]:
            piece = stream[start : start + size]
            start += len(piece)
            result = decoder.feed(piece)
            for item in result:
                assert isinstance(item, Beat | BeatRejected), type(item)
            out += result
            assert decoder.buffered <= MAX_BUFFER
            assert decoder.buffered < MAX_BEAT + 9
            if start >= len(stream):
                break
        out += decoder.finish()  # the end of stream: a cut frame is "truncated"
        assert decoder.buffered == 0
    except BeatDecodeError as exc:
        return _summary([*out, *exc.decoded]), exc.reason
    return _summary(out), None


def _round_trip(beat: Beat) -> None:
    for encode in (encode_cbor, encode_json):
        again = BeatDecoder(max_beat_size=4096).feed(encode(beat))
        assert again == [beat], (beat, again)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunks = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = _run(stream, [])
    chunked = _run(stream, chunks)
    assert whole == chunked, (whole, chunked)
    scanned = _run(stream, chunks, fast=False)
    assert scanned == chunked, (scanned, chunked)
    for item in whole[0]:
        if isinstance(item, Beat):
            _round_trip(item)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
