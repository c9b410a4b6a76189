"""A fake Lotus node for tests: real HTTP + WebSocket JSON-RPC on 127.0.0.1, port 0.

Served by hypercorn's trio worker with a small ASGI app; answers follow the shapes of
the Lotus API (see the project's Lotus notes): ChainHead, ChainGetGenesis, SyncState,
StateGetNetworkParams, ActorAddress over HTTP (errors as HTTP 500 + JSON-RPC error), and
ChainNotify over WebSocket with `current`, `apply` and revert+apply batches and
`xrpc.ch.close`, and StateNetworkName. Tests drive it: `advance`, `set_head`, `reorg`,
`fall_back` (a restart or failover to a node a few epochs behind), `fail`, `delay`,
`close_subscriptions`, `drop_subscriptions`, `go_unreachable` / `come_back`, `go_silent` /
`speak_again` (connections accepted, nothing answered), `refuse_auth` (every request gets
HTTP 401 or 403, as Lotus does for a token it cannot verify).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from heartbeat.agent.lotus.apiinfo import ApiInfo
from heartbeat.agent.sources import fake_cid

__all__ = ["FakeLotus", "fake_lotus", "tipset_json"]

log = logging.getLogger(__name__)

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def tipset_json(height: int, cids: tuple[str, ...], timestamps: tuple[int, ...]) -> dict[str, Any]:
    """A Lotus TipSet object: Cids in ticket order, one block per CID, big ints as strings."""
    blocks = [
        {
            "Miner": f"f0{1000 + i}",
            "Height": height,
            "Timestamp": ts,
            "ParentWeight": str(10_000_000 + height),
            "ParentBaseFee": "100",
            "Parents": [{"/": fake_cid("parent", height - 1)}],
        }
        for i, ts in enumerate(timestamps)
    ]
    return {"Cids": [{"/": c} for c in cids], "Blocks": blocks, "Height": height}


@dataclass
class _Subscriber:
    channel: int
    send: trio.MemorySendChannel[dict[str, Any]]


@dataclass
class FakeLotus:
    """Controllable fake Lotus full node (and lotus-miner: it also answers ActorAddress)."""

    token: str | None = None
    height: int = 100
    block_delay: int = 30
    genesis_timestamp: int = 1_667_326_380
    network_name: str = "calibrationnet"
    miner_address: str = "t01234"
    genesis_cid: str = field(default_factory=lambda: fake_cid("fake-genesis"))
    sync_state: dict[str, Any] = field(default_factory=lambda: {"ActiveSyncs": [], "VMApplied": 0})
    calls: list[str] = field(default_factory=list)
    subscriptions_total: int = 0
    port: int = 0
    _failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    _delays: dict[str, float] = field(default_factory=dict)
    _subscribers: list[_Subscriber] = field(default_factory=list)
    _channels: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _fork: int = 0
    _auth_status: int | None = None
    _silence: trio.Event | None = None
    _scope: trio.CancelScope | None = None
    _nursery: trio.Nursery | None = None
    _stopped: trio.Event | None = None

    # -- chain --------------------------------------------------------------
    def cids_at(self, height: int) -> tuple[str, ...]:
        return (fake_cid("fake", self._fork, height, 0), fake_cid("fake", self._fork, height, 1))

    def tipset(self, height: int | None = None) -> dict[str, Any]:
        h = self.height if height is None else height
        ts = self.genesis_timestamp + h * self.block_delay
        return tipset_json(h, self.cids_at(h), (ts + 1, ts))  # min timestamp is the 2nd block

    def advance(self, epochs: int = 1) -> dict[str, Any]:
        """Move the head forward; subscribers get an `apply` per new tipset, in one batch."""
        applies = []
        for _ in range(epochs):
            self.height += 1
            applies.append({"Type": "apply", "Val": self.tipset()})
        self._broadcast(applies)
        return self.tipset()

    def set_head(self, height: int) -> dict[str, Any]:
        """Jump to `height` (no notification: as seen by polling only)."""
        self.height = height
        return self.tipset()

    def reorg(self, depth: int = 1) -> dict[str, Any]:
        """Replace the last `depth` tipsets: one batch of reverts then applies."""
        reverts = [{"Type": "revert", "Val": self.tipset(self.height - i)} for i in range(depth)]
        self._fork += 1
        applies = [
            {"Type": "apply", "Val": self.tipset(self.height - i)} for i in reversed(range(depth))
        ]
        self._broadcast(reverts + applies)
        return self.tipset()

    def fall_back(self, epochs: int) -> dict[str, Any]:
        """The node's head goes `epochs` back on the same chain (Lotus restarted from an
        older state, or a failover to a node behind): its subscriptions are cut, as a
        restart cuts them, and the new head is the one reported from now on."""
        self.drop_subscriptions()
        self.height -= epochs
        return self.tipset()

    # -- behaviour ----------------------------------------------------------
    def refuse_auth(self, status: int | None = 401) -> None:
        """Answer every request with HTTP `status` (401, 403), or normally again (None)."""
        self._auth_status = status

    def go_silent(self) -> None:
        """Keep accepting connections and requests but answer nothing (a hung node)."""
        if self._silence is None:
            self._silence = trio.Event()

    def speak_again(self) -> None:
        """Answer again, the held requests first."""
        if self._silence is not None:
            self._silence.set()
            self._silence = None

    async def _hold_if_silent(self) -> None:
        if self._silence is not None:
            await self._silence.wait()

    def fail(self, method: str, code: int = 1, message: str = "fake failure") -> None:
        """Make `method` (e.g. "Filecoin.ChainHead") answer HTTP 500 + JSON-RPC error."""
        self._failures[method] = (code, message)

    def heal(self, method: str | None = None) -> None:
        if method is None:
            self._failures.clear()
        else:
            self._failures.pop(method, None)

    def delay(self, method: str, seconds: float) -> None:
        """Answer `method` only after `seconds` (0 removes the delay)."""
        if seconds:
            self._delays[method] = seconds
        else:
            self._delays.pop(method, None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close_subscriptions(self) -> None:
        """Send `xrpc.ch.close` to every subscriber, as Lotus does to a slow one."""
        for sub in self._subscribers:
            sub.send.send_nowait(
                {"jsonrpc": "2.0", "method": "xrpc.ch.close", "params": [sub.channel]}
            )
        self._subscribers.clear()

    def drop_subscriptions(self) -> None:
        """Cut every subscriber's WebSocket without a close message."""
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()

    def _broadcast(self, changes: list[dict[str, Any]]) -> None:
        for sub in self._subscribers:
            sub.send.send_nowait(
                {"jsonrpc": "2.0", "method": "xrpc.ch.val", "params": [sub.channel, changes]}
            )

    # -- endpoints ----------------------------------------------------------
    def api_info(self, *, miner: bool = False, token: str | None = None) -> ApiInfo:
        version = "v0" if miner else "v1"
        hostport = f"127.0.0.1:{self.port}"
        return ApiInfo(
            url=f"http://{hostport}/rpc/{version}",
            ws_url=f"ws://{hostport}/rpc/{version}",
            token=token if token is not None else self.token,
        )

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await nursery.start(self._serve)

    async def go_unreachable(self) -> None:
        """Stop listening (connections are cut; new ones are refused)."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()

    async def come_back(self) -> None:
        """Listen again on the same port."""
        assert self._nursery is not None
        await self._nursery.start(self._serve)

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = log
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    binds = await nursery.start(serve, self._app, config)
                    self.port = int(binds[0].rsplit(":", 1)[1])
                    task_status.started()
        finally:
            self._stopped.set()

    # -- ASGI ---------------------------------------------------------------
    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        headers = dict(scope.get("headers", []))
        return headers.get(b"authorization") == f"Bearer {self.token}".encode()

    async def _app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _answer(self, request: Any) -> tuple[int, dict[str, Any]]:
        rid = request.get("id") if isinstance(request, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        self.calls.append(str(method))
        if method in self._delays:
            await trio.sleep(self._delays[method])
        if method in self._failures:
            code, message = self._failures[method]
            return 500, {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
        results: dict[str, Callable[[], Any]] = {
            "Filecoin.ChainHead": self.tipset,
            "Filecoin.ChainGetGenesis": lambda: tipset_json(
                0, (self.genesis_cid,), (self.genesis_timestamp,)
            ),
            "Filecoin.SyncState": lambda: self.sync_state,
            "Filecoin.StateGetNetworkParams": lambda: {
                "NetworkName": self.network_name,
                "BlockDelaySecs": self.block_delay,
                "ConsensusMinerMinPower": "1000",
                "PreCommitChallengeDelay": 150,
                "AddressNetwork": 1,
                "GenesisTimestamp": self.genesis_timestamp,
            },
            "Filecoin.ActorAddress": lambda: self.miner_address,
            "Filecoin.StateNetworkName": lambda: self.network_name,
        }
        if method not in results:
            return 500, {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32601, "message": f"method '{method}' not found"},
            }
        return 200, {"jsonrpc": "2.0", "id": rid, "result": results[method]()}

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        await self._hold_if_silent()
        if scope["path"] not in ("/rpc/v0", "/rpc/v1") or scope["method"] != "POST":
            status, payload = 404, b"404 page not found\n"
        elif self._auth_status is not None:
            self.calls.append(f"http {self._auth_status}")
            status, payload = self._auth_status, b"JWT Verification failed\n"
        elif not self._authorized(scope):
            status, payload = 401, b"JWT Verification failed\n"
        else:
            try:
                status, answer = await self._answer(json.loads(body))
            except ValueError:
                status, answer = (
                    500,
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "parse error"},
                    },
                )
            payload = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _websocket(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        refused = self._auth_status is not None or not self._authorized(scope)
        if scope["path"] not in ("/rpc/v0", "/rpc/v1") or refused:
            await send({"type": "websocket.close", "code": 1008})  # hypercorn answers 403
            return
        await send({"type": "websocket.accept"})
        outbox_send, outbox = trio.open_memory_channel[dict[str, Any]](1000)
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                async with outbox:
                    async for message in outbox:
                        await self._hold_if_silent()
                        await send({"type": "websocket.send", "text": json.dumps(message)})
                # the test dropped the subscription: cut the connection
                nursery.cancel_scope.cancel()

            nursery.start_soon(writer)
            while True:
                event = await receive()
                if event["type"] != "websocket.receive":
                    nursery.cancel_scope.cancel()
                    return
                request = json.loads(event.get("text") or event.get("bytes") or b"null")
                if request.get("method") == "Filecoin.ChainNotify":
                    self.calls.append("Filecoin.ChainNotify")
                    if "Filecoin.ChainNotify" in self._failures:
                        code, message = self._failures["Filecoin.ChainNotify"]
                        outbox_send.send_nowait(
                            {
                                "jsonrpc": "2.0",
                                "id": request.get("id"),
                                "error": {"code": code, "message": message},
                            }
                        )
                        continue
                    channel = next(self._channels)
                    self.subscriptions_total += 1
                    outbox_send.send_nowait(
                        {"jsonrpc": "2.0", "id": request.get("id"), "result": channel}
                    )
                    outbox_send.send_nowait(
                        {
                            "jsonrpc": "2.0",
                            "method": "xrpc.ch.val",
                            "params": [channel, [{"Type": "current", "Val": self.tipset()}]],
                        }
                    )
                    self._subscribers.append(_Subscriber(channel, outbox_send))
                elif request.get("method") == "xrpc.cancel":
                    self._subscribers = [s for s in self._subscribers if s.send is not outbox_send]
                else:
                    _status, answer = await self._answer(request)
                    try:
                        outbox_send.send_nowait(answer)
                    except trio.ClosedResourceError:
                        return


@pytest.fixture
async def fake_lotus(nursery: trio.Nursery) -> AsyncIterator[FakeLotus]:
    """A running FakeLotus on 127.0.0.1 (no token)."""
    fake = FakeLotus()
    await fake.start(nursery)
    yield fake
