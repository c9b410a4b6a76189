"""The one shell around NATS JetStream: the only importer of `nats` and `trio_asyncio`.

nats-py is asyncio-only; the aggregator is trio. `open_bridge` enters one trio-asyncio loop
(`trio_asyncio.open_loop()`) and every call into nats-py runs through `aio_as_trio`, so
callers see plain trio awaitables, cancellable and with deadlines. Every error the library
raises (its own, OSError, asyncio timeouts) is translated here, and only here, into
`NatsUnavailable`; nothing above this module knows nats-py exists.

Once open, any trio task of the process may call the bridge (it holds the loop it entered).
The connection is made lazily on first use and re-made after it closes, so an aggregator
started while NATS is down runs normally and its export spools until NATS answers. While a
connection is up, nats-py reconnects by itself across the cluster's members.

`NatsBridge` is this module's loop, connection and nats-py pieces over its parts, which do
not import nats: the connection's options (natsconnect), the stream and key-value buckets
(natsadmin), the publish path (natspublish), the consumers (natsconsume).

The one change to nats-py's behaviour lives here too: `_RawClient`, its client with a raw
delivery for the hot subscriptions (the publish acks, the merged fleet's reader): a message
on one of them goes from the protocol parser straight to a synchronous handler as bytes,
without nats-py's message object, header parse, queue and task per message (what the export
spent most of its receiving on), and the complete frames at the front of each read are cut
before the stock parser's per-message regular expressions and copies (`_RawParser`, written
by hand: MSG/HMSG lines only, anything else left to the stock parse). It overrides the
client's `_process_msg` and the parser's `parse`, so it refuses to run (`NatsCompatError`,
checked by `open_bridge`) on any nats-py other than the one it was written for (`NATS_PY`,
the sha256 of each file it relies on: `NATS_FILES`). What should go upstream: a synchronous
raw callback per subscription, a parser without a regular expression and two copies per
message, headers parsed on access, no task per message for callbacks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    CRLF_SIZE,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

from aggregator.scaleout.natsadmin import StreamAdmin
from aggregator.scaleout.natsconf import (
    REQUEST_TIMEOUT,
    STREAM_SUBJECTS,
    NatsCompatError,
    NatsSettings,
    NatsUnavailable,
    StreamMsg,
    settings_from_config,
)
from aggregator.scaleout.natsconnect import describe, server_of
from aggregator.scaleout.natsconsume import Consumer
from aggregator.scaleout.natspublish import Publisher
from aggregator.scaleout.natswire import AckWindow, PullFailed, RawHandler
from heartbeat.common.pinned import verify_pinned

__all__ = [
    "NATS_FILES",
    "NATS_PY",
    "STREAM_SUBJECTS",
    "NatsBridge",
    "NatsCompatError",
    "NatsSettings",
    "NatsUnavailable",
    "StreamMsg",
    "open_bridge",
    "settings_from_config",
    "verify_nats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What nats-py raises when the server or the network fails us.
_NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    PullFailed,
    OSError,
    asyncio.TimeoutError,
    ssl.SSLError,
)


#: The nats-py `_RawClient` was written for, and the sha256 of every file of it that the raw
#: delivery relies on (the client's `_process_msg`, `subscribe` and `stats`; the parser's
#: call of `_process_msg` with bytes; a subscription's `_id` and `unsubscribe`).
NATS_PY = "2.16.0"
NATS_FILES = {
    "nats.aio.client": "caaa5ab4a2174c496760f36d2a007342128971c3fcb5908371c6f6ca96c66c96",
    "nats.protocol.parser": "aadc36b42fa1581f2094183a7a08c2557e110d9af2664caf771a0a6a8cca5817",
    "nats.aio.subscription": "88d8a5c4ff9fd40534af78fcb4a0adfab5c3d0fdf08257d2cd9220e85b0f9feb",
}


def verify_nats() -> None:
    """Raise `NatsCompatError` unless nats-py and each file in `NATS_FILES` are the recorded
    ones."""
    verify_pinned({"nats-py": NATS_PY}, NATS_FILES, NatsCompatError, "the raw delivery")


class _RawParser(Parser):
    """nats-py's protocol parser with a fast path: the complete MSG/HMSG frames of raw
    subscriptions are cut from each read and handed over synchronously
    (`_RawClient.deliver_raw`); anything else (another operation, another subscription's
    message, a frame the read ends inside) is given to the stock parse alone, one item at a
    time, so the fast path resumes right after it."""

    nc: _RawClient

    async def parse(self, data: bytes = b"") -> None:
        while True:
            if self.state != AWAITING_CONTROL_LINE:
                # the stock parse is inside a message: give it the rest of that one only
                rest = self.needed + CRLF_SIZE - len(self.buf)
                if rest > len(data):
                    await super().parse(data)
                    return
                await super().parse(data[:rest])
                data = data[rest:]
                if self.state != AWAITING_CONTROL_LINE:  # not the stock parse's own state
                    await super().parse(data)
                    return
                continue
            if self.buf:  # the start of a control line left by the last read (< 4 KiB)
                data = bytes(self.buf) + data
                self.buf.clear()
            used, item = self.nc.deliver_raw(data)
            data = data[used:]
            if not data:
                return
            if not item:  # not complete yet (or not readable here): the stock parse keeps it
                await super().parse(data)
                return
            await super().parse(data[:item])
            data = data[item:]
            if self.buf:  # the stock parse did not take the item whole: it keeps the rest
                await super().parse(data)
                return


class _RawClient(Client):
    """nats-py's client with a raw delivery (see the module docstring): `subscribe_raw`."""

    def __init__(self) -> None:
        super().__init__()
        self._raw: dict[int, RawHandler] = {}
        self._ps = _RawParser(self)
        self.raw_handler_errors = 0

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """Subscribe `subject`; each message goes to `handler(subject, reply, payload,
        header block)` on the read loop (a subscription without a callback: nothing is
        queued for it, its messages never reach the subscription)."""
        sub = await self.subscribe(subject, pending_msgs_limit=-1)
        self._raw[sub._id] = handler
        return sub

    async def unsubscribe_raw(self, sub: Subscription) -> None:
        self._raw.pop(sub._id, None)
        await sub.unsubscribe()

    def deliver_raw(self, data: bytes) -> tuple[int, int]:
        """Hand over the complete frames of raw subscriptions at the start of `data`: how
        many bytes they took, and how long the complete item after them is that is not
        one (another operation's line, another subscription's frame; 0: none complete, or
        a line the stock parse should read)."""
        raw = self._raw
        pos, end = 0, len(data)
        while pos < end:
            if data.startswith(b"HMSG ", pos):
                start, headers = pos + 5, True
            elif data.startswith(b"MSG ", pos):
                start, headers = pos + 4, False
            else:
                eol = data.find(b"\r\n", pos, pos + MAX_CONTROL_LINE_SIZE)
                return pos, (eol + 2 - pos if eol >= 0 else 0)
            eol = data.find(b"\r\n", start, pos + MAX_CONTROL_LINE_SIZE)
            if eol < 0:
                return pos, 0
            # MSG <subject> <sid> [reply] <size> / HMSG <subject> <sid> [reply] <hsize> <size>
            args = data[start:eol].split()
            if len(args) not in ((4, 5) if headers else (3, 4)):
                return pos, 0
            try:
                sid, total = int(args[1]), int(args[-1])
                hsize = int(args[-2]) if headers else 0
            except ValueError:
                return pos, 0
            body = eol + 2
            after = body + total
            if hsize > total or after + 2 > end or data[after : after + 2] != b"\r\n":
                return pos, 0
            handler = raw.get(sid)
            if handler is None:
                return pos, after + 2 - pos
            reply = args[2] if len(args) == (5 if headers else 4) else b""
            pos = after + 2
            self._call_raw(
                handler,
                args[0],
                reply,
                data[body + hsize : after],
                data[body : body + hsize] or None,
            )
        return pos, 0

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._raw.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self._call_raw(handler, subject, reply, data, headers)

    def _call_raw(
        self, handler: RawHandler, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None
    ) -> None:
        """One message of a raw subscription: counted as nats-py counts its own, handed over."""
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, hdr)
        except Exception:  # a handler's bug must not take the connection's read loop down
            self.raw_handler_errors += 1
            log.exception("nats_raw_handler_failed subject=%r", subject[:80])


