"""The small ASGI plumbing both programs' HTTP endpoints share, over hypercorn's trio worker.

`lifespan(receive, send)` answers the ASGI lifespan protocol (nothing to start or stop);
`serve_asgi(app, host, port, task_status=...)` serves an ASGI callable until cancelled and
reports the addresses hypercorn really bound; on Linux its connections carry TCP_USER_TIMEOUT,
so that a client that stops reading cannot hold up the shutdown (see `serve_asgi`). The
aggregator imports this module; it imports nothing of the aggregator.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve

__all__ = [
    "TCP_USER_TIMEOUT",
    "Receive",
    "Scope",
    "Send",
    "bind_address",
    "bound_port",
    "lifespan",
    "serve_asgi",
]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Seconds a connection may leave sent data unacknowledged, or its receive window shut, before
#: the kernel drops it (`serve_asgi`).
TCP_USER_TIMEOUT = 30.0
# Linux only (socket(7), tcp(7)); None elsewhere.
_TCP_USER_TIMEOUT_OPTION: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)


class _Config(Config):
    """hypercorn's Config whose listening TCP sockets carry TCP_USER_TIMEOUT: Linux copies a
    listener's options to the connections it accepts."""

    tcp_user_timeout: float | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if self.tcp_user_timeout is not None and _TCP_USER_TIMEOUT_OPTION is not None:
            milliseconds = max(1, round(self.tcp_user_timeout * 1000))
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT_OPTION, milliseconds)
        return sockets


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
    tcp_user_timeout: float | None = TCP_USER_TIMEOUT,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled (or `shutdown_trigger` returns).

    `task_status.started(binds)` once listening, with hypercorn's bound addresses
    (`http://HOST:PORT`, the port resolved when `port` is 0).

    On stopping, hypercorn cancels its connections after `graceful_timeout`, but it shields
    its socket writes from cancellation and none of its settings bounds them (not
    `graceful_timeout`, `shutdown_timeout`, `keep_alive_timeout`, `read_timeout` nor
    `websocket_ping_interval`): a client that keeps its connection up but stops reading (a
    stuck feed client, a scraper stalled in a 26 MB /metrics) would hold up the server, and
    the program's clean stop, until the connection died by itself, which can be never: the
    client's kernel answers zero-window probes, so TCP's retransmission limit does not apply.
    So, on Linux, each connection carries TCP_USER_TIMEOUT (`tcp_user_timeout` seconds; None
    leaves the kernel's default): sent data unacknowledged, or the peer's receive window shut,
    for that long and the kernel drops the connection, which ends the blocked write. An idle
    connection (nothing in flight) is never affected. A client that reads slowly keeps its
    connection as long as its window reopens within that time, which takes reading about half
    its receive buffer (measured): at 30 s, a few KB/s with Linux's initial 128 KiB, about
    100 KB/s with a buffer autotuned to 6 MiB; slower than that, it counts as stalled.

    30 s by default: longer than a network blip or a pause a client should survive, and than
    Prometheus's default scrape timeout (10 s: a scraper that has taken nothing for 30 s has
    given up on that scrape); short enough that a stop takes at most about `graceful_timeout`
    + 30 s, well within systemd's default 90 s before its SIGKILL.
    """
    if tcp_user_timeout is not None and tcp_user_timeout <= 0:
        raise ValueError(f"tcp_user_timeout must be positive or None, not {tcp_user_timeout}")
    config = _Config()
    config.tcp_user_timeout = tcp_user_timeout
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
