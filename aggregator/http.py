"""The aggregator's HTTP endpoint: a plain ASGI app served by hypercorn's trio worker.

Routes (GET and HEAD only; anything else is 405, an unknown path a JSON 404):
`/metrics` (Prometheus text), `/healthz`, `/readyz` (503 until the app marks itself ready,
i.e. the libp2p listener is up), `/api/v1/nodes`, `/api/v1/nodes/{peer_id}`, `/api/v1/fleet`,
`/api/v1/alerts` (from a provider the alerting plugs in; `[]` by default),
`/api/v1/alerts/leader` (`{"leader": <name>}`: the aggregator that sends the alerts, the
lease holder with --nats-url; null when none is known), `/api/v1/workers`
(the ingest workers: index, pid, up, connections, restarts, beats accepted; worker 0 only
without `--workers`), `/api/v1/propagation?network=<key>&epochs=30` (who saw each recent
tipset how late: aggregator/propagation_api.py) and `/nodes` (the original aggregator's JSON
list of peer ids: here the peers that are up). With the history plugged in (`history`,
aggregator/history_api.py, asked first): `/api/v1/nodes/{peer_id}/history`, `.../history.csv`
and `/api/v1/uptime.csv`, and each node's `uptime`.

`/api/v1/feed` (WebSocket, when the app hands over its bus; 404 otherwise, and 426 to a plain
GET): a live feed of the bus's events, one JSON object per message (`{"type": "beat" |
"connected" | "disconnected", "peer_id", "at", ...}`), optionally for one peer
(`?peer=<peer_id>`); at most 64 clients (more are closed with code 1013), each an optional bus
subscriber that drops (and counts) what it cannot keep up with. See aggregator/feed.py.

The status page (aggregator/statuspage/, `status_page`: private, public or off): `/`, the
fleet page; `/nodes/{peer_id}`, a node's page; `/static/<file>`, its scripts and style;
`/api`, the index of endpoints (always). Public: `/api/v1/nodes`, `/api/v1/nodes/{peer_id}`,
`/api/v1/alerts` and the feed go through `redact_public` (no remote addresses, no source
error texts); off: no page (`/` is a 404).

`/metrics` is gzip-compressed (`Content-Encoding: gzip`) when the request's `Accept-Encoding`
allows gzip (q-values honoured: `gzip;q=0` refuses it) and the body exceeds `gzip_min_bytes`
(1 KiB); its answers always carry `Vary: Accept-Encoding`. Prometheus asks for gzip: at 10,000
nodes the exposition shrinks about 19-fold (docs/CAPACITY.md, 6.). The compression (zlib
level 1) runs in a worker thread: zlib releases the GIL, so the loop keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from aggregator.counters import IngestCounters
from aggregator.feed import FEED_CAPACITY, MAX_FEED_CLIENTS, Feed
from aggregator.metrics import CONTENT_TYPE
from aggregator.propagation_api import PROPAGATION_PATH, propagation_response
from aggregator.statuspage.privacy import redact_public
from aggregator.statuspage.routes import MODES, PageReply, StatusPage
from aggregator.worklink import MergedCounters, worker_zero
from heartbeat.common.asgi import Receive, Scope, Send, bound_port, lifespan, serve_asgi

if TYPE_CHECKING:
    from aggregator.bus import Bus
    from aggregator.fleet import FleetSnapshot, NetworkView, NodeView
    from aggregator.history_api import HistoryApi
    from aggregator.metrics import AggregatorMetrics
    from aggregator.propagation import Propagation

__all__ = [
    "FEED_PATH",
    "GZIP_MIN_BYTES",
    "HttpApi",
    "gzip_accepted",
    "gzip_body",
    "network_json",
    "node_json",
    "serve_http",
]

log = logging.getLogger(__name__)

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_NODE_PREFIX = "/api/v1/nodes/"
FEED_PATH = "/api/v1/feed"

#: Bodies up to this size go out plain: compressing them saves less than the header costs.
GZIP_MIN_BYTES = 1024
#: zlib's fastest level: ~10x smaller exposition text for a fraction of the render's time.
_GZIP_LEVEL = 1
_GZIP_WBITS = 31  # 16 + 15: the gzip container (header and CRC) around a deflate stream
#: RFC 9110 qvalue: 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether an `Accept-Encoding` value allows gzip (RFC 9110, 12.5.3).

    `gzip` (or its alias `x-gzip`) with a q-value above 0 allows it; otherwise `*` with a
    q-value above 0 does, unless gzip is listed with q=0. A malformed q-value counts as 0:
    the plain answer is always acceptable.
    """
    explicit: float | None = None
    wildcard: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        coding = coding.lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
        if coding == "*":
            wildcard = q if wildcard is None else max(wildcard, q)
        else:
            explicit = q if explicit is None else max(explicit, q)
    if explicit is not None:
        return explicit > 0
    return wildcard is not None and wildcard > 0


