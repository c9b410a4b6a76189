"""`Filecoin.ChainNotify` over WebSocket (trio-websocket).

`chain_notify` subscribes, reports `task_status.started()` once Lotus has answered with
the channel id, then hands every `xrpc.ch.val` batch to a synchronous callback as a list
of `(change type, Head)` in the order Lotus sent them (a reorg is one batch: all reverts,
then all applies). It returns normally when Lotus closes the channel (`xrpc.ch.close`),
which happens when the subscriber falls behind: the caller resubscribes. Every failure
is raised as a `HeadSourceError`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from heartbeat.agent.head import (
    ChangeType,
    Head,
    HeadSourceError,
    NodeBadResponse,
    NodeRpcError,
    NodeTimeout,
    NodeUnauthorized,
    NodeUnreachable,
)
from heartbeat.agent.lotus.client import auth_headers, parse_tipset

if TYPE_CHECKING:
    from collections.abc import Callable

    from heartbeat.agent.lotus.apiinfo import ApiInfo

__all__ = ["Changes", "chain_notify", "parse_changes"]

log = logging.getLogger(__name__)

Changes = list[tuple[ChangeType, Head]]
_REQUEST_ID = 1
_MAX_MESSAGE = 4 * 1024 * 1024
_CHANGE_TYPES: tuple[ChangeType, ...] = ("current", "apply", "revert")


def parse_changes(value: object) -> Changes:
    """The change list of one `xrpc.ch.val` notification."""
    if not isinstance(value, list):
        raise NodeBadResponse("ChainNotify: changes must be a list")
    out: Changes = []
    for change in value:
        kind = change.get("Type") if isinstance(change, dict) else None
        if kind not in _CHANGE_TYPES:
            raise NodeBadResponse(f"ChainNotify: bad change {change!r:.80}")
        out.append((kind, parse_tipset(change.get("Val"), what="ChainNotify")))
    return out


def _decode(message: str | bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NodeBadResponse(f"ChainNotify: not JSON: {message[:80]!r}") from exc
    if not isinstance(decoded, dict):
        raise NodeBadResponse("ChainNotify: message is not an object")
    return decoded


async def _receive(ws: WebSocketConnection, idle_timeout: float | None) -> dict[str, Any]:
    try:
        with trio.fail_after(idle_timeout if idle_timeout is not None else float("inf")):
            message = await ws.get_message()
    except trio.TooSlowError as exc:
        raise NodeTimeout(f"ChainNotify: nothing received for {idle_timeout:g}s") from exc
    except ConnectionClosed as exc:
        raise NodeUnreachable(f"ChainNotify: connection closed ({exc.reason})") from exc
    if len(message) > _MAX_MESSAGE:
        raise NodeBadResponse(f"ChainNotify: message of {len(message)} bytes is too large")
    return _decode(message)


async def _subscribe(
    ws: WebSocketConnection,
    on_changes: Callable[[Changes], None],
    idle_timeout: float | None,
    timeout: float,
    task_status: trio.TaskStatus[None],
) -> None:
    request = {"jsonrpc": "2.0", "id": _REQUEST_ID, "method": "Filecoin.ChainNotify", "params": []}
    try:
        await ws.send_message(json.dumps(request))
    except ConnectionClosed as exc:
        raise NodeUnreachable(f"ChainNotify: connection closed ({exc.reason})") from exc
    answer = await _receive(ws, timeout)
    if answer.get("id") != _REQUEST_ID:
        raise NodeBadResponse("ChainNotify: first message is not the answer to the request")
    error = answer.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise NodeRpcError(
            "Filecoin.ChainNotify",
            code if isinstance(code, int) else 0,
            message if isinstance(message, str) else repr(error),
        )
    channel = answer.get("result")
    if channel is None:
        raise NodeBadResponse("ChainNotify: answer without a channel id")
    log.debug("chain_notify_subscribed channel=%s", channel)
    task_status.started()
    while True:
        msg = await _receive(ws, idle_timeout)
        method = msg.get("method")
        params = msg.get("params")
        if not isinstance(params, list) or not params or params[0] != channel:
            log.debug("chain_notify_ignored method=%s", method)
            continue
        if method == "xrpc.ch.close":
            log.debug("chain_notify_closed channel=%s", channel)
            return
        if method == "xrpc.ch.val":
            if len(params) != 2:
                raise NodeBadResponse("ChainNotify: xrpc.ch.val needs [channel, changes]")
            on_changes(parse_changes(params[1]))


async def chain_notify(
    info: ApiInfo,
    on_changes: Callable[[Changes], None],
    *,
    timeout: float = 5.0,
    idle_timeout: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe to head changes and feed them to `on_changes` until Lotus closes the channel.

    `timeout` bounds the connection, the handshake and the subscription answer;
    `idle_timeout` (None = no limit) bounds the silence between notifications, so a
    connection that died without a close frame is noticed.
    """
    headers = [(k.encode(), v.encode()) for k, v in auth_headers(info).items()]
    failure: HeadSourceError | None = None
    try:
        async with open_websocket_url(
            info.ws_url,
            extra_headers=headers,
            connect_timeout=timeout,
            disconnect_timeout=timeout,
            max_message_size=_MAX_MESSAGE,
        ) as ws:
            # errors are carried out of the block rather than raised through
            # trio-websocket's nursery, so they reach the caller unwrapped
            try:
                await _subscribe(ws, on_changes, idle_timeout, timeout, task_status)
            except HeadSourceError as exc:
                failure = exc
    except ConnectionRejected as exc:
        if exc.status_code in (401, 403):
            raise NodeUnauthorized("Filecoin.ChainNotify", exc.status_code) from exc
        raise NodeBadResponse(f"ChainNotify: websocket rejected, http {exc.status_code}") from exc
    except trio.TooSlowError as exc:
        raise NodeTimeout(f"ChainNotify: no answer within {timeout:g}s") from exc
    except HandshakeError as exc:
        raise NodeUnreachable(f"ChainNotify: handshake failed ({type(exc).__name__})") from exc
    except (OSError, ConnectionClosed, trio.BrokenResourceError) as exc:
        raise NodeUnreachable(f"ChainNotify: {type(exc).__name__}: {exc}") from exc
    if failure is not None:
        raise failure
