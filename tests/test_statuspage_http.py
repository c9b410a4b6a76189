"""The status page over HTTP: a real hypercorn on 127.0.0.1 (port 0) serving `HttpApi`,
queried with httpx: routes, content types, caching headers, 404s, gzip, the three modes."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from aggregator.fleet import Fleet
from aggregator.http import HttpApi, serve_http
from aggregator.networks import MAINNET_GENESIS_CID
from aggregator.statuspage.routes import ROWS_PER_CHUNK
from heartbeat.protocol.wire import Beat
from tests.test_http import T0, make_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@asynccontextmanager
async def page_client(
    fleet: Fleet | None = None, **kwargs: str
) -> AsyncIterator[httpx.AsyncClient]:
    fleet = fleet if fleet is not None else make_fleet()
    api = HttpApi(lambda: fleet.snapshot(T0 + 2), **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, api, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
        nursery.cancel_scope.cancel()


def big_fleet(n: int) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        pid = f"12D3KooWpeer{i:05d}"
        fleet.on_connect(pid, f"/ip4/10.1.{i // 250}.{i % 250}/tcp/1", T0)
        beat = Beat(
            head="{bafy2bzaceaaa}",
            height=100,
            nickname=f"node-{i}",
            miner_address="f0" + str(1000 + i),
            genesis_cid=MAINNET_GENESIS_CID,
        )
        fleet.on_beat(pid, beat, T0)
    return fleet


async def test_the_fleet_page() -> None:
    async with page_client() as client:
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        html = r.text
        # One row per node, linking to its page; the down one says so.
        peers = re.findall(r'<tr data-peer="([^"]+)" data-state="(\w+)"', html)
        assert sorted(peers) == [("peer1", "in_consensus"), ("peer2", "forked"), ("peer3", "down")]
        for peer in ("peer1", "peer2", "peer3"):
            assert f'href="/nodes/{peer}"' in html
        assert "/ip4/10.0.0.1" not in html  # the table never shows addresses
        # The index of endpoints in the footer.
        assert 'href="/metrics"' in html and "/api/v1/feed" in html
        head = await client.head("/")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == r.headers["content-length"]


async def test_node_pages_and_the_404_page() -> None:
    async with page_client() as client:
        r = await client.get("/nodes/peer1")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'data-peer="peer1"' in r.text and "/ip4/10.0.0.1/tcp/1" in r.text
        assert "/api/v1/nodes/peer1/history" in r.text
        missing = await client.get("/nodes/nobody")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "text/html; charset=utf-8"
        assert "Unknown node" in missing.text and "nobody" in missing.text
        # The JSON API is untouched: its own 404.
        api = await client.get("/api/v1/nodes/nobody")
        assert api.status_code == 404 and api.json()["error"] == "unknown peer"


async def test_static_files_types_caching_and_304() -> None:
    async with page_client() as client:
        html = (await client.get("/")).text
        js_url = re.search(r'src="(/static/app\.js\?v=[0-9a-f]{12})"', html)
        css_url = re.search(r'href="(/static/app\.css\?v=[0-9a-f]{12})"', html)
        assert js_url and css_url
        js = await client.get(js_url.group(1))
        assert js.status_code == 200
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "summarised feed" in js.text
        css = await client.get(css_url.group(1))
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        # Without the current version: revalidated, by its ETag.
        plain = await client.get("/static/app.js")
        assert plain.headers["cache-control"] == "no-cache"
        etag = plain.headers["etag"]
        again = await client.get("/static/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        stale = await client.get("/static/app.js", headers={"If-None-Match": '"0123"'})
        assert stale.status_code == 200
        node_js = await client.get("/static/node.js")
        assert node_js.status_code == 200
        for path in ("/static/nope.js", "/static/../http.py", "/static/"):
            assert (await client.get(path)).status_code == 404, path
        post = await client.post("/")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_api_index() -> None:
    async with page_client() as client:
        r = await client.get("/api")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        paths = {e["path"] for e in r.json()["endpoints"]}
        assert {"/metrics", "/api/v1/nodes", "/api/v1/fleet", "/api/v1/feed", "/"} <= paths


async def test_a_big_page_is_gzipped_when_asked() -> None:
    async with page_client(big_fleet(ROWS_PER_CHUNK * 2 + 1)) as client:
        r = await client.get("/", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding"
        assert r.text.count("<tr data-peer=") == ROWS_PER_CHUNK * 2 + 1
        raw = await client.get("/", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers
        assert int(raw.headers["content-length"]) > 5 * len(gzip.compress(raw.content))


async def test_public_mode_hides_addresses_in_the_pages_and_their_json() -> None:
    async with page_client(status_page="public") as client:
        html = (await client.get("/")).text + (await client.get("/nodes/peer1")).text
        assert "10.0.0.1" not in html
        assert "public view" in html
        nodes = (await client.get("/api/v1/nodes")).json()
        assert len(nodes) == 3
        assert all("remote_address" not in n and "source_error" not in n for n in nodes)
        one = (await client.get("/api/v1/nodes/peer1")).json()
        assert "remote_address" not in one and one["miner_address"] == ""
    async with page_client(status_page="private") as client:
        assert (await client.get("/api/v1/nodes/peer1")).json()["remote_address"]


async def test_off_serves_no_page() -> None:
    async with page_client(status_page="off") as client:
        for path in ("/", "/nodes/peer1", "/static/app.js"):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/json"
        index = await client.get("/api")
        assert index.status_code == 200
        paths = {e["path"] for e in index.json()["endpoints"]}
        assert "/" not in paths and "/api/v1/nodes" in paths
        assert (await client.get("/api/v1/nodes")).status_code == 200


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="status_page"):
        HttpApi(lambda: make_fleet().snapshot(T0), status_page="secret")
