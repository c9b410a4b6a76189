"""A client that stops reading cannot hold up `serve_asgi`'s shutdown (Linux: TCP_USER_TIMEOUT).

hypercorn's trio worker shields its socket writes from cancellation, so neither cancelling the
server nor its graceful deadline ends a write to a peer that keeps its connection up but never
reads. A real server on 127.0.0.1 (port 0), a raw client with a tiny receive buffer that sends
its request and never reads: once the server is told to stop, it must be done within a few user
timeouts. Whatever the outcome, the client's socket is closed at the end (a reset), which frees
a stuck server, so a regression fails here instead of hanging.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel

from heartbeat.common.asgi import Receive, Scope, Send, bound_port, lifespan, serve_asgi

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
linux_only = pytest.mark.skipif(
    not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's"
)

USER_TIMEOUT = 2.0
#: Well past what the kernel buffers on both sides (tcp_wmem's maximum is 4 MiB by default):
#: about the size of the aggregator's /metrics at 10,000 nodes.
BODY = b"x" * (26 << 20)
#: One WebSocket message, sent over and over.
MESSAGE = b"x" * (64 << 10)
#: The smallest receive buffer the kernel grants: the client's window shuts almost at once.
CLIENT_RCVBUF = 1024

HTTP_REQUEST = b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n"
WEBSOCKET_REQUEST = (
    b"GET /feed HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class StreamingApp:
    """A large HTTP body in one send (as /metrics), or WebSocket messages without end."""

    def __init__(self) -> None:
        self.sending = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(BODY)).encode())],
                }
            )
            self.sending.set()
            await send({"type": "http.response.body", "body": BODY})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            self.sending.set()
            while True:
                await send({"type": "websocket.send", "bytes": MESSAGE})
                # A send to a connection already closed may return without a checkpoint.
                await trio.lowlevel.checkpoint()


async def stalled_client(port: int, request: bytes) -> trio.socket.SocketType:
    """Connected, its request sent, and never to read a byte."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before the connect: the window scale is agreed in the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    with trio.fail_after(5):
        await sock.connect(("127.0.0.1", port))
        await sock.send(request)
    return sock


@linux_only
@pytest.mark.parametrize(
    "request_bytes", [HTTP_REQUEST, WEBSOCKET_REQUEST], ids=["http-body", "websocket"]
)
async def test_shutdown_is_not_held_up_by_a_client_that_never_reads(
    request_bytes: bytes,
) -> None:
    app = StreamingApp()
    stop = trio.Event()
    stopped = trio.Event()

    async def server(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve_asgi(
            app,
            "127.0.0.1",
            0,
            graceful_timeout=0.5,
            shutdown_trigger=stop.wait,
            tcp_user_timeout=USER_TIMEOUT,
            task_status=task_status,
        )
        stopped.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(server)
        client = await stalled_client(bound_port(binds[0]), request_bytes)
        with client:
            with trio.fail_after(5):
                await app.sending.wait()
            stop.set()
            with trio.move_on_after(3 * USER_TIMEOUT):
                await stopped.wait()
            finished = stopped.is_set()
        # The client's socket is closed: a server still stuck in its write gets a reset.
    assert finished, f"the server was still writing to the stalled client {3 * USER_TIMEOUT} s on"


@pytest.mark.parametrize("tcp_user_timeout", [0.0, -1.0])
async def test_tcp_user_timeout_must_be_positive(tcp_user_timeout: float) -> None:
    with pytest.raises(ValueError, match="tcp_user_timeout"):
        await serve_asgi(StreamingApp(), "127.0.0.1", 0, tcp_user_timeout=tcp_user_timeout)