def node_json(v: NodeView, uptime: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A node as JSON: NodeView's fields, `state` as its value, `head_cids` as a list, and
    `uptime` per window when a provider (aggregator/history_api.py) is given."""
    out = v._asdict()
    out["state"] = v.state.value
    out["head_cids"] = list(v.head_cids)
    if uptime is not None:
        out["uptime"] = uptime(v.peer_id)
    return out


def network_json(n: NetworkView) -> dict[str, Any]:
    return {
        "key": n.key,
        "network": n.name,
        "height": n.height,
        "expected_height": n.expected_height,
        "genesis_timestamp": n.genesis_timestamp,
        "block_delay": n.block_delay,
        "consensus_head": sorted(n.consensus_head) if n.consensus_head else None,
        "consensus_head_hash": n.consensus_head_hash,
        "consensus_votes": n.consensus_votes,
        "nodes_total": n.nodes_total,
        "nodes_up": n.nodes_up,
        "counts": {s.value: c for s, c in n.counts.items()},
        "in_consensus": n.in_consensus,
        "in_dispute": n.in_dispute,
    }


class HttpApi:
    """The ASGI application. The app sets `ready` and may plug in an alerts provider; with a
    `bus`, `/api/v1/feed` serves its events (`max_feed_clients`, `feed_capacity`: feed.py)."""

    def __init__(
        self,
        snapshot_provider: Callable[[], FleetSnapshot],
        metrics: AggregatorMetrics | None = None,
        *,
        alerts_provider: Callable[[], list[Any]] | None = None,
        gzip_min_bytes: int = GZIP_MIN_BYTES,
        bus: Bus | None = None,
        max_feed_clients: int = MAX_FEED_CLIENTS,
        feed_capacity: int = FEED_CAPACITY,
        status_page: str = "private",
    ) -> None:
        if status_page not in MODES:
            raise ValueError(f"status_page must be one of {MODES}, not {status_page!r}")
        self.public = status_page == "public"
        self.snapshot_provider = snapshot_provider
        self.metrics = metrics
        self.alerts_provider = alerts_provider
        self.gzip_min_bytes = gzip_min_bytes
        self.feed = (
            Feed(bus, max_clients=max_feed_clients, capacity=feed_capacity)
            if bus is not None
            else None
        )
        self.workers_provider: Callable[[], list[dict[str, Any]]] | None = None
        #: Which aggregator sends the alerts (`/api/v1/alerts/leader`; the app plugs it in).
        self.alerts_leader: Callable[[], str | None] | None = None
        self.page = StatusPage(
            snapshot_provider,
            self.node_out,
            lambda snap: [network_json(n) for n in snap.networks.values()],
            alerts_provider,
            mode=status_page,
        )
        if self.feed is not None:
            self.feed.public = self.public
            self.feed.nodes_source = self._feed_nodes
        #: `/api/v1/propagation` (aggregator/propagation_api.py) once the app sets it.
        self.propagation: Propagation | None = None
        #: The node history routes and `uptime` (aggregator/history_api.py) once the app sets it.
        self.history: HistoryApi | None = None
        self.ready = False

    def set_ready(self, ready: bool = True) -> None:
        self.ready = ready

    def set_alerts_provider(self, provider: Callable[[], list[Any]] | None) -> None:
        self.alerts_provider = provider
        self.page.alerts_provider = provider

    def node_out(self, v: NodeView) -> dict[str, Any]:
        """A node as the JSON API (and the page) serve it: redacted on a public page."""
        out = node_json(v, self.history.uptime_of if self.history is not None else None)
        return redact_public(out) if self.public else out

    def _feed_nodes(self) -> tuple[float, list[dict[str, Any]], list[dict[str, Any]]]:
        snap = self.snapshot_provider()
        nodes = [self.node_out(v) for v in snap.nodes]
        return snap.taken_at, nodes, [network_json(n) for n in snap.networks.values()]

    def set_workers_provider(self, provider: Callable[[], list[dict[str, Any]]] | None) -> None:
        self.workers_provider = provider

    def _workers(self) -> list[dict[str, Any]]:
        if self.workers_provider is not None:
            return self.workers_provider()
        counters = self.metrics.own.counters if self.metrics is not None else None
        if not isinstance(counters, IngestCounters | MergedCounters):
            counters = IngestCounters()
        return [worker_zero(os.getpid(), counters)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return  # gone before the handshake
        path = _path(scope)
        if path == FEED_PATH and self.feed is not None:
            await self.feed.serve(scope, receive, send)
            return
        status, ctype, body = _json(404, {"error": "not found", "path": path})
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close"})  # before the accept: the server's 403

    async def _http(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        path = _path(scope)
        page: PageReply | None = await self.page.respond(method, path, scope)
        extra: list[tuple[bytes, bytes]] = []
        if page is not None:
            status, ctype, body = page.status, page.content_type, page.body
            extra.extend(page.headers)
        else:
            status, ctype, body = await self._route(
                method, path, scope.get("query_string", b"").decode("latin-1")
            )
        if status == 405:
            extra.append((b"allow", b"GET, HEAD"))
        if status == 426:
            extra.append((b"upgrade", b"websocket"))
        if (path == "/metrics" or (page is not None and page.compressible)) and status == 200:
            if page is None:
                extra.append((b"vary", b"Accept-Encoding"))
            accepted = gzip_accepted(_header(scope, b"accept-encoding"))
            if accepted and len(body) > self.gzip_min_bytes:
                # HEAD too: its headers (length, encoding) must be those GET would send.
                body = await trio.to_thread.run_sync(gzip_body, body)
                extra.append((b"content-encoding", b"gzip"))
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _route(self, method: str, path: str, query: str = "") -> tuple[int, bytes, bytes]:
        if self.history is not None:
            answer = await self.history.route(method, path, query)
            if answer is not None:
                return answer
        known = path in _ROUTES or (path.startswith(_NODE_PREFIX) and len(path) > len(_NODE_PREFIX))
        if path == PROPAGATION_PATH:
            known = self.propagation is not None
        if path == "/metrics" and self.metrics is None:
            known = False
        if path == FEED_PATH and self.feed is None:
            known = False
        if not known:
            return _json(404, {"error": "not found", "path": path})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed", "method": method})
        if path == "/metrics":
            return 200, CONTENT_TYPE.encode(), await self._metrics()
        if path == FEED_PATH:
            return _json(426, {"error": "websocket required", "path": path})
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            return (200, _TEXT, b"ready\n") if self.ready else (503, _TEXT, b"not ready\n")
        if path == "/api/v1/alerts/leader":
            leader = self.alerts_leader() if self.alerts_leader is not None else None
            return _json(200, {"leader": leader})
        if path == "/api/v1/alerts":
            alerts = self.alerts_provider() if self.alerts_provider else []
            if self.public:
                alerts = [redact_public(a) if isinstance(a, dict) else a for a in alerts]
            return _json(200, alerts)
        if path == "/api/v1/workers":
            return _json(200, self._workers())
        snap = self.snapshot_provider()
        if path == PROPAGATION_PATH and self.propagation is not None:
            return _json(*propagation_response(self.propagation, snap, query))
        if path == "/api/v1/nodes":
            return _json(200, [self.node_out(v) for v in snap.nodes])
        if path == "/nodes":
            return _json(200, [v.peer_id for v in snap.nodes if v.up])
        if path == "/api/v1/fleet":
            return _json(
                200,
                {
                    "taken_at": snap.taken_at,
                    "pending_peers": snap.pending_peers,
                    "probation_nodes": snap.probation_nodes,  # not counted in the networks
                    "networks": [network_json(n) for n in snap.networks.values()],
                },
            )
        peer_id = unquote(path[len(_NODE_PREFIX) :])
        view = snap.node(peer_id)
        if view is None:
            return _json(404, {"error": "unknown peer", "peer_id": peer_id})
        return _json(200, self.node_out(view))

    async def _metrics(self) -> bytes:
        assert self.metrics is not None
        prepared = self.metrics.prepare()
        # Rendered on the loop in batches, yielding between them: at 10,000 nodes under load
        # this beat a worker thread fighting the loop for the GIL (docs/CAPACITY.md, 6.).
        return await self.metrics.render_prepared_chunked(prepared, partial(trio.sleep, 0))


_ROUTES = frozenset(
    {
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/nodes",
        "/api/v1/fleet",
        "/api/v1/alerts",
        "/api/v1/alerts/leader",
        "/api/v1/workers",
        "/nodes",
        FEED_PATH,
    }
)


def gzip_body(body: bytes) -> bytes:
    """`body` as one gzip member at zlib's fastest level (blocking: call in a worker thread)."""
    return zlib.compress(body, _GZIP_LEVEL, _GZIP_WBITS)


def _path(scope: Scope) -> str:
    """The request's path without trailing slashes ("/" stays "/")."""
    path: str = scope.get("path", "/")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path


def _header(scope: Scope, name: bytes) -> str:
    """A request header's values joined by commas ("" when absent); `name` in lower case."""
    values = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    return b",".join(values).decode("latin-1")


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, _JSON, json.dumps(payload, default=str).encode()


async def serve_http(
    app: HttpApi,
    host: str,
    port: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled (or `shutdown_trigger` returns); reports the bound port."""
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve_asgi, app, host, port, shutdown_trigger=shutdown_trigger)
        )
        bound = bound_port(binds[0])
        log.info("http_listening host=%s port=%d", host, bound)
        task_status.started(bound)
