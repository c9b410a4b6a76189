"""py-libp2p's errors, by type: what the network layer catches and translates.

Only `heartbeat/net/` (and the tools and tests, which talk to libp2p directly) use these;
the programs above see `heartbeat.net.errors` (`DialFailed`, `StreamLost`) instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF, StreamError, StreamReset
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
)

__all__ = ["LIBP2P_ERRORS", "StreamClosed", "quietly", "translated"]

#: Every error a stream operation can raise once the peer is gone or misbehaves.
#: py-libp2p reports a clean close, a remote reset and a dropped connection all as
#: StreamEOF on read, and StreamReset or StreamError on write.
StreamClosed = (StreamEOF, StreamReset, StreamError)

#: Everything a py-libp2p connection, upgrade or stream call raises when the remote,
#: the network or a handshake fails, by type: the library's own root
#: (`BaseLibp2pError`: muxer, multiselect, security, transport, swarm and stream
#: errors), socket errors, EOF, trio's errors for a resource closed or timed out
#: under it, and the errors of the Noise and protobuf libraries it does not wrap.
#: Programming errors (TypeError, AttributeError, ...) are deliberately absent.
LIBP2P_ERRORS: tuple[type[Exception], ...] = (
    BaseLibp2pError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValidationError,
    NoiseValueError,
    ProtobufDecodeError,
)


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """The one boundary where py-libp2p's errors (`LIBP2P_ERRORS`) become `StreamError`."""
    try:
        yield
    except StreamError:
        raise
    except LIBP2P_ERRORS as exc:
        raise StreamError(f"{what} {type(exc).__name__}: {exc}") from exc


async def quietly(what: str, close: Callable[[], Awaitable[object]]) -> None:
    """Await `close()` (closing or resetting something already broken): failures are logged."""
    try:
        await close()
    except LIBP2P_ERRORS as exc:
        logging.getLogger(__name__).debug("%s_failed err=%r", what, exc)
