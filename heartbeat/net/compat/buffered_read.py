"""A buffered receive path: one socket receive serves every Noise and Yamux frame in it.

Upstream bug: py-libp2p 0.8.1's `Yamux.handle_incoming` (libp2p/stream_muxer/yamux/
yamux.py) reads each frame's 12-byte header and then its body through `read_exactly`
on the `SecureSession`, which reads through msgio (libp2p/io/msgio.py: the 2-byte Noise
length, then the body, each its own `receive_some` through `TrioTCPStream`'s lock) and
decrypts one message; every body read runs in a `fail_after`, every frame takes
`streams_lock` (and `window_lock`), and the reader is woken once per frame. Profiled
under a flood of one beat per write (docs/CAPACITY.md, section 11): 49 % of the
aggregator's samples in `handle_incoming`, 33 % in `read_exactly`, 10 % in lock entry.
Retired by: upstream reading into a buffer and demultiplexing every complete frame of
it (as go-yamux's and js-libp2p's readers do).

Seam: `HeartbeatYamux` (the muxer class `muxer_opt` carries, `yamux_muxer`) runs its
frame reader as `_fil_read_frames`; this fix sets it to `buffered_read_frames`, and
`uninstall()` restores py-libp2p's loop. Per receive of up to 64 KiB from the socket:
every complete Noise message is decrypted in one synchronous pass (one ChaCha20-Poly1305
object per pass, noise's own nonce counter advanced), every complete Yamux frame is
demultiplexed in one synchronous pass, each stream touched gets its bytes and its
reader is woken once, and the control frames the pass produced (ACKs, RSTs, pongs) go
out in one write. No task switch, lock or cancel scope per frame: the pass has no
`await`, and py-libp2p 0.8.1's critical sections under `streams_lock`/`window_lock` are
synchronous after their acquire (`Yamux.close` clears every stream after its GO_AWAY
write), so cooperative scheduling keeps them exclusive (the gate pins yamux.py). A
DATA frame whose body is incomplete keeps py-libp2p's deadline
(`PY_YAMUX_DATA_READ_TIMEOUT`, 60 s): the connection is closed when it expires.
Inbound streams are `BufferedYamuxStream`s, whose `read(n)` takes buffered bytes
without the two locks and returns the Yamux credit only when it is due (the
`yamux_credit` rule; every read when that fix is off; its threshold is py-libp2p's
`_grow_threshold`, whose two PY_YAMUX_* settings are read once when the stream opens,
not on every read). Connections that are not Noise over TCP run py-libp2p's loop.

Past a buffer: `BufferedYamuxStream.pump(sink)` (the project's `Channel.pump`) has the
pass hand each DATA payload of the stream straight to a synchronous sink, the
aggregator's decoder and ingest, so a beat costs no wake-up of the stream's task at all;
that task wakes only to return the credit when it is due, for the stream's end and when
the sink stops (what the sink raises is kept and raised there, never in the reader).
The receive itself is one wait for readability and one `os.read` on the socket: trio's
`receive_some` first tries a receive that nearly always fails with one frame per receive
(an exception per receive) and, after a successful one, yields again.

On by default (`CompatOptions.buffered_read`; the benchmarks' `--py-libp2p-read` is the
"before"). One difference from py-libp2p, made for the pass: a RST also closes the
stream's receive side, so the bytes that came before it are read first and the reset is
reported after them. py-libp2p reports a RST before any buffered byte (dropping them); its
reader switches tasks several times per frame, so a reader nearly always took the bytes
between the two frames, but a pass applies both with no switch: the aggregator's refusal
of a stream (protocol echo, then RST, docs/CAPACITY.md section 11) failed the dialer's
negotiation about 1 run in 3 before this. A reset stream gets no Yamux credit back.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.io.trio import TrioTCPStream
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as y

from heartbeat.net.compat import yamux_credit

__all__ = ["RECEIVE_SIZE", "BufferedYamuxStream", "install", "installed", "uninstall"]

NAME = "buffered_read"
log = logging.getLogger(__name__)

#: One socket receive: up to this many bytes (a full Noise message is 65,537).
RECEIVE_SIZE = 65536
_HEADER = struct.Struct(y.YAMUX_HEADER_FORMAT)
_HEADER_SIZE = y.HEADER_SIZE
_MAX_NONCE = 2**64 - 1
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_original: Any = None


def installed() -> bool:
    return _original is not None


def install() -> None:
    global _original
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    if _original is not None:
        return
    _original = HeartbeatYamux.__dict__["_fil_read_frames"]
    HeartbeatYamux._fil_read_frames = buffered_read_frames  # type: ignore[method-assign]


def uninstall() -> None:
    global _original
    from heartbeat.net.compat.yamux_limits import HeartbeatYamux

    if _original is None:
        return
    HeartbeatYamux._fil_read_frames = _original  # type: ignore[method-assign]
    _original = None


#: What `BufferedYamuxStream.pump` hands a stream's bytes to; False stops it.
Sink = Callable[[bytes], bool]


class BufferedYamuxStream(y.YamuxStream):
    """An inbound stream whose `read(n)` takes buffered bytes without locks, and whose
    `pump(sink)` has the connection's reader hand its bytes to `sink` in the pass."""

    def __init__(self, stream_id: int, conn: Any, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        # py-libp2p's `_grow_threshold` reads these on every call (every read here).
        self._fil_no_hysteresis = y._yamux_disable_hysteresis()
        self._fil_threshold_divisor = y._yamux_batch_threshold_divisor()
        #: The pump's sink while one runs: the pass hands it every DATA payload.
        self._fil_sink: Sink | None = None
        #: What the sink raised in the pass (raised again by `pump`, in its own task).
        self._fil_sink_error: Exception | None = None
        #: Bytes the sink took whose Yamux credit is not returned yet.
        self._fil_unreturned = 0

    def _grow_threshold(self) -> int:
        """py-libp2p's threshold, its settings as they were when the stream opened."""
        if self._fil_no_hysteresis:
            return 0
        return self.target_recv_window // self._fil_threshold_divisor

    async def read(self, n: int | None = -1) -> bytes:
        conn = self.conn
        sid = self.stream_id
        if n is None or n < 0:
            return await super().read(n)
        while True:
            buffer = conn.stream_buffers.get(sid)
            if (
                buffer is None
                or conn.event_shutting_down.is_set()
                or conn.streams.get(sid) is not self
                or (self.reset_received and not self.recv_closed)
            ):
                return await super().read(n)  # py-libp2p's path: EOF, reset, gone
            if buffer:
                break
            if self.recv_closed:
                return await super().read(n)  # the end: py-libp2p's EOF
            # Nothing buffered yet: wait for the reader's wake, as py-libp2p's
            # `read_stream` does, without its lock around each look.
            event = conn.stream_events.get(sid)
            if event is None:
                return await super().read(n)
            await event.wait()
            if conn.stream_events.get(sid) is event:
                conn.stream_events[sid] = trio.Event()
        await trio.lowlevel.checkpoint_if_cancelled()
        data = bytes(buffer[:n])
        del buffer[:n]
        if self.closed and not buffer:
            conn._finalize_stream_locked(self, fully_closed=True)
        owed = len(data) + self._fil_unreturned
        self._fil_unreturned = 0
        await self._credit(owed)
        return data

    async def pump(self, sink: Sink) -> bool:
        """Hand this stream's bytes to `sink` from the connection reader's pass: no read,
        no task switch per frame.

        `sink(data)` runs synchronously inside the reader's demultiplexing pass (it must
        not block; what it raises stops the pump and is raised here, in the caller's task,
        never in the reader) and returns False to stop. Bytes buffered before the pump
        starts go to it first. Returns True when the stream has ended (FIN, reset, the
        connection gone: nothing more will come), False when the sink stopped it (what
        arrives later is buffered for `read` or the next pump). This task wakes only to
        return the Yamux credit for what the sink took, when it is due (`_credit`'s rule),
        and for the end.
        """
        conn = self.conn
        sid = self.stream_id
        buffer = conn.stream_buffers.get(sid)
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            self._fil_unreturned += len(data)
            if not sink(data):
                await self._return_credit()
                return False
        self._fil_sink = sink
        try:
            while self._fil_sink is not None:
                if self._pump_ended():
                    return True
                event = conn.stream_events.get(sid)
                if event is None:
                    return True
                await event.wait()
                if conn.stream_events.get(sid) is event:
                    conn.stream_events[sid] = trio.Event()
                if self._fil_unreturned:
                    await self._return_credit()
        finally:
            self._fil_sink = None
        error = self._fil_sink_error
        if error is not None:
            self._fil_sink_error = None
            raise error
        await self._return_credit()
        return False

    def _pump_ended(self) -> bool:
        conn = self.conn
        buffer = conn.stream_buffers.get(self.stream_id)
        return (
            buffer is None
            or conn.event_shutting_down.is_set()
            or conn.streams.get(self.stream_id) is not self
            or self.reset_received
            or (self.recv_closed and not buffer)
        )

    def _credit_due(self) -> bool:
        """Whether `_credit` would send a window update now (nothing is buffered while a
        sink runs, so what is not credited is the window's shortfall)."""
        if not yamux_credit.installed():
            return True  # py-libp2p's rule: credit on every read
        return self.target_recv_window - self.recv_window >= self._grow_threshold()

    async def _return_credit(self) -> None:
        owed = self._fil_unreturned
        if owed:
            self._fil_unreturned = 0
            await self._credit(owed)

    async def _credit(self, nbytes: int) -> None:
        """Return the Yamux receive credit for `nbytes` read, when it is due.

        The rule of `_auto_tune_and_send_window_update` with `yamux_credit` (credit once
        half the window is consumed); that method itself (and its lock) runs only when it
        will send. With `yamux_credit` off it runs on every read, as py-libp2p does.
        """
        if self.reset_received:
            return  # the peer reset the stream: no credit (nothing more can arrive)
        if yamux_credit.installed():
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            threshold = self._grow_threshold()
            if not (delta >= threshold and delta > 0) and (
                self._pending_recv_release + nbytes < threshold
            ):
                self._pending_recv_release += nbytes
                return
        await self._auto_tune_and_send_window_update(bytes_read=nbytes)


def _layers(conn: Any) -> tuple[Any, Any] | None:
    """(receive, Noise CipherState for decryption) of a Noise-over-TCP session, or None."""
    session = conn.secured_conn
    if type(session) is not SecureSession:
        return None
    noise_rw = session.conn
    if type(noise_rw) is not NoiseTransportReadWriter:
        return None
    raw = noise_rw.read_writer.read_write_closer
    tcp = getattr(raw, "stream", None)
    # TrioTCPStream.read is receive_some behind a lock no one else takes once Yamux runs;
    # its errors are translated here (`_receive`).
    if type(tcp) is not TrioTCPStream:
        return None
    cipher_state = noise_rw.noise_state.noise_protocol.cipher_state_decrypt
    return tcp.stream, cipher_state


async def _receive(sock: trio.SocketStream) -> bytes:
    """Up to RECEIVE_SIZE bytes; b"" at the end (closed here or there, reset).

    One wait for readability and one `read`: trio's `receive_some` first tries a
    receive that, with one frame per receive, nearly always fails (an exception) and,
    once it has bytes, yields again (its cancellation sandwich). This is a scheduling
    point all the same (`wait_readable` is a checkpoint).
    """
    raw = sock.socket
    try:
        while True:
            fd = raw.fileno()
            if fd < 0:  # closed here
                return b""
            await trio.lowlevel.wait_readable(fd)
            if raw.fileno() != fd:  # closed meanwhile: never read a reused descriptor
                return b""
            try:
                return os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue  # woken without bytes: wait again
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
        return b""


class _Fatal(Exception):
    """The connection must close (a protocol violation, a bad message)."""


def _decrypt_all(cipher_state: Any, cbuf: bytearray, plain: bytearray) -> None:
    """Decrypt every complete Noise message of `cbuf` into `plain`; consume them."""
    size = len(cbuf)
    pos = 0
    aead: ChaCha20Poly1305 | None = None
    view = memoryview(cbuf)
    try:
        while size - pos >= 2:
            end = pos + 2 + ((cbuf[pos] << 8) | cbuf[pos + 1])
            if end > size:
                break
            nonce = cipher_state.n
            if nonce >= _MAX_NONCE:
                raise _Fatal("noise nonce depleted")
            if aead is None:
                aead = ChaCha20Poly1305(cipher_state.k)
            try:
                plain += aead.decrypt(
                    _NONCE_PREFIX + nonce.to_bytes(8, "little"), view[pos + 2 : end], None
                )
            except InvalidTag as exc:
                raise _Fatal("noise message failed authentication") from exc
            cipher_state.n = nonce + 1
            pos = end
    finally:
        view.release()
        if pos:
            del cbuf[:pos]


class _Pass:
    """What one demultiplexing pass leaves to do once it is over (the awaits)."""

    __slots__ = ("control", "new_streams", "partial_data", "shutdown", "woken")

    def __init__(self) -> None:
        self.control: list[bytes] = []
        self.new_streams: list[Any] = []
        self.woken: set[int] = set()
        self.partial_data = False
        self.shutdown = False


def _rst(sid: int) -> bytes:
    return _HEADER.pack(0, y.TYPE_WINDOW_UPDATE, y.FLAG_RST, sid, 0)


def _demux_all(conn: Any, plain: bytearray, out: _Pass) -> None:
    """Apply every complete Yamux frame of `plain`; consume them (synchronous)."""
    size = len(plain)
    pos = 0
    streams = conn.streams
    buffers = conn.stream_buffers
    try:
        while size - pos >= _HEADER_SIZE and not out.shutdown:
            _, typ, flags, sid, length = _HEADER.unpack_from(plain, pos)
            body_at = pos + _HEADER_SIZE
            if typ == y.TYPE_DATA:
                if length > y.MAX_WINDOW_SIZE:
                    raise _Fatal(f"oversized DATA frame length={length} stream={sid}")
                if size - body_at < length:
                    out.partial_data = True
                    break
                pos = body_at + length
            else:
                pos = body_at
            if typ == y.TYPE_DATA or typ == y.TYPE_WINDOW_UPDATE:
                stream = streams.get(sid)
                if flags & y.FLAG_SYN:
                    if stream is not None:
                        out.control.append(_rst(sid))
                        continue
                    stream = _open_inbound(conn, sid, flags, out)
                    if stream is None:
                        continue
                elif stream is None:
                    continue
                if typ == y.TYPE_DATA:
                    if length:
                        stream.recv_window -= length
                        if stream.recv_window < 0:
                            log.warning(
                                "yamux_window_exceeded stream=%d peer=%s", sid, conn.peer_id
                            )
                            stream.recv_window = 0
                        sink = getattr(stream, "_fil_sink", None)
                        if sink is not None:
                            _to_sink(stream, sink, bytes(plain[body_at:pos]), out)
                        else:
                            buffers[sid] += plain[body_at:pos]
                            out.woken.add(sid)
                    elif not flags & (y.FLAG_FIN | y.FLAG_RST):
                        out.woken.add(sid)
                elif length:
                    stream.send_window += length
                if flags & (y.FLAG_FIN | y.FLAG_RST):
                    _end(conn, stream, flags, out)
            elif typ == y.TYPE_PING:
                if flags & y.FLAG_SYN:
                    if conn._ping_allowed():
                        out.control.append(_HEADER.pack(0, y.TYPE_PING, y.FLAG_ACK, 0, length))
                    if conn.event_shutting_down.is_set():  # the ping flood limit
                        out.shutdown = True
                elif flags & y.FLAG_ACK:
                    rtt = trio.current_time() - conn._ping_sent_time
                    conn._rtt = rtt if conn._rtt == 0.0 else (conn._rtt + rtt) / 2
                    conn._ping_event.set()
            elif typ == y.TYPE_GO_AWAY:
                log.debug("yamux_go_away peer=%s code=%d", conn.peer_id, length)
                out.shutdown = True
    finally:
        if pos:
            del plain[:pos]


def _to_sink(stream: BufferedYamuxStream, sink: Sink, data: bytes, out: _Pass) -> None:
    """Give a pumped stream its bytes; wake its pump when it stopped or credit is due."""
    stream._fil_unreturned += len(data)
    try:
        keep = sink(data)
    except Exception as exc:  # raised again by `pump` in its own task, never here
        stream._fil_sink_error = exc
        keep = False
    if not keep:
        stream._fil_sink = None
        out.woken.add(stream.stream_id)
    elif stream._credit_due():
        out.woken.add(stream.stream_id)


def _open_inbound(conn: Any, sid: int, flags: int, out: _Pass) -> Any:
    """A new inbound stream (SYN), admitted by the per-connection cap; None if refused."""
    stream = BufferedYamuxStream(sid, conn, False)
    conn.streams[sid] = stream
    conn.stream_buffers[sid] = bytearray()
    conn.stream_events[sid] = trio.Event()
    if flags & y.FLAG_RST:
        out.new_streams.append(stream)  # py-libp2p delivers it reset, without an ACK
        return stream
    if not conn._admit(stream):
        stream.closed = stream.send_closed = stream.recv_closed = True
        stream.reset_received = True
        conn.streams.pop(sid, None)
        conn.stream_buffers.pop(sid, None)
        conn.stream_events.pop(sid, None)
        out.control.append(_rst(sid))
        return None
    out.control.append(_HEADER.pack(0, y.TYPE_WINDOW_UPDATE, y.FLAG_ACK, sid, 0))
    out.new_streams.append(stream)
    return stream


def _end(conn: Any, stream: Any, flags: int, out: _Pass) -> None:
    if flags & y.FLAG_FIN:
        stream.recv_closed = True
        if stream.send_closed:
            stream.closed = True
    if flags & y.FLAG_RST:
        # Nothing more can arrive: the bytes that came before the RST (this pass or an
        # earlier one, not read yet) are read first, then the reset is reported. py-libp2p
        # leaves `recv_closed` unset and drops them: whether a reader saw them depended on
        # it being scheduled between two frames, which a pass never does (a refused
        # stream's protocol echo and its RST: the dialer's negotiation failed).
        stream.closed = True
        stream.reset_received = True
        stream.recv_closed = True
    out.woken.add(stream.stream_id)
    if stream.closed:
        # Finalizing may drop the stream's event (nothing buffered): its reader, waiting
        # on that event for the FIN or RST, is woken now or never.
        event = conn.stream_events.get(stream.stream_id)
        if event is not None:
            event.set()
        conn._finalize_stream_locked(stream, fully_closed=True)


async def buffered_read_frames(self: Any) -> None:
    """The session's frame reader (replaces py-libp2p's `Yamux.handle_incoming` loop)."""
    layers = _layers(self)
    if layers is None:
        await y.Yamux.handle_incoming(self)
        return
    sock, cipher_state = layers
    cbuf = bytearray()
    # Bytes the muxer negotiation read past its last message stay in the session.
    plain = bytearray(self.secured_conn._drain(None))
    deadline: float | None = None
    reason = "eof"
    try:
        while not self.event_shutting_down.is_set():
            out = _Pass()
            if plain:
                _demux_all(self, plain, out)
            if not out.control and not out.new_streams and not out.woken and not out.shutdown:
                partial = out.partial_data
                del out  # not held by an idle connection while it waits
                if partial:
                    if deadline is None:
                        deadline = trio.current_time() + y._yamux_data_read_timeout()
                    with trio.move_on_at(deadline) as scope:
                        data = await _receive(sock)
                    if scope.cancelled_caught:
                        reason = "data_read_timeout"
                        log.warning("yamux_data_read_timeout peer=%s", self.peer_id)
                        break
                else:
                    deadline = None
                    data = await _receive(sock)
                if not data:
                    break
                cbuf += data
                del data
                _decrypt_all(cipher_state, cbuf, plain)
                continue
            if not out.partial_data:
                deadline = None
            events = self.stream_events
            for sid in out.woken:
                event = events.get(sid)
                if event is not None:
                    event.set()
            if out.control:
                await y.Yamux._write_frame(self, b"".join(out.control))
            for stream in out.new_streams:
                channel = self.new_stream_send_channel
                # Admitted in `_open_inbound`: past the cap's wrapper (`_CappedSend`).
                await getattr(channel, "inner", channel).send(stream)
            if out.shutdown:
                reason = "go_away"
                break
    except _Fatal as exc:
        reason = str(exc)
        log.warning("yamux_protocol_error peer=%s err=%s", self.peer_id, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        reason = repr(exc)
    except Exception as exc:  # py-libp2p's errors on write (RawConnError, …)
        reason = repr(exc)
        log.debug("yamux_reader_error peer=%s err=%r", self.peer_id, exc)
    log.debug("yamux_reader_end peer=%s reason=%s", self.peer_id, reason)
    if self._fil_pings_over >= self.limits.ping_close_after:
        return  # `HeartbeatYamux.handle_incoming` cleans up after a ping flood
    self.event_shutting_down.set()
    await self._cleanup_on_error()
