"""The status page's routes, plugged into aggregator/http.py's `HttpApi`.

`StatusPage.respond(method, path, scope)` answers `/`, `/nodes/{peer_id}`, `/static/<file>`
and `/api` (the index of endpoints, JSON; served whatever the mode), or returns None for
every other path (http.py's routes). Mode `off` answers only `/api`: `/` is then http.py's
JSON 404. GET and HEAD only (405 otherwise).

Caching: pages are `no-cache` (they are live); a static file asked for with its current
`?v=<version>` (as the pages link it) is `immutable` for a year, otherwise `no-cache`; both
carry an ETag and answer a matching `If-None-Match` with 304. Pages carry a strict
Content-Security-Policy (no inline script or style: the scripts are files under /static).
Large pages are rendered in chunks, yielding to the loop between them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import trio

from aggregator.statuspage.assets import Assets
from aggregator.statuspage.fleet_page import node_row
from aggregator.statuspage.pages import api_index, fleet_page, node_page, not_found_page
from aggregator.statuspage.privacy import redact_public

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot, NodeView
    from heartbeat.common.asgi import Scope

__all__ = ["MODES", "PageReply", "StatusPage"]

MODES = ("private", "public", "off")
_HTML = b"text/html; charset=utf-8"
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_NO_CACHE = b"no-cache"
_IMMUTABLE = b"public, max-age=31536000, immutable"
_NODE_PAGE = "/nodes/"
_STATIC = "/static/"
#: Rows rendered between two yields to the loop.
ROWS_PER_CHUNK = 500


@dataclass(frozen=True, slots=True)
class PageReply:
    status: int
    content_type: bytes
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: http.py gzips it when the client accepts gzip.
    compressible: bool = False


@dataclass
class StatusPage:
    """The page over the app's providers. `node_dict` gives a node as the JSON API has it
    (`node_json` plus what hooks add, redacted when public)."""

    snapshot_provider: Callable[[], FleetSnapshot]
    node_dict: Callable[[NodeView], dict[str, Any]]
    network_dicts: Callable[[FleetSnapshot], list[dict[str, Any]]]
    alerts_provider: Callable[[], list[Any]] | None = None
    mode: str = "private"
    #: Which aggregator sends the alerts (--nats-url: the lease holder), for the header.
    alerts_leader: Callable[[], str | None] | None = None
    assets: Assets = field(default_factory=Assets.load)

    @property
    def public(self) -> bool:
        return self.mode == "public"

    def _alerts(self) -> list[dict[str, Any]]:
        alerts = self.alerts_provider() if self.alerts_provider is not None else []
        out = [a for a in alerts if isinstance(a, dict)]
        return [redact_public(a) for a in out] if self.public else out

    async def respond(self, method: str, path: str, scope: Scope) -> PageReply | None:
        if path == "/api":
            if method not in ("GET", "HEAD"):
                return _not_allowed(method)
            body = json.dumps(api_index(pages=self.mode != "off")).encode()
            return PageReply(200, b"application/json", body, [(b"cache-control", _NO_CACHE)])
        if self.mode == "off":
            return None
        is_page = path == "/" or (path.startswith(_NODE_PAGE) and len(path) > len(_NODE_PAGE))
        is_static = path.startswith(_STATIC)
        if not (is_page or is_static):
            return None
        if method not in ("GET", "HEAD"):
            return _not_allowed(method)
        if is_static:
            return self._static(path[len(_STATIC) :], scope)
        if path == "/":
            return await self._fleet()
        return self._node(unquote(path[len(_NODE_PAGE) :]))

    async def _fleet(self) -> PageReply:
        snap = self.snapshot_provider()
        nodes = [self.node_dict(v) for v in snap.nodes]
        # Pinned and filtered in the browser; here the worst states first, then by nickname.
        nodes.sort(key=_fleet_order)
        rows: list[str] = []
        for start in range(0, len(nodes), ROWS_PER_CHUNK):
            rows.extend(node_row(n, snap.taken_at) for n in nodes[start : start + ROWS_PER_CHUNK])
            if len(nodes) > ROWS_PER_CHUNK:
                await trio.sleep(0)
        html = fleet_page(
            self.assets,
            networks=self.network_dicts(snap),
            alerts=self._alerts(),
            rows=rows,
            node_count=len(nodes),
            taken_at=snap.taken_at,
            public=self.public,
            leader=self.alerts_leader() if self.alerts_leader is not None else None,
        )
        return _html(200, html)

    def _node(self, peer_id: str) -> PageReply:
        snap = self.snapshot_provider()
        view = snap.node(peer_id)
        if view is None:
            page = not_found_page(self.assets, peer_id, taken_at=snap.taken_at, public=self.public)
            return _html(404, page)
        node = self.node_dict(view)
        page = node_page(self.assets, node, taken_at=snap.taken_at, public=self.public)
        return _html(200, page)

    def _static(self, name: str, scope: Scope) -> PageReply:
        asset = self.assets.static.get(name)
        if asset is None:
            return PageReply(
                404, b"text/plain; charset=utf-8", b"not found\n", [(b"cache-control", _NO_CACHE)]
            )
        wanted = _query(scope, "v")
        cache = _IMMUTABLE if wanted == asset.version else _NO_CACHE
        headers = [
            (b"cache-control", cache),
            (b"etag", asset.etag.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"vary", b"Accept-Encoding"),
        ]
        if asset.etag in _if_none_match(scope):
            return PageReply(304, asset.content_type.encode(), b"", headers)
        return PageReply(200, asset.content_type.encode(), asset.body, headers, compressible=True)


_RANK = {s: i for i, s in enumerate(("down", "source_down", "forked", "stalled", "lagging"))}


def _fleet_order(node: dict[str, Any]) -> tuple[int, str, str]:
    return (
        _RANK.get(str(node.get("state")), 9),
        str(node.get("nickname") or "").lower(),
        str(node.get("peer_id")),
    )


def _html(status: int, page: str) -> PageReply:
    headers = [
        (b"cache-control", _NO_CACHE),
        (b"content-security-policy", _CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"vary", b"Accept-Encoding"),
    ]
    return PageReply(status, _HTML, page.encode(), headers, compressible=True)


def _not_allowed(method: str) -> PageReply:
    body = json.dumps({"error": "method not allowed", "method": method}).encode()
    return PageReply(405, b"application/json", body)  # http.py adds `Allow` to every 405


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[-1] if values else None


def _if_none_match(scope: Scope) -> set[str]:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"if-none-match"]
    tags = b",".join(values).decode("latin-1")
    return {t.strip().removeprefix("W/") for t in tags.split(",") if t.strip()}