class NatsBridge(StreamAdmin, Publisher, Consumer):
    """JetStream publish, pull consumers and key-value, as trio awaitables."""

    _connect_params: ClassVar[frozenset[str]] = frozenset(
        inspect.signature(Client.connect).parameters
    )
    _api: ClassVar[Any] = api
    _not_found: ClassVar[type[BaseException]] = nats.js.errors.NotFoundError
    _wrong_last_sequence: ClassVar[type[BaseException]] = nats.js.errors.KeyWrongLastSequenceError
    _api_error: ClassVar[type[BaseException]] = nats.js.errors.APIError
    _fetch_timeout: ClassVar[tuple[type[BaseException], ...]] = (
        nats.errors.TimeoutError,
        asyncio.TimeoutError,
    )

    def __init__(self, settings: NatsSettings, loop: Any) -> None:
        self.settings = settings
        # The trio-asyncio loop `open_bridge` entered: every call runs on it, from any trio
        # task of the process (the loop's context variable is set only in the opening task).
        self._loop = loop
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        #: Buckets other than the lease's (`kv_*(bucket=...)`), per JetStream context.
        self._plain: tuple[JetStreamContext, dict[str, KeyValue]] | None = None
        self._lock = trio.Lock()
        self.connects = 0
        #: The publish acks' inbox (per connection) and the futures waiting on it.
        self._ack_sub: tuple[Client, bytes] | None = None
        self._acks: dict[bytes, tuple[AckWindow, int]] = {}
        self._ack_seq = 0

    # -- plumbing -------------------------------------------------------------

    async def _aio(self, operation: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one nats-py coroutine under trio, translating its errors."""
        if self._loop.is_closed():
            raise NatsUnavailable(operation, "the bridge is closed")
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)()
            return result
        except _NATS_ERRORS as exc:
            raise NatsUnavailable(operation, describe(exc)) from exc
        except asyncio.CancelledError as exc:
            # trio_asyncio turns a cancellation of ours into trio.Cancelled; a bare asyncio
            # one means the loop is closing under a (shielded) caller: the bridge is gone
            raise NatsUnavailable(operation, "the bridge is closing") from exc

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context of a live connection, connecting first when needed."""
        async with self._lock:
            if self._nc is not None and not self._nc.is_closed and self._js is not None:
                return self._js
            self._nc, self._js, self._kv = None, None, None
            options = self._connect_options()

            async def connect() -> Client:
                # nats-py's first connect walks the server pool once (no retry loop): a
                # cluster that is entirely down fails fast and the caller spools.
                client = _RawClient()
                await client.connect(**options)
                return client

            nc = await self._aio("connect", connect)
            self._nc, self._js = nc, nc.jetstream(timeout=REQUEST_TIMEOUT)
            self.connects += 1
            self.epoch += 1
            log.info("nats_connected server=%s", server_of(nc))
            return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def close(self) -> None:
        nc, self._nc, self._js, self._kv = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with trio.move_on_after(5):
                try:
                    await self._aio("close", nc.close)
                except NatsUnavailable as exc:
                    log.debug("nats_close_failed error=%s", exc.reason)


@asynccontextmanager
async def open_bridge(settings: NatsSettings) -> AsyncIterator[NatsBridge]:
    """Enter the one trio-asyncio loop and yield a bridge; closes the connection on exit."""
    if not settings.urls:
        raise ValueError("open_bridge needs at least one NATS URL")
    verify_nats()
    async with trio_asyncio.open_loop() as loop:
        bridge = NatsBridge(settings, loop)
        try:
            yield bridge
        finally:
            with trio.CancelScope(shield=True):
                await bridge.close()
