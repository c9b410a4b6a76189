"""gzip on /metrics: the Accept-Encoding parser, then a real hypercorn (127.0.0.1, port 0)
queried with httpx reading the raw (undecoded) bytes, and a real Prometheus scraping it."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.http import GZIP_MIN_BYTES, HttpApi, gzip_accepted, serve_http
from aggregator.metrics import create_metrics
from heartbeat.common.asgi import Receive, Scope, Send, bound_port, serve_asgi
from tests.helpers import eventually
from tests.promservers import prometheus
from tests.test_http import T0, make_fleet


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("br;q=1, gzip;q=0.001", True),
        ("gzip ; q=0.5", True),
        ("gzip;q=1.000", True),
        ("*", True),
        ("deflate, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;Q=0", False),
        ("gzip;q=0, *", False),  # an explicit refusal beats the wildcard
        ("*;q=0", False),
        ("gzip;q=abc", False),  # malformed q-values count as 0: plain is always safe
        ("gzip;q=1.5", False),
        ("gzip;q=0.0001", False),
    ],
)
def test_gzip_accepted(header: str, accepted: bool) -> None:
    assert gzip_accepted(header) is accepted


def _api(**kwargs: Any) -> HttpApi:
    fleet = make_fleet()

    def provider():  # type: ignore[no-untyped-def]
        return fleet.snapshot(T0 + 2)

    # without process_* (CPU seconds change between two scrapes): bodies compared exactly
    return HttpApi(provider, create_metrics(provider, process=False), **kwargs)


@contextlib.asynccontextmanager
async def serving(api: HttpApi) -> AsyncIterator[httpx.AsyncClient]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, api, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
        nursery.cancel_scope.cancel()


async def raw_get(
    client: httpx.AsyncClient, path: str, accept_encoding: str | None, method: str = "GET"
) -> tuple[httpx.Headers, bytes]:
    """The response's headers and its body exactly as sent (httpx does not decode it)."""
    request = client.build_request(method, path)
    if accept_encoding is None:
        del request.headers["accept-encoding"]  # httpx adds one by default
    else:
        request.headers["accept-encoding"] = accept_encoding
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.headers, raw


@pytest.mark.integration
async def test_gzip_answer_decompresses_to_exactly_the_plain_answer() -> None:
    async with serving(_api()) as client:
        plain_headers, plain = await raw_get(client, "/metrics", "identity")
        headers, raw = await raw_get(client, "/metrics", "gzip")
    assert len(plain) > GZIP_MIN_BYTES  # the fixture's body is worth compressing
    assert "content-encoding" not in plain_headers
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == plain_headers["vary"] == "Accept-Encoding"
    assert headers["content-type"] == plain_headers["content-type"]
    assert int(headers["content-length"]) == len(raw) < len(plain)
    assert raw[:2] == b"\x1f\x8b"  # a gzip member, not a bare zlib/deflate stream
    assert gzip.decompress(raw) == plain


@pytest.mark.integration
@pytest.mark.parametrize("accept_encoding", [None, "gzip;q=0", "gzip;q=0, *", "br, deflate"])
async def test_plain_when_gzip_is_not_accepted(accept_encoding: str | None) -> None:
    async with serving(_api()) as client:
        _, plain = await raw_get(client, "/metrics", "identity")
        headers, body = await raw_get(client, "/metrics", accept_encoding)
    assert "content-encoding" not in headers
    assert headers["vary"] == "Accept-Encoding"
    assert body == plain and body.startswith(b"# HELP ")


@pytest.mark.integration
async def test_head_announces_what_get_sends() -> None:
    async with serving(_api()) as client:
        get_headers, raw = await raw_get(client, "/metrics", "gzip")
        head_headers, head_body = await raw_get(client, "/metrics", "gzip", method="HEAD")
        _, plain = await raw_get(client, "/metrics", None)
        plain_head, plain_head_body = await raw_get(client, "/metrics", None, method="HEAD")
    assert head_body == b"" and plain_head_body == b""
    assert head_headers["content-encoding"] == "gzip"
    assert int(head_headers["content-length"]) == int(get_headers["content-length"]) == len(raw)
    assert "content-encoding" not in plain_head
    assert int(plain_head["content-length"]) == len(plain)


@pytest.mark.integration
async def test_small_bodies_and_other_routes_stay_plain() -> None:
    async with serving(_api()) as client:
        _, plain = await raw_get(client, "/metrics", "identity")
    # The threshold is strict: a body of exactly gzip_min_bytes goes out plain, one byte more
    # is compressed.
    async with serving(_api(gzip_min_bytes=len(plain))) as client:
        headers, body = await raw_get(client, "/metrics", "gzip")
        assert "content-encoding" not in headers and body == plain
        assert headers["vary"] == "Accept-Encoding"
        headers, body = await raw_get(client, "/api/v1/nodes", "gzip")
        assert "content-encoding" not in headers and "vary" not in headers
        assert body.startswith(b"[")
    async with serving(_api(gzip_min_bytes=len(plain) - 1)) as client:
        headers, body = await raw_get(client, "/metrics", "gzip")
        assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == plain


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.requires_tools("prometheus")
async def test_prometheus_scrapes_the_gzipped_metrics(tmp_path: Path) -> None:
    """Prometheus asks for gzip, gets it, and stores the values the plain text carries."""
    api = _api()
    scrapes: list[tuple[str, str]] = []  # (accept-encoding asked, content-encoding answered)
    scraped = trio.Event()

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await api(scope, receive, send)
            return
        asked = b",".join(v for k, v in scope["headers"] if k == b"accept-encoding").decode()

        async def send_recorded(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered = dict(message["headers"]).get(b"content-encoding", b"").decode()
                scrapes.append((asked, answered))
            await send(message)

        await api(scope, receive, send_recorded)
        scraped.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_asgi, recording, "127.0.0.1", 0)
        target = f"127.0.0.1:{bound_port(binds[0])}"
        with contextlib.ExitStack() as stack:
            # Prometheus's start-up helper blocks (a subprocess, polled): off the loop, which
            # must keep serving the scrapes meanwhile.
            server = await trio.to_thread.run_sync(
                stack.enter_context, prometheus(tmp_path, targets=[target])
            )
            try:
                with trio.fail_after(30):
                    await scraped.wait()
                query = f"{server.url}/api/v1/query"
                async with httpx.AsyncClient(timeout=5) as client:

                    async def in_consensus() -> list[Any]:
                        r = await client.get(
                            query, params={"query": "fil_heartbeat_nodes_in_consensus"}
                        )
                        result: list[Any] = r.json()["data"]["result"]
                        return result

                    (sample,) = await eventually(in_consensus, timeout=20)
            finally:
                await trio.to_thread.run_sync(stack.close)
        nursery.cancel_scope.cancel()
    assert sample["metric"]["network"] == "mainnet" and sample["value"][1] == "1"
    assert scrapes and all("gzip" in asked for asked, _ in scrapes)
    assert all(answered == "gzip" for _, answered in scrapes)
