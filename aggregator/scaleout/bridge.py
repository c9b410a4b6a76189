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
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from aggregator.scaleout.natsadmin import StreamAdmin
from aggregator.scaleout.natsconf import (
    REQUEST_TIMEOUT,
    STREAM_SUBJECTS,
    NatsSettings,
    NatsUnavailable,
    StreamMsg,
    settings_from_config,
)
from aggregator.scaleout.natsconnect import describe, server_of
from aggregator.scaleout.natsconsume import Consumer
from aggregator.scaleout.natspublish import Publisher
from aggregator.scaleout.natswire import AckWindow, PullFailed

__all__ = [
    "STREAM_SUBJECTS",
    "NatsBridge",
    "NatsSettings",
    "NatsUnavailable",
    "StreamMsg",
    "open_bridge",
    "settings_from_config",
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
        self._ack_sub: tuple[Client, str] | None = None
        self._acks: dict[str, tuple[AckWindow, int]] = {}
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
                return await nats.connect(**options)

            nc = await self._aio("connect", connect)
            self._nc, self._js = nc, nc.jetstream(timeout=REQUEST_TIMEOUT)
            self.connects += 1
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
    async with trio_asyncio.open_loop() as loop:
        bridge = NatsBridge(settings, loop)
        try:
            yield bridge
        finally:
            with trio.CancelScope(shield=True):
                await bridge.close()
