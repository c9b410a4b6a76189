"""What py-libp2p 0.8.1 keeps per held connection, cut from outside (docs/CAPACITY.md, 1b).

A connection held by the aggregator cost ~65 KB (bench/bench_memory.py): seven trio tasks
(each a Task, a chain of suspended coroutines, cancel scopes and events: ~2-4 KB), the
Noise session's two AEAD objects (OpenSSL contexts, 2.2 KB each, unseen by tracemalloc), the
handshake's static key, and the state of the stream itself. Three cuts, each guarded like
`heartbeat.net.p2p.install_throttled_reconcile` (it refuses any source but 0.8.1's and then
changes nothing) and each switchable back to py-libp2p's code for a "before" run:

- `yamux`: one task per Yamux session instead of four. `Yamux.start` runs the frame reader
  in its own task (py-libp2p starts a nursery with the reader, an RTT ping loop and a
  stale-stream sweeper, and waits on it); no RTT pings are sent (the window auto-tuning
  then uses py-libp2p's assumed RTT, as before the first pong; pings from the peer are
  still answered), and one `sweep_yamux_sessions` task sweeps every session's stale
  streams, as each session's own sweeper did, every 30 s.
- `noise`: the ChaCha20-Poly1305 object is built for each Noise message from the key
  (+1 µs per message) instead of held per direction for the connection's life; the
  static key pair copied into every handshake is dropped once the handshake is done.
- `accept`: no accept-loop task per connection (needs `yamux`). `SwarmConn.start` waits
  in a loop for the session's new streams and starts each stream's handler in its own
  nursery; here the session hands each new stream straight to a handler task started in
  the swarm's task nursery (the one py-libp2p runs `SwarmConn.start` in), and the
  session's new-stream channel is dropped. An exception escaping a handler meets the
  task manager's rule as before (a connection shutting down is ignored, anything else
  stops the swarm).
- `inbound`: the listener's handler task of an inbound connection ends when that
  connection closes. py-libp2p 0.8.1 keeps it until the host stops ("intentional
  barrier"), so every connection ever accepted leaves a task behind (~3 KB): a leak under
  churn (flapping agents, reconnect storms), not a cost of held connections.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import logging
import sys
import textwrap
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from heartbeat.net.p2p import recompiled_method

__all__ = [
    "CUTS",
    "install_memory_cuts",
    "installed_cuts",
    "patched_inbound_source",
    "sweep_yamux_sessions",
    "yamux_sweeper",
]

log = logging.getLogger(__name__)

#: Every cut, in the order they are installed.
CUTS = ("yamux", "accept", "noise", "inbound")

#: sha256 (first 16 hex digits) of py-libp2p 0.8.1's / noiseprotocol 0.3.1's source of
#: each function a cut replaces or relies on: any other source and the cut is refused.
_YAMUX_SOURCES = {
    "start": "bd1a114758a61e42",
    "_handle_incoming_with_ready_signal": "c4a74d82a0a2dcf2",
    "_measure_rtt_loop": "86222ce6e35836fd",
    "_stale_stream_sweeper": "08b08829729ea7f4",
    "_sweep_stale_streams": "0b1a5033e707e138",
}
_SWARM_CONN_SOURCES = {
    "start": "583b5405b69fd13a",
    "_handle_new_streams": "3469a326ba930915",
    "_handle_muxed_stream": "fb51f8a3e37c9800",
}
_NOISE_SOURCES = {
    "CryptographyCipher.encrypt": "3af744bf67387b09",
    "CryptographyCipher.decrypt": "85e5faaecb6b38b6",
    "Cipher.initialize": "3297526925dfd4ec",
    "Cipher.rekey": "020c865bf894f060",
    "CipherState.encrypt_with_ad": "b4ed12be2ee3e9a3",
    "CipherState.decrypt_with_ad": "1493b737bc5cf71f",
    "CipherState.rekey": "aa56947e7ad6fdec",
    "CipherState.initialize_key": "b96b0d21c79fa072",
    "NoiseProtocol.handshake_done": "43e5f2b5105bb2eb",
}

#: What each installed cut replaced: {cut: [(owner, attribute, original value)]}.
_ORIGINALS: dict[str, list[tuple[Any, str, Any]]] = {}

#: Live Yamux sessions started by the one-task `start` (for the shared sweeper).
_SESSIONS: weakref.WeakSet[Any] = weakref.WeakSet()


def _digest(fn: Any) -> str | None:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed_cuts() -> tuple[str, ...]:
    return tuple(cut for cut in CUTS if cut in _ORIGINALS)


def install_memory_cuts(cuts: Iterable[str] = CUTS) -> dict[str, bool]:
    """Install `cuts` (names from `CUTS`) and restore py-libp2p's code for the others.

    Process-wide and idempotent; {cut: in effect}. A cut whose py-libp2p (or noise) source
    is not the one it was written for is refused: nothing of it changes, a warning is
    logged and it reports False. `install_memory_cuts(())` is py-libp2p's behaviour.
    """
    wanted = set(cuts)
    unknown = wanted - set(CUTS)
    if unknown:
        raise ValueError(f"unknown memory cuts: {sorted(unknown)}")
    if "accept" in wanted and "yamux" not in wanted:
        log.warning("memory_cut_refused cut=accept reason=needs the yamux cut")
        wanted.discard("accept")
    for cut in reversed(CUTS):
        if cut not in wanted:
            _restore(cut)
    result: dict[str, bool] = {}
    for cut in CUTS:
        if cut not in wanted:
            result[cut] = False
        elif cut in _ORIGINALS:
            result[cut] = True
        else:
            refused = _INSTALLERS[cut]()
            if refused is not None:
                log.warning("memory_cut_refused cut=%s reason=%s", cut, refused)
            result[cut] = refused is None
    return result


def _restore(cut: str) -> None:
    for owner, name, original in reversed(_ORIGINALS.pop(cut, [])):
        if isinstance(owner, dict):
            owner[name] = original
        else:
            setattr(owner, name, original)


# -- yamux: one task per session ---------------------------------------------------------


def _install_yamux() -> str | None:
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    yamux_cls: Any = yamux_module.Yamux
    for name, expected in _YAMUX_SOURCES.items():
        if _digest(yamux_cls.__dict__.get(name)) != expected:
            return f"Yamux.{name} is not py-libp2p 0.8.1's"
    if not isinstance(getattr(yamux_module, "_STALE_STREAM_SWEEP_INTERVAL", None), float):
        return "no _STALE_STREAM_SWEEP_INTERVAL"
    _ORIGINALS["yamux"] = [(yamux_cls, "start", yamux_cls.__dict__["start"])]
    yamux_cls.start = _one_task_start
    return None


#: Shared by every session: nothing waits on it once no RTT loop runs (the reader still
#: sets it when a pong arrives).
_NO_PING_WAITER = trio.Event()


async def _one_task_start(self: Any) -> None:
    """`Yamux.start` with the frame reader in this task (the `yamux` cut).

    py-libp2p's: a nursery with `_measure_rtt_loop`, `_stale_stream_sweeper` and the
    reader (`nursery.start`), `event_started` set once the reader started, then a wait for
    the three; when the reader ends, the other two are cancelled and the new-stream channel
    closed. Here `event_started` is set and the reader runs at once in this task (nobody
    else runs before it reaches its first read), and the channel is closed the same way.
    """
    if self.event_started.is_set():
        return
    self._ping_event = _NO_PING_WAITER
    _SESSIONS.add(self)
    self._established = True
    self.event_started.set()
    try:
        await self.handle_incoming()
    finally:
        _SESSIONS.discard(self)
    try:
        self.new_stream_send_channel.close()
    except trio.ClosedResourceError:
        pass  # closed by close() or by the reader's error cleanup


def sweep_yamux_sessions() -> int:
    """One round of the stale-stream sweep over every live session; streams reclaimed.

    The same `_sweep_stale_streams` each session's own sweeper ran every 30 s, under the
    session's `streams_lock`; a session whose lock is busy is swept next round.
    """
    reclaimed = 0
    for session in list(_SESSIONS):
        if session.event_shutting_down.is_set():
            _SESSIONS.discard(session)
            continue
        lock = session.streams_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            continue
        try:
            reclaimed += int(session._sweep_stale_streams())
        finally:
            lock.release()
    return reclaimed


@asynccontextmanager
async def yamux_sweeper(interval: float | None = None) -> AsyncIterator[None]:
    """Run the shared stale-stream sweeper for the block (only while the cut is in)."""
    if "yamux" not in _ORIGINALS:
        yield
        return
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    period = interval if interval is not None else yamux_module._STALE_STREAM_SWEEP_INTERVAL

    async def sweep_forever() -> None:
        deadline = trio.current_time()
        while True:
            deadline += period
            await trio.sleep_until(deadline)
            sweep_yamux_sessions()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep_forever)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


# -- accept: new streams handed to their handler, no accept loop ---------------------------


def _install_accept() -> str | None:
    from libp2p.network.connection.swarm_connection import SwarmConn
    from libp2p.stream_muxer.yamux.yamux import Yamux

    if "yamux" not in _ORIGINALS:
        return "needs the yamux cut"
    for name, expected in _SWARM_CONN_SOURCES.items():
        if _digest(SwarmConn.__dict__.get(name)) != expected:
            return f"SwarmConn.{name} is not py-libp2p 0.8.1's"
    if _digest(Yamux.__dict__.get("accept_stream")) != "167dcb5e053184fc":
        return "Yamux.accept_stream is not py-libp2p 0.8.1's"
    original = SwarmConn.__dict__["start"]

    async def start_without_accept_loop(self: Any) -> None:
        """`SwarmConn.start` without its accept loop (the `accept` cut); py-libp2p's own
        for a session that is not a one-task Yamux or a swarm without a running manager."""
        muxed = self.muxed_conn
        manager = getattr(self.swarm, "_manager", None)
        nursery = getattr(manager, "_task_nursery", None)
        if type(muxed).start is not _one_task_start or nursery is None:
            await original(self)
            return
        from libp2p.network.stream.net_stream import StreamState

        for stream in self.get_streams():
            await stream.set_state(StreamState.OPEN)
        # From here to the swap, no checkpoint: the reader cannot queue a stream between.
        queued, ended = _drain(muxed.new_stream_receive_channel)
        self.event_started.set()
        spawner = _StreamSpawner(nursery, manager, self._handle_muxed_stream)
        for stream in queued:
            spawner.spawn(stream)
        if ended:  # what the accept loop did on MuxedConnUnavailable
            await self.close()
            return
        muxed.new_stream_send_channel = spawner
        muxed.new_stream_receive_channel = _ENDED

    _ORIGINALS["accept"] = [(SwarmConn, "start", original)]
    SwarmConn.start = start_without_accept_loop  # type: ignore[method-assign]
    return None


def _drain(channel: Any) -> tuple[list[Any], bool]:
    """The streams queued in a new-stream channel; True if it is closed (no more)."""
    queued = []
    while True:
        try:
            queued.append(channel.receive_nowait())
        except trio.WouldBlock:
            return queued, False
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return queued, True


def _ended_channel() -> Any:
    send, receive = trio.open_memory_channel[Any](0)
    send.close()
    return receive


#: Shared by every session whose streams are handed over: `accept_stream` ends at once.
_ENDED = _ended_channel()


class _StreamSpawner:
    """Stands in for a Yamux session's new-stream send channel: `send` starts the
    stream's handler (`SwarmConn._handle_muxed_stream`) in the swarm's task nursery."""

    __slots__ = ("_handler", "_manager", "_nursery", "closed")

    def __init__(self, nursery: trio.Nursery, manager: Any, handler: Any) -> None:
        self._nursery = nursery
        self._manager = manager
        self._handler = handler
        self.closed = False

    async def send(self, stream: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.spawn(stream)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, stream: Any) -> None:
        self.spawn(stream)

    def spawn(self, stream: Any) -> None:
        if self.closed:
            raise trio.ClosedResourceError("session closed")
        self._nursery.start_soon(_handle_stream, self._manager, self._handler, stream)

    def close(self) -> None:
        self.closed = True


async def _handle_stream(manager: Any, handler: Any, stream: Any) -> None:
    """A stream's handler task. An exception that escapes it meets py-libp2p's task
    manager's rule, as when it escaped the accept loop into the manager: a connection
    shutting down (py-libp2p's own `is_expected_connection_shutdown`) is logged at debug,
    anything else is recorded and stops the swarm."""
    from libp2p.utils.connection_shutdown import is_expected_connection_shutdown

    try:
        await handler(stream)
    except Exception as err:
        if is_expected_connection_shutdown(err):
            log.debug("stream_handler_ended err=%r", err)
            return
        log.exception("stream_handler_escaped")
        manager._errors.append(sys.exc_info())
        manager.cancel()


# -- noise: per-message AEAD, static key dropped after the handshake -----------------------


def _install_noise() -> str | None:
    try:
        version = importlib.metadata.version("noiseprotocol")
    except importlib.metadata.PackageNotFoundError:
        return "noiseprotocol not installed"
    if version != "0.3.1":
        return f"noiseprotocol {version}"
    from noise.backends.default import ciphers, noise_backend
    from noise.functions.cipher import Cipher
    from noise.noise_protocol import NoiseProtocol
    from noise.state import CipherState

    owners: dict[str, Any] = {
        "CryptographyCipher": ciphers.CryptographyCipher,
        "Cipher": Cipher,
        "CipherState": CipherState,
        "NoiseProtocol": NoiseProtocol,
    }
    for qualname, expected in _NOISE_SOURCES.items():
        owner, name = qualname.split(".")
        if _digest(owners[owner].__dict__.get(name)) != expected:
            return f"{qualname} is not noiseprotocol 0.3.1's"
    table = noise_backend.ciphers
    if table.get("ChaChaPoly") is not ciphers.ChaCha20Cipher:
        return "the ChaChaPoly cipher is not noise's ChaCha20Cipher"
    handshake_done = NoiseProtocol.__dict__["handshake_done"]

    def handshake_done_keys_dropped(self: Any) -> None:
        handshake_done(self)
        # Read only when a handshake starts; the static key pair (an X25519 key with its
        # OpenSSL copy, ~0.7 KB) is one copy per connection of the host's Noise key.
        self.keypairs = dict.fromkeys(self.keypairs)

    _ORIGINALS["noise"] = [
        (table, "ChaChaPoly", table["ChaChaPoly"]),
        (NoiseProtocol, "handshake_done", handshake_done),
    ]
    table["ChaChaPoly"] = _per_message_cipher_class(ciphers.ChaCha20Cipher)
    NoiseProtocol.handshake_done = handshake_done_keys_dropped
    return None


def _per_message_cipher_class(base: type) -> type:
    """noise's ChaCha20Cipher, building the AEAD for each message from the key.

    noise's `CipherState` passes its key to every `encrypt`/`decrypt` (and `rekey`), so
    the object `initialize` builds (its OpenSSL encryption and decryption contexts, 2.2 KB
    per direction and connection) is not needed between messages. Same primitive, same
    nonces, same `InvalidTag` on a bad message.
    """
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    class PerMessageChaCha20Cipher(base):  # type: ignore[misc]
        def initialize(self, key: bytes) -> None:
            self.cipher = None

        def encrypt(self, k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
            return bytes(ChaCha20Poly1305(k).encrypt(self.format_nonce(n), plaintext, ad))

        def decrypt(self, k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
            return bytes(ChaCha20Poly1305(k).decrypt(self.format_nonce(n), ciphertext, ad))

    return PerMessageChaCha20Cipher


# -- inbound: the listener's handler task ends with its connection ---------------------------

#: `Swarm._do_handle_inbound_connection`'s barrier after a TCP upgrade (0.8.1's text,
#: dedented as a function).
_BARRIER = """\
        raw_conn = RawConnection(read_write_closer, False)
        await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        # Intentional barrier: keep handler alive.
        await self.manager.wait_finished()
"""
_HOLD = """\
        raw_conn = RawConnection(read_write_closer, False)
        _fil_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        # Intentional barrier: keep handler alive.
        await _fil_hold_inbound(self, _fil_conn)
"""


def patched_inbound_source(source: str) -> str | None:
    """The inbound handler's source holding until its connection closes; None if the
    source is not 0.8.1's."""
    text = textwrap.dedent(source)
    if text.count(_BARRIER) != 1 or "super()" in text:
        return None
    return text.replace(_BARRIER, _HOLD)


async def _hold_inbound(swarm: Any, conn: Any) -> None:
    """Keep an inbound connection's handler (and so its socket) until the connection
    closes. trio's listener closes the socket once the handler returns; the swarm closes
    every connection before its listeners when it stops, so this also ends then."""
    closed = getattr(conn, "event_closed", None)
    if isinstance(closed, trio.Event):
        await closed.wait()
    else:  # another muxer: py-libp2p's barrier
        await swarm.manager.wait_finished()


def _install_inbound() -> str | None:
    from libp2p.network import swarm as swarm_module

    swarm_cls: Any = swarm_module.Swarm
    name = "_do_handle_inbound_connection"
    new = recompiled_method(swarm_cls, name, patched_inbound_source)
    if new is None:
        return f"Swarm.{name} is not py-libp2p 0.8.1's"
    swarm_module.__dict__["_fil_hold_inbound"] = _hold_inbound
    _ORIGINALS["inbound"] = [(swarm_cls, name, swarm_cls.__dict__[name])]
    setattr(swarm_cls, name, new)
    return None


_INSTALLERS: dict[str, Callable[[], str | None]] = {
    "yamux": _install_yamux,
    "accept": _install_accept,
    "noise": _install_noise,
    "inbound": _install_inbound,
}
