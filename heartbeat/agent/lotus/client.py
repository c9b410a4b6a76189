"""Async JSON-RPC client for the Lotus API over HTTP (httpx, works under trio).

The only importer of httpx. Every call runs under a deadline; transport, HTTP and JSON
failures are translated here, at one boundary, into the `HeadSourceError` family:
`NodeUnauthorized` (HTTP 401/403: the token or its permission), `NodeTimeout` (no answer
in time), `NodeUnreachable` (refused, reset, DNS, TLS; an HTTP error status without a
JSON-RPC body, as a proxy in front of a dead node sends), `NodeRpcError` (a JSON-RPC error,
which Lotus sends with HTTP 500, so the body is parsed whatever the status) and
`NodeBadResponse` (anything that is not the documented shape). Each failure's text is
short and names its cause (`ChainHead: connection refused (127.0.0.1:1234)`), because it
goes on the wire as the beat's SourceError. Calls are counted in an optional `RpcStats`.
The tipset and result parsers are pure functions.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit

import httpx
import trio

from heartbeat.agent.head import (
    Head,
    HeadSourceError,
    NodeBadResponse,
    NodeRpcError,
    NodeTimeout,
    NodeUnauthorized,
    NodeUnreachable,
)
from heartbeat.agent.health import kind_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from heartbeat.agent.lotus.apiinfo import ApiInfo
    from heartbeat.agent.rpcstats import RpcStats

__all__ = [
    "ActiveSync",
    "LotusClient",
    "NetworkParams",
    "auth_headers",
    "connect_cause",
    "parse_active_syncs",
    "parse_network_params",
    "parse_tipset",
]

log = logging.getLogger(__name__)

_MAX_RESPONSE = 4 * 1024 * 1024  # a ChainHead with many blocks is well under this


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """What `Filecoin.StateGetNetworkParams` says about the network's timing."""

    network_name: str
    block_delay: float  # seconds per epoch
    genesis_timestamp: int | None  # unix s; older nodes may not report it


@dataclass(frozen=True, slots=True)
class ActiveSync:
    """One entry of `Filecoin.SyncState` ActiveSyncs."""

    stage: int  # 0 idle, 1 headers, 2 persist headers, 3 messages, 4 complete, 5 error, 6 fetch
    height: int
    target_height: int | None
    base_height: int | None


def auth_headers(info: ApiInfo) -> dict[str, str]:
    """The Authorization header for an endpoint, if it has a token."""
    return {"Authorization": f"Bearer {info.token}"} if info.token else {}


