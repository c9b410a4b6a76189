"""The status page's server-side rendering and its summarised feed's core: pure, no sockets.

Free text from agents (nickname, version, source error) is escaped wherever it lands; fields
other parts of the aggregator add (source_state, source_error, head_delay_p50, uptime) show
as a dash while absent; a public page drops what `redact_public` drops.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from aggregator.statuspage.assets import Assets
from aggregator.statuspage.fleet_page import COLUMNS, network_html, node_row
from aggregator.statuspage.format import DASH, age, fraction, seconds, short_cid, short_peer
from aggregator.statuspage.live import NodesDiff
from aggregator.statuspage.pages import ENDPOINTS, api_index, fleet_page, node_page, not_found_page
from aggregator.statuspage.privacy import redact_public

NOW = 1_700_000_100.0
EVIL = '<script>alert("x")</script>&\'"'


def node(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "peer_id": "12D3KooWAbCdEfGhIjKlMnOp",
        "nickname": "alpha",
        "miner_address": "f01234",
        "network_key": "k",
        "network": "mainnet",
        "state": "in_consensus",
        "up": True,
        "remote_address": "/ip4/10.9.8.7/tcp/4001",
        "height": 100,
        "head_cids": ["bafy2bzaceaaaaaaaaaaaaaaaaa"],
        "head_timestamp": NOW - 12,
        "lag_epochs": 0,
        "version": "fil-heartbeat/0.1.0",
        "last_beat": NOW - 2,
        "first_seen": NOW - 3600,
        "beat_period": 3.0,
        "probation": False,
    }
    base.update(over)
    return base


class Cells(HTMLParser):
    """The text of each `td` by its column's key (cells come in COLUMNS order), and every
    tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._col: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._col = COLUMNS[len(self.cells)][0]
            self.cells[self._col] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._col = None

    def handle_data(self, data: str) -> None:
        if self._col is not None:
            self.cells[self._col] += data


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    p.close()
    return p


def test_a_row_has_every_column_and_the_node_figures() -> None:
    cells = parse(node_row(node(head_delay_p50=1.25), NOW)).cells
    assert list(cells) == [key for key, _, _ in COLUMNS]
    assert cells["nickname"] == "alpha"
    assert cells["state"] == "in consensus"
    assert cells["height"] == "100"
    assert cells["lag"] == "0"
    assert cells["head_age"] == "12 s"
    assert cells["last_beat"] == "2 s"
    assert cells["delay"] == "1.2 s"
    assert cells["peer"].startswith("…") and "KlMnOp" in cells["peer"]


def test_fields_not_there_yet_render_as_a_dash() -> None:
    cells = parse(node_row(node(version=None, lag_epochs=None), NOW)).cells
    for col in ("delay", "up24", "up7d", "error", "version", "lag"):
        assert cells[col] == DASH, col


def test_uptime_and_source_fields_when_present() -> None:
    n = node(
        uptime={"24h": {"available": 0.9984, "healthy": 0.5}, "7d": None, "30d": None},
        source_state="unreachable",
        source_error="dial tcp 127.0.0.1:1234: connect: connection refused",
        state="source_down",
    )
    cells = parse(node_row(n, NOW)).cells
    assert cells["up24"] == "99.8 %"
    assert cells["up7d"] == DASH
    assert cells["error"] == "dial tcp 127.0.0.1:1234: connect: connection refused"
    assert cells["state"] == "source down"
    # Without the text (a public page), the source state that is not ok.
    assert parse(node_row(redact_public(n), NOW)).cells["error"] == "unreachable"


@pytest.mark.parametrize("field", ["nickname", "version", "source_error", "miner_address"])
def test_free_text_is_escaped_everywhere(field: str) -> None:
    html = node_row(node(**{field: EVIL}), NOW)
    assert "<script>" not in html
    parsed = parse(html)
    assert not any(tag == "script" for tag, _ in parsed.tags)
    assert EVIL in "".join(parsed.cells.values()) + "".join(
        str(v) for _, attrs in parsed.tags for v in attrs.values()
    )


