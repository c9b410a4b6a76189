"""`BeatDecoder`: the bounded, incremental decoder of one beat stream (either encoding).

A stream carries either a CBOR sequence (RFC 8742) of definite-length maps, this project's
format, or newline-delimited JSON objects, go-filecoin's legacy format; the first byte tells
which (``{`` is JSON: no CBOR map starts with 0x7B).

`BeatDecoder` is a sans-I/O state machine: the caller feeds bytes and gets beats back.
- A frame that is well formed but whose content is invalid comes back as a `BeatRejected`
  value: the stream stays in sync.
- A framing fault raises `BeatDecodeError`: the stream is beyond repair and must be reset.
  Every later `feed` raises the same error.
- At end of stream the caller calls `finish`: a final JSON line without its newline is
  decoded; a frame cut short raises `BeatDecodeError` with reason ``truncated``.

Memory is bounded before buffering: the decoder never holds more than ``max_buffer`` bytes,
and a frame that will be larger than ``max_beat_size`` is refused as soon as a header says so.
CBOR framing is checked by a small scanner here (definite lengths only, no tags, depth at most
`MAX_DEPTH`); cbor2 then decodes exactly the bytes of one item. A frame of the common flat shape
(text keys, scalar values) takes the fast path first (`heartbeat.protocol.fastpath`: a walk
over its headers, then one `cbor2.loads`); anything else, and every refusal, is the scanner's.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from heartbeat.protocol.beat import (
    MAX_DEPTH,
    Beat,
    BeatDecodeError,
    BeatRejected,
    RejectReason,
)
from heartbeat.protocol.codec import cbor_item_beat, json_line_beat, reject, to_beat
from heartbeat.protocol.fastpath import Layout, flat_map

__all__ = ["BeatDecoder"]

# header length (initial byte included) by CBOR additional information 24..27
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


class BeatDecoder:
    """Incremental, bounded decoder of one beat stream (either encoding)."""

    __slots__ = (
        "_allow_json",
        "_buf",
        "_declined",
        "_error",
        "_fast",
        "_invalid",
        "_last",
        "_last_beat",
        "_layout",
        "_max_beat",
        "_max_buffer",
        "_outstanding",
        "_pos",
        "_relayout",
        "_stack",
        "encoding",
    )

    def __init__(
        self,
        max_beat_size: int = 4096,
        max_buffer: int = 65536,
        *,
        allow_json: bool = True,
        fast_path: bool = True,
    ) -> None:
        """``fast_path=False`` sends every CBOR frame through the full scanner (tests, bench:
        both give the same beats, rejects and errors)."""
        if not 0 < max_beat_size <= max_buffer:
            raise ValueError("need 0 < max_beat_size <= max_buffer")
        self._max_beat = max_beat_size
        self._max_buffer = max_buffer
        self._allow_json = allow_json
        self._fast = fast_path
        self._declined = False  # the fast path declined the frame at the buffer's start
        self.encoding: str | None = None  # "cbor" | "json" once the first byte arrived
        self._buf = bytearray()
        self._error: BeatDecodeError | None = None
        # CBOR scan state of the frame at the start of _buf; JSON: where to look for "\n"
        self._pos = 0
        self._stack: list[list[Any]] = []  # [items left, is_map, keys seen]
        self._outstanding = 0  # items announced by open containers, not yet started
        self._invalid: tuple[RejectReason, str] | None = None
        # the fast path's last frame that gave a Beat, and that Beat: an agent resends the
        # same bytes until its head changes, and the same bytes decode to the same Beat
        self._last = b""
        self._last_beat: Beat | None = None
        self._layout: Layout | None = None  # where the walk went in a recent frame at 0
        self._relayout = True  # a miss builds a new layout; not twice in a row without a hit

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than max_buffer)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Beat | BeatRejected]:
        """Take the next bytes of the stream; return the beats (and rejects) they complete."""
        if self._error is not None:
            raise self._error
        out: list[Beat | BeatRejected] = []
        if not data:
            return out
        if self.encoding is None:
            if data[0] == 0x7B:  # "{"
                if not self._allow_json:
                    self._fail(RejectReason.UNSUPPORTED_ENCODING, "legacy json disabled", out)
                self.encoding = "json"
            else:
                self.encoding = "cbor"
        offset = 0
        if self._fast and not self._buf and self.encoding == "cbor":
            # nothing buffered (so no frame half scanned): whole flat frames straight from
            # `data`, without copying them into the buffer; only the rest is buffered
            offset = self._feed_direct(data, out)
            if offset == len(data):
                return out
            self._declined = True
        step = self._feed_json if self.encoding == "json" else self._feed_cbor
        view = memoryview(data)
        try:
            while offset < len(data):
                room = self._max_buffer - len(self._buf)
                if room <= 0:  # cannot happen while max_beat_size <= max_buffer
                    raise BeatDecodeError(RejectReason.BUFFER_OVERFLOW, "backlog")
                self._buf += view[offset : offset + room]
                offset += room
                step(out)
        except BeatDecodeError as exc:
            self._fail(exc.reason, exc.detail, out)
        return out

    def finish(self) -> list[Beat | BeatRejected]:
        """The stream ended: decode what is left, or raise `BeatDecodeError` (``truncated``).

        A legacy JSON stream may end its last beat without the newline: that beat counts. A
        CBOR frame cut short, or a JSON line that does not parse, is a truncated stream.
        Every later call (`feed` or `finish`) raises the same error; a clean end returns [].
        """
        if self._error is not None:
            raise self._error
        out: list[Beat | BeatRejected] = []
        buf = self._buf
        if self.encoding == "json":
            if buf.strip(b" \t\r"):
                try:
                    out.append(json_line_beat(bytes(buf)))
                except BeatDecodeError as exc:
                    cut = exc.reason is RejectReason.MALFORMED_JSON
                    reason = RejectReason.TRUNCATED if cut else exc.reason
                    self._fail(reason, f"json line, {len(buf)} bytes", out)
        elif buf or self._stack:
            self._fail(RejectReason.TRUNCATED, f"cbor item, {len(buf)} bytes", out)
        self._error = BeatDecodeError(RejectReason.TRUNCATED, "stream already finished")
        self._buf = bytearray()
        return out

    def _fail(self, reason: RejectReason, detail: str, out: list[Beat | BeatRejected]) -> None:
        error = BeatDecodeError(reason, detail)
        error.decoded = out
        self._error = error
        self._buf = bytearray()
        raise error

    # -- JSON lines ------------------------------------------------------------------------

    def _feed_json(self, out: list[Beat | BeatRejected]) -> None:
        buf = self._buf
        start = 0
        max_beat = self._max_beat
        while True:
            newline = buf.find(b"\n", self._pos)
            if newline < 0:
                if len(buf) - start > max_beat:
                    raise BeatDecodeError(RejectReason.OVERSIZE, "json line")
                self._pos = len(buf)
                break
            if newline - start > max_beat:
                raise BeatDecodeError(RejectReason.OVERSIZE, "json line")
            line = bytes(buf[start:newline])
            start = self._pos = newline + 1
            if line.strip(b" \t\r"):
                out.append(json_line_beat(line))
        if start:
            del buf[:start]
            self._pos -= start

    # -- CBOR sequence ---------------------------------------------------------------------

    def _feed_cbor(self, out: list[Beat | BeatRejected]) -> None:
        buf = self._buf
        start = 0
        fast = self._fast and not self._declined
        self._declined = False
        max_beat = self._max_beat
        while True:
            # the fast path only at a frame's first byte: a frame it declines is then scanned
            # from where the scanner stops (it retries only while the scanner could not
            # take even the frame's first header)
            if fast and self._pos == start and start < len(buf) and not self._stack:
                last = self._last
                if last and buf.startswith(last, start):
                    out.append(self._last_beat)  # type: ignore[arg-type]
                    start = self._pos = start + len(last)
                    continue
                found = flat_map(buf, start, max_beat)
                if found is not None:
                    obj, end = found
                    beat = to_beat(obj, False)
                    if type(beat) is Beat:
                        self._last = bytes(buf[start:end])
                        self._last_beat = beat
                    out.append(beat)
                    start = self._pos = end
                    continue
            fast = self._fast
            end = self._scan(buf, start)
            if end < 0:
                break
            invalid = self._invalid
            if invalid is not None:
                out.append(reject(*invalid))
                self._invalid = None
            else:
                out.append(cbor_item_beat(bytes(buf[start:end])))
            start = self._pos = end
        if start:
            del buf[:start]
            self._pos -= start

    def _feed_direct(self, data: bytes, out: list[Beat | BeatRejected]) -> int:
        """Decode the flat frames at the start of `data` (fast path only); bytes used.

        A frame equal to the last one that gave a Beat is that Beat again (the walk reads
        only the frame's own bytes, so the same bytes give the same end and the same map);
        a frame at offset 0 that reads as the last one did (`Layout`) is not walked again."""
        start = 0
        end = len(data)
        max_beat = self._max_beat
        last = self._last
        same = data.startswith if type(data) is bytes else None
        while start < end:
            if last and same is not None and same(last, start):
                out.append(self._last_beat)  # type: ignore[arg-type]
                start += len(last)
                continue
            layout = self._layout if start == 0 else None
            found = None if layout is None else layout.flat_map(data)
            if found is not None:
                self._relayout = True
            else:
                found = flat_map(data, start, max_beat)
                if found is None:
                    break
                if start == 0:  # building one costs about a walk: every other miss at most
                    if self._relayout:
                        self._layout = Layout(data, len(found[0]), found[1])
                    self._relayout = not self._relayout
            obj, stop = found
            beat = to_beat(obj, False)
            if type(beat) is Beat:
                whole = same is not None and stop - start == end  # immutable, all of it
                last = self._last = data if whole else bytes(data[start:stop])
                self._last_beat = beat
            out.append(beat)
            start = stop
        return start

    def _scan(self, buf: bytearray, start: int) -> int:
        """Advance over the frame beginning at ``start``; its end offset, or -1 if incomplete.

        Resumable: the position and the open containers persist between calls, so feeding one
        byte at a time costs no rescans. Raises BeatDecodeError on a framing fault; a
        well-formed but invalid item (bad UTF-8, duplicate key) is noted in ``_invalid``.
        Each item goes through three steps: its header (`_header`), its body (`_body`), and
        its place in the open containers (`_account`).
        """
        pos = self._pos
        stack = self._stack
        end = len(buf)
        limit = start + self._max_beat
        while pos < end:
            # items still to come after this one take at least one byte each
            pending = self._outstanding - 1 if stack else 0
            header = self._header(buf, pos, end, limit - pending)
            if header is None:
                break
            major, info, arg, after = header
            top = stack[-1] if stack else None
            is_key = top is not None and top[1] and not top[0] & 1
            body = self._body(buf, major, info, arg, after, end, limit - pending, is_key)
            if body is None:
                break
            key, children, pos = body
            if pos + pending > limit:
                raise BeatDecodeError(RejectReason.OVERSIZE, "cbor item")
            if self._account(top, is_key, key, major, children):
                self._pos = pos
                return pos
        self._pos = pos
        return -1

    @staticmethod
    def _header(buf: bytearray, pos: int, end: int, limit: int) -> tuple[int, int, int, int] | None:
        """Major type, additional info, argument and the offset after the header; None if cut."""
        initial = buf[pos]
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            return major, info, info, pos + 1
        if info < 28:
            after = pos + 1 + _ARG_BYTES[info]
            if after > limit:
                raise BeatDecodeError(RejectReason.OVERSIZE, "cbor item")
            if after > end:
                return None
            return major, info, int.from_bytes(buf[pos + 1 : after], "big"), after
        if info == 31:
            if major in (0, 1, 6):
                raise BeatDecodeError(RejectReason.MALFORMED_CBOR, "reserved info 31")
            raise BeatDecodeError(RejectReason.INDEFINITE_LENGTH, "cbor item")
        raise BeatDecodeError(RejectReason.MALFORMED_CBOR, "reserved info 28-30")

    def _body(
        self,
        buf: bytearray,
        major: int,
        info: int,
        arg: int,
        after: int,
        end: int,
        limit: int,
        is_key: bool,
    ) -> tuple[object, int, int] | None:
        """The item's key (for duplicate detection), its child count and its end; None if cut."""
        if major == 3 or major == 2:
            return self._string(buf, major == 3, after, after + arg, end, limit, is_key)
        if major < 2:
            return (major, arg), 0, after
        if major == 6:
            raise BeatDecodeError(RejectReason.TAG, "cbor tag")
        if major == 7:
            if info == 24 and arg < 32:
                raise BeatDecodeError(RejectReason.MALFORMED_CBOR, "bad simple value")
            return (7, info, arg), 0, after
        # 4 array, 5 map
        if len(self._stack) >= MAX_DEPTH:
            raise BeatDecodeError(RejectReason.TOO_DEEP, "cbor nesting")
        children = arg if major == 4 else 2 * arg
        if after + children > limit:
            raise BeatDecodeError(RejectReason.OVERSIZE, "cbor container")
        return None, children, after

    def _string(
        self,
        buf: bytearray,
        text: bool,
        after: int,
        body_end: int,
        end: int,
        limit: int,
        is_key: bool,
    ) -> tuple[object, int, int] | None:
        """A text or byte string: its value as a key (text always, for its UTF-8 check)."""
        if body_end > limit:
            raise BeatDecodeError(RejectReason.OVERSIZE, "cbor string")
        if body_end > end:
            return None
        key: object = None
        if text:
            try:
                key = buf[after:body_end].decode("utf-8")
            except UnicodeDecodeError:
                self._note(RejectReason.BAD_UTF8, "cbor text")
        elif is_key:
            key = bytes(buf[after:body_end])
        return key, 0, body_end

    def _account(
        self, top: list[Any] | None, is_key: bool, key: object, major: int, children: int
    ) -> bool:
        """Count the item against its container, open its own; True when the frame is done."""
        stack = self._stack
        if top is not None:
            if is_key and key is not None:
                seen = top[2]
                if key in seen:
                    self._note(RejectReason.DUPLICATE_KEY, "cbor map")
                seen.add(key)
            top[0] -= 1
            self._outstanding -= 1
        if children:
            stack.append([children, major == 5, set()])
            self._outstanding += children
            return False
        while stack and not stack[-1][0]:
            stack.pop()
        return not stack

    def _note(self, reason: RejectReason, detail: str) -> None:
        if self._invalid is None:
            self._invalid = (reason, detail)
