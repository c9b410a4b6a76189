"""Micro-benchmark of `BeatDecoder`: µs per beat by input shape and feed size, no sockets.

Cases (each a stream of CBOR beats, fed to one decoder):
- `loadgen`: the load generator's beat (the 4 required keys, GenesisCID, HeadTimestamp,
  Version), 229 bytes; `agent`: an agent's beat with the health keys too;
- feeds: one beat per `feed` (one Yamux frame per beat, the ingest's usual case), 4 KiB and
  64 KiB chunks (a buffered reader), 1-byte chunks;
- worst cases: a beat whose last value is nested (the fast path scans it all, then the full
  scanner runs), duplicate keys and bad UTF-8 (refused by cbor2, rescanned: a reject), a
  4 KiB beat of 255 tiny pairs, a 4 KiB beat of one long text, and garbage (a fresh decoder
  per input, each refused at its first byte).
- distinct frames: 1,000 beats that differ (loadgen: 1,000 nicknames; agent: HeadSeenAt),
  one after another, so no frame equals the one before (the decoder's last-frame shortcut
  never applies; the known heads, nicknames and miners do, as in a fleet on one head).
`--no-fast-path` runs the same cases through the full scanner only (the decoder before the
fast path); by default both are run and printed side by side. The validation alone
(`to_beat` on an already decoded map) is printed as a reference line, and then the stages
of one beat, each timed alone with `timeit` (CPU µs per call, min of `--repeat` runs): the
fast path's walk (or the layout compare that stands for it) and `cbor2.loads`, `to_beat` on
a fresh map with known values and with the full check, building the `Beat`, and one `feed`
of a frame new to the decoder and of the same frame again.

    .venv/bin/python bench/bench_decoder.py [--repeat 5] [--beats 20000]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heartbeat.protocol import codec
from heartbeat.protocol.beat import trusted_beat
from heartbeat.protocol.codec import to_beat
from heartbeat.protocol.fastpath import Layout, flat_map
from heartbeat.protocol.wire import (
    Beat,
    BeatDecodeError,
    BeatDecoder,
    SourceState,
    encode_cbor,
)
from heartbeat.tools.loadgen import head_for

_FAST_PATH_OPTION = "fast_path" in inspect.signature(BeatDecoder).parameters


def _decoder(fast: bool) -> BeatDecoder:
    if _FAST_PATH_OPTION:
        return BeatDecoder(fast_path=fast)  # type: ignore[call-arg, unused-ignore]
    return BeatDecoder()


def _beat_objects() -> tuple[Beat, Beat]:
    base = replace(
        head_for("healthy", 1_796_173_920.0),
        nickname="lg-healthy-12",
        miner_address="f010012",
        version="lg",
    )
    agent = replace(
        base,
        nickname="alpha node",
        miner_address="f01234",
        syncing=False,
        version="fil-heartbeat/0.9.0",
        source_state=SourceState.OK,
        head_seen_at=1_796_173_921_234,
        network_name="mainnet",
    )
    return base, agent


def _distinct(name: str, count: int = 1000) -> list[bytes]:
    """`count` different frames of the `name` beat (loadgen: nicknames; agent: HeadSeenAt)."""
    base, agent = _beat_objects()
    if name == "loadgen":
        return [encode_cbor(replace(base, nickname=f"lg-healthy-{i}")) for i in range(count)]
    seen = agent.head_seen_at or 0
    return [encode_cbor(replace(agent, head_seen_at=seen + i)) for i in range(count)]


def _beats() -> dict[str, bytes]:
    base, agent = _beat_objects()
    wire = cbor2.loads(encode_cbor(base))
    nested = cbor2.dumps({**wire, "Future": [1, 2]})
    dup = bytearray(encode_cbor(base))
    dup[0] += 1
    dup += b"\x66Height\x01"  # Height again: a DUPLICATE_KEY reject
    utf8 = bytearray(encode_cbor(replace(base, version="lx")))
    at = utf8.index(b"\x62lx")
    utf8[at + 1 : at + 3] = b"\xff\xfe"  # Version's text is not UTF-8: a BAD_UTF8 reject
    tiny = {f"k{i:02x}": i for i in range(251)}
    many = cbor2.dumps({**wire, **tiny})
    long_text = cbor2.dumps({**wire, "Extra": "x" * (4000 - len(encode_cbor(base)))})
    assert len(many) <= 4096 and len(long_text) <= 4096
    return {
        "loadgen": encode_cbor(base),
        "agent": encode_cbor(agent),
        "nested last value": nested,
        "duplicate key": bytes(dup),
        "bad utf-8": bytes(utf8),
        "255 tiny pairs": many,
        "one 4 KiB text": long_text,
    }


def _stream_run(frame: bytes, count: int, chunk: int | None, fast: bool) -> Callable[[], int]:
    stream = frame * count
    if chunk is None:  # one beat per feed
        pieces = [frame] * count
    else:
        pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]

    def run() -> int:
        decoder = _decoder(fast)
        feed = decoder.feed
        n = 0
        for piece in pieces:
            n += len(feed(piece))
        return n

    return run


def _distinct_run(frames: list[bytes], count: int, fast: bool) -> Callable[[], int]:
    pieces = (frames * (count // len(frames) + 1))[:count]

    def run() -> int:
        decoder = _decoder(fast)
        feed = decoder.feed
        n = 0
        for piece in pieces:
            n += len(feed(piece))
        return n

    return run


def _garbage_run(count: int, fast: bool) -> Callable[[], int]:
    inputs = [b"\x1c" + bytes(255), b"\xbf\x61a\x01\xff", b"\xc1\x1a\x00\x00\x00\x01"] * (
        count // 3
    )

    def run() -> int:
        n = 0
        for data in inputs:
            try:
                _decoder(fast).feed(data)
            except BeatDecodeError:
                n += 1
        return n

    return run


def _time(run: Callable[[], int], repeat: int) -> tuple[float, float]:
    """Best and median µs per item over `repeat` runs: this process's CPU time (other work
    on a shared machine then costs little but cache), GC off as the aggregator tunes it."""
    samples = []
    for _ in range(repeat):
        gc.disable()
        t0 = time.process_time()
        items = run()
        elapsed = time.process_time() - t0
        gc.enable()
        samples.append(elapsed / max(items, 1) * 1e6)
    return min(samples), statistics.median(samples)


Maker = Callable[[bool], Callable[[], int]]


def _cases(beats: dict[str, bytes], n: int) -> list[tuple[str, Maker]]:
    cases: list[tuple[str, Maker]] = []
    feeds: list[tuple[str, int | None, int]] = [
        ("one beat per feed", None, n),
        ("4 KiB feeds", 4096, n),
        ("64 KiB feeds", 65536, n),
        ("1-byte feeds", 1, max(n // 100, 50)),
    ]
    for name in ("loadgen", "agent"):
        for label, chunk, count in feeds:
            frame = beats[name]
            make = partial(_stream_run, frame, count, chunk)
            cases.append((f"{name} ({len(frame)} B), {label}", make))
    for name in ("loadgen", "agent"):
        make = partial(_distinct_run, _distinct(name), n)
        cases.append((f"{name}, distinct frames, one beat per feed", make))
    for name in ("nested last value", "duplicate key", "bad utf-8"):
        frame = beats[name]
        make = partial(_stream_run, frame, n, 4096)
        cases.append((f"worst: {name} ({len(frame)} B), 4 KiB feeds", make))
    for name in ("255 tiny pairs", "one 4 KiB text"):
        frame = beats[name]
        make = partial(_stream_run, frame, max(n // 20, 100), None)
        cases.append((f"worst: {name} ({len(frame)} B), one per feed", make))
    cases.append(("worst: garbage, a fresh decoder each", partial(_garbage_run, n)))
    return cases


def _validation_only(frame: bytes, n: int, repeat: int) -> float:
    obj = cbor2.loads(frame)

    def run() -> int:
        for _ in range(n):
            to_beat(obj, legacy=False)
        return n

    return _time(run, repeat)[0]


def _per_call(run: Callable[[], object], repeat: int, number: int = 20_000) -> float:
    """CPU µs per call: the min over `repeat` timeit runs of `number` calls each (process
    time, as `_time`: on a shared machine wall time mostly measures the other work)."""
    runs = timeit.repeat(run, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def _stages(name: str, frame: bytes, repeat: int) -> list[tuple[str, float]]:
    """One beat's decoding step by step (`_per_call` each); fresh maps (as cbor2 gives them,
    their strings' hashes not yet computed) for the validation steps."""
    frames = _distinct(name)
    maps = iter([cbor2.loads(f) for f in frames] * 400)  # more than repeat × number calls
    for obj in maps:  # the heads, nicknames and miners known, as in a running fleet
        to_beat(obj, legacy=False)
        break
    for f in frames:
        to_beat(cbor2.loads(f), legacy=False)
    walked = _per_call(lambda: flat_map(frame, 0, 4096), repeat)
    found = flat_map(frame, 0, 4096)
    assert found is not None
    layout = Layout(frame, len(found[0]), found[1])
    laid = _per_call(lambda: layout.flat_map(frame), repeat)
    loads = _per_call(lambda: cbor2.loads(frame, allow_indefinite=False), repeat)
    known = _per_call(lambda: to_beat(next(maps), legacy=False), repeat)
    checked = _per_call(lambda: codec._checked_beat(next(maps), False), repeat)
    beat = to_beat(cbor2.loads(frame), legacy=False)
    assert isinstance(beat, Beat)
    fields = [getattr(beat, f) for f in beat.__slots__]
    init = _per_call(lambda: Beat(*fields), repeat)
    trusted = _per_call(lambda: trusted_beat(*fields), repeat)
    decoder = _decoder(True)
    cycle = iter(frames * 400)
    new = _per_call(lambda: decoder.feed(next(cycle)), repeat)
    decoder.feed(frame)
    again = _per_call(lambda: decoder.feed(frame), repeat)
    return [
        ("fast path: header walk (walk + loads − loads)", walked - loads),
        ("fast path: same layout, no walk (layout + loads − loads)", laid - loads),
        ("fast path: cbor2.loads", loads),
        ("to_beat, known values (one pass)", known),
        ("to_beat, full check (a new head, nickname or miner)", checked),
        ("  of which: building it, Beat(...) (the frozen init)", init),
        ("  building it, trusted_beat(...) (as to_beat does)", trusted),
        ("feed, a frame new to the decoder: all of the above", new),
        ("feed, the same frame again (last-frame shortcut)", again),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--beats", type=int, default=20_000, help="beats per case (1-byte: /100)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-fast-path", action="store_true", help="full scanner only")
    args = p.parse_args(argv)
    n = max(100, min(args.beats, 1_000_000))
    beats = _beats()
    for frame in beats.values():  # sanity: every case decodes to beats or rejects
        assert all(isinstance(x, Beat) or x.reason for x in BeatDecoder().feed(frame * 2))
    modes = [False] if args.no_fast_path or not _FAST_PATH_OPTION else [False, True]
    header = ["case", *("full scanner" if not m else "fast path" for m in modes)]
    header += ["ratio"] if len(modes) > 1 else []
    rows = []
    for label, make in _cases(beats, n):
        figures = [_time(make(mode), args.repeat) for mode in modes]
        row = [label, *(f"{best:.2f} ({median:.2f})" for best, median in figures)]
        if len(figures) > 1:
            row.append(f"×{figures[0][0] / figures[-1][0]:.1f}")
        rows.append(row)
    validation = _validation_only(beats["loadgen"], n, args.repeat)
    print(
        f"bench_decoder beats={n} repeat={args.repeat}: CPU µs per beat (or per input), "
        "best (median) of the repeats; "
        f"python={sys.version.split()[0]} cbor2={cbor2.__name__}"
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"reference: to_beat alone on a decoded loadgen map: {validation:.2f} µs")
    for name in ("loadgen", "agent"):
        frame = beats[name]
        print(f"stages, {name} beat ({len(frame)} B), CPU µs per call, min of {args.repeat}:")
        for label, figure in _stages(name, frame, args.repeat):
            print(f"  {label:55s} {figure:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