def test_a_hostile_peer_id_cannot_break_out_of_attributes_or_links() -> None:
    peer = '"><img src=x onerror=alert(1)>'
    html = node_row(node(peer_id=peer), NOW)
    parsed = parse(html)
    assert not any(tag == "img" for tag, _ in parsed.tags)
    links = [attrs["href"] for tag, attrs in parsed.tags if tag == "a"]
    assert links == ["/nodes/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"]


def test_whole_pages_escape_and_hold_no_inline_script() -> None:
    assets = Assets.load()
    evil = node(nickname=EVIL, version=EVIL)
    pages = [
        fleet_page(
            assets,
            networks=[],
            alerts=[
                {"state": "firing", "labels": {"alertname": EVIL}, "annotations": {"summary": EVIL}}
            ],
            rows=[node_row(evil, NOW)],
            node_count=1,
            taken_at=NOW,
            public=False,
        ),
        node_page(assets, evil, taken_at=NOW, public=False),
        not_found_page(assets, EVIL, taken_at=NOW, public=False),
    ]
    for html in pages:
        assert "<script>" not in html
        scripts = [a for t, a in parse(html).tags if t == "script"]
        assert len(scripts) == 1 and str(scripts[0]["src"]).startswith("/static/")
        assert not re.search(r"\son[a-z]+=", html)  # no inline handlers (the CSP forbids them)


def test_the_node_page_shows_the_remote_address_only_when_private() -> None:
    assets = Assets.load()
    private = node_page(assets, node(), taken_at=NOW, public=False)
    public = node_page(assets, redact_public(node()), taken_at=NOW, public=True)
    assert "10.9.8.7" in private
    assert "10.9.8.7" not in public
    assert "public view" in public


def test_network_header_figures() -> None:
    network = {
        "key": "bafy2bzacegenesis",
        "network": "mainnet",
        "height": 95,
        "expected_height": 100,
        "genesis_timestamp": int(NOW - 100 * 30),
        "block_delay": 30.0,
        "consensus_head": ["bafy2bzaceaaaaaaaaaaaaaaaaa", "bafy2bzacebbbbbbbbbbbbbbbbb"],
        "counts": {"in_consensus": 3, "down": 1},
    }
    alerts = [
        {"state": "firing", "labels": {"network": "mainnet"}},
        {"state": "pending", "labels": {"network": "mainnet"}},
        {"state": "firing", "labels": {"network": "calibnet"}},
    ]
    html = network_html(network, alerts, NOW)
    dd = dict(re.findall(r'data-f="(\w+)"[^>]*>(.*?)</dd>', html))
    assert dd["height"] == "95"
    assert dd["expected"] == "100"
    assert dd["nulls"] == "5"
    assert dd["last"] == "2 min ago"  # 5 epochs of 30 s
    assert dd["alerts"] == "1"
    assert "…aaaaaaaa, …bbbbbbbb" in dd["head"]
    assert re.search(r'data-state="down">.*?<b>1</b>', html)


def test_formatting() -> None:
    assert short_cid("bafy2bzaceabcdefghijk12345678") == "…12345678"
    assert short_peer("12D3KooW") == "12D3KooW"
    assert age(None, NOW) == DASH
    assert age(NOW + 5, NOW) == "0 s"  # a clock ahead is not a negative age
    assert [seconds(v) for v in (0.44, 42, 600, 7200 * 3, 86400 * 3)] == [
        "0.4 s",
        "42 s",
        "10 min",
        "6 h",
        "3 d",
    ]
    assert [fraction(v) for v in (None, 1.0, 0.9999, 0.5)] == [DASH, "100 %", "99.9 %", "50.0 %"]


