"""The link between worker 0 and a worker: aggregator/worklink.py's frames over a local stream.

Shared by both sides (aggregator/workers.py, aggregator/worker.py); the frame format and the
messages are worklink.py's, this is only the trio shell around them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from aggregator.worklink import FrameDecoder, LinkError, encode_frame

__all__ = ["HELLO_TIMEOUT", "LINK_DOWN", "STOP_TIMEOUT", "Link"]

HELLO_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
READ_SIZE = 65536
LINK_DOWN = (trio.BrokenResourceError, trio.ClosedResourceError)


class Link:
    """Frames over a local stream socket; one writer at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._pending: list[list[Any]] = []
        self._send_lock = trio.Lock()

    async def send(self, message: list[Any]) -> None:
        data = encode_frame(message)
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> list[Any] | None:
        """The next message, or None at end of stream."""
        while not self._pending:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                if self._decoder.buffered:
                    raise LinkError(f"link closed inside a frame ({self._decoder.buffered} bytes)")
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def messages(self) -> AsyncIterator[list[Any]]:
        while (message := await self.receive()) is not None:
            yield message

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
            await self.stream.aclose()
