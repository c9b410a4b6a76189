"""The small ASGI plumbing both programs' HTTP endpoints share, over hypercorn's trio worker.

`lifespan(receive, send)` answers the ASGI lifespan protocol (nothing to start or stop);
`serve_asgi(app, host, port, task_status=...)` serves an ASGI callable until cancelled and
reports the addresses hypercorn really bound. The aggregator imports this module; it imports
nothing of the aggregator.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["Receive", "Scope", "Send", "bind_address", "bound_port", "lifespan", "serve_asgi"]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge start-up and shut-down: the apps hold no resources of their own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bind_address(host: str, port: int) -> str:
    """hypercorn's bind string: `HOST:PORT`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_port(bind: str) -> int:
    """The port of one of hypercorn's bound addresses (`http://127.0.0.1:9082`)."""
    return int(bind.rsplit(":", 1)[1])


async def serve_asgi(
    app: Callable[..., Awaitable[None]],
    host: str,
    port: int,
    *,
    graceful_timeout: float = 2.0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled (or `shutdown_trigger` returns).

    `task_status.started(binds)` once listening, with hypercorn's bound addresses
    (`http://HOST:PORT`, the port resolved when `port` is 0).
    """
    config = Config()
    config.bind = [bind_address(host, port)]
    config.accesslog = None
    # A Logger (not hypercorn's default "-") so that hypercorn adds no stderr handler of its own:
    # its messages go through the root logger's handler once, at the level `__main__` set.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(
                app,
                config,
                shutdown_trigger=shutdown_trigger,
                task_status=task_status,
            )
        )
        task_status.started(list(binds))