def connect_cause(exc: BaseException) -> str:
    """A short name for why a connection failed, from the exception's type and causes."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return "DNS lookup failed"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(seen, httpx.RemoteProtocolError):
            return "connection closed without an answer"
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]  # trio's "all attempts to connect failed"
            continue
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tipset(obj: object, *, what: str = "tipset") -> Head:
    """A Lotus TipSet JSON object -> Head(cids in order, height, min block timestamp)."""
    if not isinstance(obj, dict):
        raise NodeBadResponse(f"{what}: expected an object, got {type(obj).__name__}")
    cids_raw = obj.get("Cids")
    if not isinstance(cids_raw, list) or not cids_raw:
        raise NodeBadResponse(f"{what}: Cids must be a non-empty list")
    cids: list[str] = []
    for item in cids_raw:
        cid = item.get("/") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not cid:
            raise NodeBadResponse(f"{what}: bad CID entry {item!r:.80}")
        cids.append(cid)
    height = obj.get("Height")
    if not _is_int(height) or not 0 <= height < 2**63:
        raise NodeBadResponse(f"{what}: bad Height {height!r:.40}")
    timestamp: int | None = None
    blocks = obj.get("Blocks")
    if blocks is not None:
        if not isinstance(blocks, list):
            raise NodeBadResponse(f"{what}: Blocks must be a list")
        stamps: list[int] = []
        for block in blocks:
            stamp = block.get("Timestamp") if isinstance(block, dict) else None
            if not _is_int(stamp) or stamp < 0:
                raise NodeBadResponse(f"{what}: bad block Timestamp")
            stamps.append(stamp)
        timestamp = min(stamps) if stamps else None
    return Head(cids=tuple(cids), height=height, timestamp=timestamp)


def _optional_height(ts: object, what: str) -> int | None:
    if ts is None:
        return None
    return parse_tipset(ts, what=what).height


def parse_active_syncs(result: object) -> list[ActiveSync]:
    """`Filecoin.SyncState` result -> its active syncs."""
    if not isinstance(result, dict):
        raise NodeBadResponse("SyncState: expected an object")
    syncs = result.get("ActiveSyncs") or []
    if not isinstance(syncs, list):
        raise NodeBadResponse("SyncState: ActiveSyncs must be a list")
    out: list[ActiveSync] = []
    for s in syncs:
        if not isinstance(s, dict) or not _is_int(s.get("Stage")) or not _is_int(s.get("Height")):
            raise NodeBadResponse(f"SyncState: bad entry {s!r:.80}")
        out.append(
            ActiveSync(
                stage=s["Stage"],
                height=s["Height"],
                target_height=_optional_height(s.get("Target"), "SyncState Target"),
                base_height=_optional_height(s.get("Base"), "SyncState Base"),
            )
        )
    return out


def parse_network_params(result: object) -> NetworkParams:
    """`Filecoin.StateGetNetworkParams` result -> NetworkParams."""
    if not isinstance(result, dict):
        raise NodeBadResponse("StateGetNetworkParams: expected an object")
    name = result.get("NetworkName")
    delay = result.get("BlockDelaySecs")
    genesis = result.get("GenesisTimestamp")
    if not isinstance(name, str):
        raise NodeBadResponse("StateGetNetworkParams: bad NetworkName")
    if not _is_int(delay) or delay <= 0:
        raise NodeBadResponse(f"StateGetNetworkParams: bad BlockDelaySecs {delay!r:.40}")
    if genesis is not None and (not _is_int(genesis) or genesis < 0):
        raise NodeBadResponse(f"StateGetNetworkParams: bad GenesisTimestamp {genesis!r:.40}")
    return NetworkParams(network_name=name, block_delay=float(delay), genesis_timestamp=genesis)


class LotusClient:
    """JSON-RPC over HTTP to one Lotus endpoint; use as an async context manager."""

    def __init__(self, info: ApiInfo, timeout: float = 5.0, stats: RpcStats | None = None) -> None:
        self.info = info
        self.timeout = timeout
        self.stats = stats
        self._where = urlsplit(info.url).netloc
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(
            headers={"Content-Type": "application/json", **auth_headers(info)},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )

    async def __aenter__(self) -> LotusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call one method and return its `result`, or raise a `HeadSourceError`."""
        started = trio.current_time()
        answered = False
        try:
            response = await self._post(method, params)
            answered = True
            return self._result(method, response)
        except HeadSourceError as exc:
            if self.stats is not None:
                self.stats.failed(kind_of(exc))
            raise
        finally:
            if answered and self.stats is not None:
                self.stats.answered(method, trio.current_time() - started)

    async def _post(self, method: str, params: Sequence[Any]) -> tuple[int, int, bytes]:
        request_id = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        try:
            with trio.fail_after(self.timeout):
                response = await self._http.post(self.info.url, json=payload)
                body = response.content
        except trio.TooSlowError as exc:
            raise NodeTimeout(f"{method}: no answer within {self.timeout:g}s") from exc
        except httpx.TimeoutException as exc:
            raise NodeTimeout(f"{method}: no answer within {self.timeout:g}s") from exc
        except httpx.DecodingError as exc:
            raise NodeBadResponse(f"{method}: undecodable body: {exc}") from exc
        except (httpx.RequestError, OSError) as exc:
            raise NodeUnreachable(f"{method}: {connect_cause(exc)} ({self._where})") from exc
        return request_id, response.status_code, body

    def _result(self, method: str, response: tuple[int, int, bytes]) -> Any:
        request_id, status, body = response
        if status in (401, 403):
            raise NodeUnauthorized(method, status)
        if len(body) > _MAX_RESPONSE:
            raise NodeBadResponse(f"{method}: response of {len(body)} bytes is too large")
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            if status != 200:  # a proxy's error page, a wrong path: not the Lotus API
                raise NodeUnreachable(f"{method}: http {status} ({self._where})") from exc
            raise NodeBadResponse(f"{method}: http {status}, not JSON: {body[:80]!r}") from exc
        if not isinstance(decoded, dict):
            raise NodeBadResponse(f"{method}: http {status}, not a JSON-RPC object")
        error = decoded.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise NodeBadResponse(f"{method}: http {status}, bad error member")
            code = error.get("code")
            message = error.get("message")
            raise NodeRpcError(
                method,
                code if _is_int(code) else 0,
                message if isinstance(message, str) else repr(message),
            )
        if status != 200:
            raise NodeUnreachable(f"{method}: http {status} without a JSON-RPC error")
        if decoded.get("id") != request_id or "result" not in decoded:
            raise NodeBadResponse(f"{method}: response without result or with a wrong id")
        return decoded["result"]

    async def chain_head(self) -> Head:
        """`Filecoin.ChainHead` -> Head (cids, height, timestamp)."""
        result = await self.call("Filecoin.ChainHead")
        if result is None:
            raise NodeBadResponse("ChainHead: the node answered without a head")
        return parse_tipset(result, what="ChainHead")

    async def state_network_name(self) -> str:
        """`Filecoin.StateNetworkName` -> e.g. "mainnet", "calibrationnet"."""
        result = await self.call("Filecoin.StateNetworkName")
        if not isinstance(result, str) or not result:
            raise NodeBadResponse("StateNetworkName: expected a non-empty string")
        return result

    async def sync_state(self) -> list[ActiveSync]:
        """`Filecoin.SyncState` -> the active syncs."""
        return parse_active_syncs(await self.call("Filecoin.SyncState"))

    async def network_params(self) -> NetworkParams:
        """`Filecoin.StateGetNetworkParams` -> NetworkParams."""
        return parse_network_params(await self.call("Filecoin.StateGetNetworkParams"))

    async def chain_get_genesis(self) -> str:
        """`Filecoin.ChainGetGenesis` -> the genesis CID."""
        head = parse_tipset(await self.call("Filecoin.ChainGetGenesis"), what="ChainGetGenesis")
        return head.cids[0]

    async def actor_address(self) -> str:
        """lotus-miner `Filecoin.ActorAddress` -> the miner address text (not yet validated)."""
        result = await self.call("Filecoin.ActorAddress")
        if not isinstance(result, str):
            raise NodeBadResponse("ActorAddress: expected a string")
        return result
