"""The fast path of `BeatDecoder`: a flat beat decoded by cbor2's C decoder in one call.

Nearly every beat on the wire is one shape: a definite-length map (fewer than 256 pairs) of
definite-length text keys to scalar values (text or byte strings shorter than 64 KiB,
integers, false/true/null/undefined, floats). For that shape the frame's end follows from
the headers alone, so `flat_map` walks only the headers (one table lookup per key and per
value, skipping string bodies by their lengths) and then has `cbor2.loads` decode exactly
those bytes.

It accepts only what the full scanner (`BeatDecoder._scan`) would accept as the same object,
and leaves everything else to it: any other initial byte (nested containers, tags,
indefinite lengths, reserved or two-byte simple values), a frame not yet complete in the
buffer, a frame longer than the size limit, and any frame cbor2 refuses (bad UTF-8) or that
repeats a key (fewer entries in the dict than pairs in the header). The full scanner then
raises or rejects exactly as it always has; the fast path never decides a refusal. The scan
reads only bytes already in the buffer (the caller's bound) and stops within the buffer, so
it buffers nothing and costs at most one header walk per frame. Pure: no I/O, no clock.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import cbor2

__all__ = ["Layout", "flat_map"]

# Size of an item from its initial byte: 1..24 the whole item (header and body), _LEN1 / _LEN2
# a string whose length follows in 1 / 2 bytes, 0 not in the fast path.
_LEN1 = 254
_LEN2 = 255


def _table(keys: bool) -> bytes:
    size = bytearray(256)
    for major in (3,) if keys else (2, 3):  # byte and text strings
        base = major << 5
        for n in range(24):
            size[base + n] = 1 + n
        size[base + 24] = _LEN1
        size[base + 25] = _LEN2
    if not keys:
        for base in (0x00, 0x20):  # unsigned and negative integers, every width
            for n in range(24):
                size[base + n] = 1
            for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
                size[base + info] = 1 + width
        for initial in (0xF4, 0xF5, 0xF6, 0xF7):  # false, true, null, undefined
            size[initial] = 1
        size[0xF9], size[0xFA], size[0xFB] = 3, 5, 9  # half, single, double floats
    return bytes(size)


_KEY_SIZE = _table(keys=True)
_VALUE_SIZE = _table(keys=False)


def flat_map(
    buf: bytes | bytearray, start: int, max_size: int
) -> tuple[dict[Any, Any], int] | None:
    """The flat map at ``buf[start:]`` and its end offset; None to leave it to the scanner.

    None when the frame is not the flat shape, is not complete in ``buf``, is longer than
    ``max_size`` bytes, or is one cbor2 refuses or whose keys repeat.
    """
    key_size, value_size = _KEY_SIZE, _VALUE_SIZE
    try:  # an IndexError: a header or a length runs past the bytes buffered so far
        initial = buf[start]
        if 0xA0 <= initial <= 0xB7:
            pairs, pos = initial - 0xA0, start + 1
        elif initial == 0xB8:
            pairs, pos = buf[start + 1], start + 2
        else:
            return None
        for _ in range(pairs):
            size = key_size[buf[pos]]
            if size < _LEN1:
                if not size:
                    return None
                pos += size
            elif size == _LEN1:
                pos += 2 + buf[pos + 1]
            else:
                pos += 3 + (buf[pos + 1] << 8 | buf[pos + 2])
            size = value_size[buf[pos]]
            if size < _LEN1:
                if not size:
                    return None
                pos += size
            elif size == _LEN1:
                pos += 2 + buf[pos + 1]
            else:
                pos += 3 + (buf[pos + 1] << 8 | buf[pos + 2])
    except IndexError:
        return None
    if pos > len(buf) or pos - start > max_size:
        return None
    return _decode(buf, start, pairs, pos)


def _decode(
    buf: bytes | bytearray, start: int, pairs: int, end: int
) -> tuple[dict[Any, Any], int] | None:
    """The walked frame ``buf[start:end]`` decoded; None when cbor2 refuses it or a key
    repeats (the scanner then says why)."""
    try:
        frame = buf if start == 0 and end == len(buf) else buf[start:end]
        obj = cbor2.loads(frame, allow_indefinite=False)  # the walk let none through anyway
    except cbor2.CBORDecodeError:  # bad UTF-8: the scanner finds it and says so
        return None
    if len(obj) != pairs:  # a repeated key: the scanner rejects it
        return None
    return obj, end


def _reads(buf: bytes | bytearray) -> list[int]:
    """The offsets of every byte `flat_map` reads in the frame at ``buf[0:]``, one it took:
    the map's header, each key's and value's initial byte, and the length bytes of strings
    whose length follows the initial byte. Nothing else decides where it goes next."""
    initial = buf[0]
    reads, pos = ([0], 1) if initial != 0xB8 else ([0, 1], 2)
    pairs = initial - 0xA0 if initial != 0xB8 else buf[1]
    for table in (_KEY_SIZE, _VALUE_SIZE) * pairs:
        size = table[buf[pos]]
        reads.append(pos)
        if size < _LEN1:
            pos += size
        elif size == _LEN1:
            reads.append(pos + 1)
            pos += 2 + buf[pos + 1]
        else:
            reads += (pos + 1, pos + 2)
            pos += 3 + (buf[pos + 1] << 8 | buf[pos + 2])
    return reads


class Layout:
    """Where `flat_map` went in one frame it took: the bytes it read, at their offsets.

    A stream's next beat mostly differs from its last in values only (a new head of the
    same length, a new height of the same width): the same bytes at the same offsets. The
    walk reads nothing else, so it would go the same way and end at the same offset; one
    C-level gather (`operator.itemgetter`) and compare stands for it. Pure.
    """

    __slots__ = ("_end", "_expected", "_pairs", "_read")

    def __init__(self, frame: bytes | bytearray, pairs: int, end: int) -> None:
        """``frame[:end]``: a frame `flat_map` took whole at offset 0, of ``pairs`` pairs."""
        offsets = _reads(frame)
        self._read = itemgetter(*offsets)
        self._expected = self._read(frame)  # read now: `frame` is not kept
        self._pairs = pairs
        self._end = end

    def flat_map(self, buf: bytes | bytearray) -> tuple[dict[Any, Any], int] | None:
        """``flat_map(buf, 0, max_size)`` (the limit the layout's frame was taken under)
        when the frame at ``buf[0:]`` reads as this layout's; None to ask `flat_map`."""
        end = self._end
        if len(buf) < end or self._read(buf) != self._expected:
            return None
        try:  # as `_decode`, inlined: this is the common beat's path
            obj = cbor2.loads(buf if end == len(buf) else buf[:end], allow_indefinite=False)
        except cbor2.CBORDecodeError:
            return None
        return (obj, end) if len(obj) == self._pairs else None
