"""Whole pages: the fleet, a node, the unknown-node page, and the index of endpoints. Pure.

Each page is the base template around its part; `$`-placeholders (string.Template) only ever
receive escaped text or markup built here from escaped text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

from aggregator.statuspage.assets import Assets
from aggregator.statuspage.fleet_page import alerts_html, network_html, table_head
from aggregator.statuspage.format import STATE_ORDER, state_word
from aggregator.statuspage.node_page import details_html, errors_html, uptime_html

__all__ = ["ENDPOINTS", "PAGE_PATHS", "api_index", "fleet_page", "node_page", "not_found_page"]

#: (path, what it serves): the footer's list and `GET /api`.
ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("/", "this status page (HTML)"),
    ("/nodes/{peer_id}", "one node's page (HTML)"),
    ("/api", "this index of endpoints (JSON)"),
    ("/api/v1/fleet", "the networks: height, expected height, consensus head, counts"),
    ("/api/v1/nodes", "every node (JSON)"),
    ("/api/v1/nodes/{peer_id}", "one node (JSON)"),
    ("/api/v1/nodes/{peer_id}/history", "one node's transitions and heights (?since=&until=)"),
    ("/api/v1/nodes/{peer_id}/history.csv", "the same as CSV"),
    ("/api/v1/uptime.csv", "uptime per node (?window=7d)"),
    ("/api/v1/propagation", "who saw each recent tipset how late (?network=&epochs=)"),
    ("/api/v1/alerts", "pending and firing alerts"),
    ("/api/v1/workers", "the ingest workers"),
    ("/api/v1/feed", "live events over WebSocket (?peer=, ?mode=nodes: one update/node/s)"),
    ("/metrics", "Prometheus exposition"),
    ("/healthz", "liveness"),
    ("/readyz", "readiness"),
    ("/nodes", "peer ids that are up (JSON, the original aggregator's)"),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


#: The pages among ENDPOINTS (not served with `--status-page off`).
PAGE_PATHS = frozenset({"/", "/nodes/{peer_id}"})


def api_index(*, pages: bool = True) -> dict[str, Any]:
    """`GET /api`: every endpoint (without the pages when there are none)."""
    return {
        "endpoints": [
            {"path": p, "description": d} for p, d in ENDPOINTS if pages or p not in PAGE_PATHS
        ]
    }


def _endpoints_html() -> str:
    items = []
    for path, what in ENDPOINTS:
        link = path if "{" not in path else None
        shown = (
            f'<a href="{_e(link)}"><code>{_e(path)}</code></a>'
            if link
            else f"<code>{_e(path)}</code>"
        )
        items.append(f"<li>{shown} — {_e(what)}</li>")
    return '<ul class="endpoints">' + "".join(items) + "</ul>"


def _page(
    assets: Assets,
    *,
    title: str,
    page: str,
    script: str,
    public: bool,
    taken_at: float,
    main: str,
    body_attrs: Mapping[str, str] | None = None,
    leader: str | None = None,
) -> str:
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (body_attrs or {}).items())
    mode = "public" if public else "private"
    return assets.templates["base"].substitute(
        title=_e(title),
        css_version=assets.version("app.css"),
        nojs_version=assets.version("nojs.css"),
        script=script,
        script_version=assets.version(script),
        page=page,
        mode=mode,
        mode_text="public view" if public else "private view",
        # with several aggregators (--nats-url): which one sends the alerts
        leader=f'<span class="leader">alerts sent by {_e(leader)}</span>' if leader else "",
        body_attrs=attrs,
        taken_at=_e(time.strftime("%H:%M:%S UTC", time.gmtime(taken_at))),
        main=main,
        endpoints=_endpoints_html(),
    )


def fleet_page(
    assets: Assets,
    *,
    networks: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    rows: Iterable[str],
    node_count: int,
    taken_at: float,
    public: bool,
    leader: str | None = None,
) -> str:
    """The fleet page around already rendered rows (`fleet_page.node_row`); `leader`: the
    aggregator that sends the alerts (shown in the header when given)."""
    options = "".join(f'<option value="{_e(s)}">{_e(state_word(s))}</option>' for s in STATE_ORDER)
    cards = "".join(network_html(n, alerts, taken_at) for n in networks)
    main = assets.templates["fleet"].substitute(
        networks=cards or '<p class="quiet">No network yet: no node has beaten.</p>',
        alerts=alerts_html(alerts),
        node_count=f"{node_count} nodes",
        state_options=options,
        head=table_head(),
        rows="\n".join(rows),
        empty='<p class="quiet" id="empty">No node yet.</p>' if node_count == 0 else "",
    )
    return _page(
        assets,
        title="fil-heartbeat — fleet",
        page="fleet",
        script="app.js",
        public=public,
        taken_at=taken_at,
        main=main,
        body_attrs={"nodes": str(node_count), "now": str(taken_at)},
        leader=leader,
    )


def node_page(assets: Assets, node: Mapping[str, Any], *, taken_at: float, public: bool) -> str:
    peer = str(node.get("peer_id", ""))
    nickname = str(node.get("nickname") or "") or peer
    state = str(node.get("state", ""))
    history = "/api/v1/nodes/" + quote(peer, safe="") + "/history"
    main = assets.templates["node"].substitute(
        nickname=_e(nickname),
        state=_e(state),
        state_word=_e(state_word(state)),
        details=details_html(node, taken_at),
        uptime=uptime_html(node),
        history_url=_e(history),
        errors=errors_html(node),
    )
    return _page(
        assets,
        title=f"fil-heartbeat — {nickname}",
        page="node",
        script="node.js",
        public=public,
        taken_at=taken_at,
        main=main,
        body_attrs={"peer": peer, "now": str(taken_at)},
    )


def not_found_page(assets: Assets, peer_id: str, *, taken_at: float, public: bool) -> str:
    main = assets.templates["notfound"].substitute(peer_id=_e(peer_id))
    return _page(
        assets,
        title="fil-heartbeat — unknown node",
        page="notfound",
        script="app.js",
        public=public,
        taken_at=taken_at,
        main=main,
    )
