"""One simulated agent's connection: a light Noise + Yamux connection (`--dialer light`) or a
full py-libp2p host (`--dialer host`), and streams watched for the aggregator's close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from heartbeat.net import p2p
from heartbeat.tools.loadgen.config import LoadgenConfig
from heartbeat.tools.loadgen.light import light_connection

__all__ = ["Cut", "Session", "Watched", "connect", "leaf_exception"]

log = logging.getLogger(__name__)


class Cut(Exception):
    """The aggregator closed or reset our stream."""


def leaf_exception(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: nurseries wrap what they raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Session:
    """One connection of one identity: opens heartbeat streams."""

    def __init__(self, open_stream: Any) -> None:
        self.open_stream = open_stream


@asynccontextmanager
async def connect(config: LoadgenConfig, key: p2p.KeyPair) -> AsyncIterator[Session]:
    if config.dialer == "light":
        async with light_connection(key, config.target, timeout=config.dial_timeout) as conn:
            yield Session(conn.open_stream)
        return
    async with p2p.running_host(key) as host:
        info = p2p.peer_info_from_multiaddr(config.target)
        with trio.fail_after(config.dial_timeout):
            await host.connect(info)

        async def open_stream(protocol: str, timeout: float = 10.0) -> Any:
            protocols: list[Any] = [protocol]  # libp2p's TProtocol is a str NewType
            with trio.fail_after(timeout):
                return await host.new_stream(info.peer_id, protocols)

        yield Session(open_stream)


class Watched:
    """A stream plus a task that notices when the aggregator closes or resets it."""

    def __init__(self, stream: Any, nursery: trio.Nursery, wake: trio.Event) -> None:
        self.stream = stream
        self.closed = trio.Event()
        self.opened_at = trio.current_time()
        self._wake = wake
        nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        try:
            while await self.stream.read(4096):
                pass  # the aggregator sends nothing; ignore whatever comes
        except p2p.StreamClosed:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            log.debug("watch_closed err=%r", exc)
        finally:
            self.closed.set()
            self._wake.set()
