"""The NATS bridge's connection, without importing nats: `BridgeCore`, what the bridge's
parts (natsadmin, natspublish, natsconsume) share, and the connection's options from the
settings (servers, reconnects, credentials, TLS) with its event logging.

`aggregator/scaleout/bridge.py` (the only importer of nats) subclasses it as `NatsBridge`:
it runs the calls (`_aio`, every library error translated into `NatsUnavailable`), makes the
connection (`_jetstream`) and hands in nats-py's pieces the parts need (`_api`, the error
types). Typed loosely (`Any` for nats-py's objects), as natswire.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from aggregator.scaleout.natsconf import CONNECT_TIMEOUT, NatsSettings

__all__ = ["BridgeCore", "describe", "server_of"]

log = logging.getLogger("aggregator.scaleout.bridge")

T = TypeVar("T")


def server_of(nc: Any) -> str:
    url = nc.connected_url if nc is not None else None
    return url.netloc if url is not None else "?"


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BridgeCore:
    """The connection the bridge's parts run on; bridge.py's `NatsBridge` fills it in."""

    settings: NatsSettings
    #: The trio-asyncio loop `open_bridge` entered.
    _loop: Any
    #: The live nats-py connection (a `nats.aio.client.Client`), None before the first.
    _nc: Any
    #: The parameters nats-py's `Client.connect` takes (what this version supports).
    _connect_params: ClassVar[frozenset[str]]
    #: nats-py's `nats.js.api` (the stream's, buckets' and consumers' configurations).
    _api: ClassVar[Any]
    #: nats-py's errors the parts tell apart (the `__cause__` of a `NatsUnavailable`).
    _not_found: ClassVar[type[BaseException]]
    _wrong_last_sequence: ClassVar[type[BaseException]]
    _api_error: ClassVar[type[BaseException]]
    _fetch_timeout: ClassVar[tuple[type[BaseException], ...]]

    async def _aio(self, operation: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one nats-py coroutine under trio, translating its errors."""
        raise NotImplementedError

    async def _jetstream(self) -> Any:
        """The JetStream context of a live connection, connecting first when needed."""
        raise NotImplementedError

    def _connect_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.urls),
            "connect_timeout": CONNECT_TIMEOUT,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "name": "fil-heartbeat-aggregator",
            # the server does not deliver this connection's own publishes to its own
            # subscriptions: the merged fleet's live reader (natsconsume `live`) gets the
            # beats the other aggregators accepted, never its own back
            "no_echo": True,
        }
        if "skip_subject_validation" in self._connect_params:
            # every subject we publish is built from sanitized tokens (schema.subject_token):
            # no per-message check (nats-py 2.11+)
            options["skip_subject_validation"] = True
        if s.user is not None:
            options["user"] = s.user
            options["password"] = s.password or ""
        if s.token is not None:
            options["token"] = s.token
        if s.creds_file is not None:
            options["user_credentials"] = str(s.creds_file)
        if s.nkey_file is not None:
            options["nkeys_seed"] = str(s.nkey_file)
        if s.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(s.tls_ca))
        return options

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats_error error=%s", describe(exc))

    #: Bumped at every connection made and every disconnect: a core subscription that saw
    #: it change may have missed messages in between (`live` readers re-read the stream).
    epoch: int = 0

    async def _on_disconnected(self) -> None:
        self.epoch += 1
        log.info("nats_disconnected")

    async def _on_reconnected(self) -> None:
        log.info("nats_reconnected server=%s", server_of(self._nc))