def test_the_index_of_endpoints_lists_every_api_route() -> None:
    paths = [e["path"] for e in api_index()["endpoints"]]
    assert paths == [p for p, _ in ENDPOINTS]
    for path in ("/metrics", "/api/v1/nodes", "/api/v1/feed", "/api/v1/propagation", "/api"):
        assert path in paths


def test_assets_ship_in_the_package_and_stay_small() -> None:
    assets = Assets.load()
    assert {"app.js", "node.js", "app.css"} <= set(assets.static)
    assert assets.total_bytes < 200_000
    assert {"base", "fleet", "node", "notfound"} <= set(assets.templates)
    js = assets.static["app.js"]
    assert js.content_type == "text/javascript; charset=utf-8"
    assert re.fullmatch(r"[0-9a-f]{12}", js.version) and js.etag == f'"{js.version}"'
    for asset in assets.static.values():  # nothing fetched from elsewhere at run time
        text = asset.body.decode()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), asset.name


# -- the summarised feed's core ---------------------------------------------------------


def test_nodes_diff_sends_new_nodes_whole_then_only_what_changed() -> None:
    diff = NodesDiff()
    a, b = node(peer_id="A"), node(peer_id="B", nickname="bravo")
    assert diff.update([a, b], [{"key": "k"}], NOW) == 2
    first = json.loads(diff.since(None)[0])
    assert first["full"] and [n["peer_id"] for n in first["nodes"]] == ["A", "B"]
    assert "head_cids" not in first["nodes"][0]  # only what the page shows
    seq = first["seq"]
    assert diff.since(seq) == []
    diff.update([{**a, "height": 101, "last_beat": NOW}, b], [], NOW + 1)
    (delta,) = (json.loads(t) for t in diff.since(seq))
    assert not delta["full"]
    assert delta["nodes"] == [{"peer_id": "A", "height": 101, "last_beat": NOW}]
    assert delta["removed"] == []
    # A field that went away comes as null; a node that went away in `removed`.
    diff.update([{k: v for k, v in a.items() if k != "version"}], [], NOW + 2)
    delta = json.loads(diff.since(seq + 1)[0])
    assert delta["nodes"] == [
        {"peer_id": "A", "height": 100, "last_beat": NOW - 2, "version": None}
    ]
    assert delta["removed"] == ["B"]


def test_nodes_diff_a_client_too_far_behind_gets_the_whole_fleet_again() -> None:
    diff = NodesDiff(keep=2)
    for i in range(5):
        diff.update([node(peer_id="A", height=i)], [], NOW + i)
    assert len(diff.since(4)) == 1 and not json.loads(diff.since(4)[0])["full"]
    assert len(diff.since(3)) == 2
    (text,) = diff.since(1)
    msg = json.loads(text)
    assert msg["full"] and msg["seq"] == 5 and msg["nodes"][0]["height"] == 4
    assert diff.full() is diff.full()  # encoded once per update


# -- the setting ----------------------------------------------------------------------------


def test_status_page_setting_from_flag_env_and_file() -> None:
    from aggregator.config import build_config
    from heartbeat.errors import ConfigError

    assert build_config().status_page == "private"
    assert build_config(file={"status_page": "public"}).status_page == "public"
    env = {"FIL_HEARTBEAT_AGGREGATOR_STATUS_PAGE": "off"}
    assert build_config(env=env, file={"status_page": "public"}).status_page == "off"
    assert build_config({"status_page": "Public"}, env).status_page == "public"
    with pytest.raises(ConfigError, match="--status-page / FIL_HEARTBEAT_AGGREGATOR_STATUS_PAGE"):
        build_config(env={"FIL_HEARTBEAT_AGGREGATOR_STATUS_PAGE": "secret"})


def test_status_page_flag() -> None:
    from aggregator.__main__ import parse_args

    _, config = parse_args(["run", "--status-page", "public"], env={})
    assert config.status_page == "public"
    with pytest.raises(SystemExit):
        parse_args(["run", "--status-page", "everyone"], env={})
