"""The status page in a real browser: an aggregator and three agents (subprocesses, the
project's own programs, simulated chain), Debian's headless Chromium driven by selenium.

One aggregator life after another on the same ports: the page finds every node, sorts,
filters and pins (the pin survives a reload), sees a stopped agent's row turn `down` without
a reload, opens a node page and the 404 page; then the aggregator restarts with
`--status-page public` and the open page reconnects by itself, while the pages and the JSON
they read hold no address. Screenshots go to build/screenshots/ (kept as test artifacts).

Needs `chromium` and `chromedriver` (Debian's chromium, chromium-driver: `scripts/setup
--system`) and selenium: skipped without them, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.bus import Bus
from aggregator.fleet import Fleet
from aggregator.http import HttpApi, serve_http
from aggregator.networks import MAINNET_GENESIS_CID
from heartbeat.agent.sources import fake_cid
from heartbeat.protocol.wire import Beat
from tests.helpers import eventually_blocking
from tests.promservers import HTTP_NOT_YET, REPO, free_port, stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(240)]

SCREENSHOTS = REPO / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Nicknames: the last one uses the punctuation a nickname may hold.
NICKNAMES = ("alpha", "bravo", "charlie (c)#3")
WAIT = 30.0

poll = functools.partial(eventually_blocking, timeout=WAIT, transient=HTTP_NOT_YET)


def require_browser() -> None:
    """Skip without chromium, chromedriver or selenium; fail instead under CI=true."""
    missing = [
        f"{name} (Debian package {package})"
        for name, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"))
        if shutil.which(name) is None
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (dev dependency: scripts/setup)")
    if not missing:
        return
    reason = f"not installed: {', '.join(missing)}; `scripts/setup --system` installs them"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing tool is a broken set-up)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def driver() -> Iterator[Any]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(WAIT)
    try:
        yield d
    finally:
        d.quit()


@contextlib.contextmanager
def spawn(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
        )
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def aggregator(tmp: Path, p2p_port: int, http_port: int, mode: str) -> Iterator[str]:
    """An aggregator on fixed ports (a restart keeps them); yields its HTTP URL when ready."""
    args = [
        sys.executable,
        "-m",
        "aggregator",
        "run",
        "--listen",
        f"/ip4/127.0.0.1/tcp/{p2p_port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--identity-file",
        str(tmp / "aggregator.key"),
        "--state-db",
        str(tmp / "agg.db"),
        "--beat-timeout",
        "3s",
        "--beat-timeout-min",
        "2s",
        "--probation",
        "0s",
        "--status-page",
        mode,
    ]
    url = f"http://127.0.0.1:{http_port}"
    with spawn(args, tmp / "aggregator.log") as proc:

        def ready() -> bool:
            if proc.poll() is not None:
                log = (tmp / "aggregator.log").read_text()
                raise RuntimeError(f"aggregator exited {proc.returncode}:\n{log}")
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        poll(ready, what="the aggregator to be ready")
        yield url


def agent_args(tmp: Path, name: str, target: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "heartbeat",
        "run",
        "--target",
        target,
        "--nickname",
        name,
        "--identity-file",
        str(tmp / f"agent-{name.split()[0]}.key"),
        "--head-source",
        "simulated",
        "--block-delay",
        "4s",
        "--beat-period",
        "1s",
        "--reconnect-period",
        "1s",
        "--jitter",
        "0",
        "--miner-address",
        "f01234",
    ]


def peer_id_of(tmp: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "aggregator", "id", "--identity-file", str(tmp / "aggregator.key")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    return out.stdout.split()[0]


def rows(d: Any) -> dict[str, str]:
    """Nickname -> state of every row the page shows, in the table's order."""
    pairs: list[list[str]] = d.execute_script(
        "return Array.from(document.querySelectorAll('#nodes tr[data-peer]')).map(function (tr) {"
        " return [tr.querySelector('a').textContent, tr.dataset.state];"
        " });"
    )
    # A list, not a JS object: the driver hands objects back with their keys sorted.
    return {name: state for name, state in pairs}


def until(d: Any, predicate: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, WAIT, poll_frequency=0.1).until(lambda _: predicate(), message=what)


def shot(d: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SCREENSHOTS / name))


def live(d: Any) -> str:
    state: str = d.execute_script("return document.body.dataset.live || ''")
    return state


def test_the_status_page_in_chromium(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = driver
    p2p_port, http_port = free_port(), free_port()
    with contextlib.ExitStack() as agents_stack, contextlib.ExitStack() as first_life:
        url = first_life.enter_context(aggregator(tmp_path, p2p_port, http_port, "private"))
        target = f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{peer_id_of(tmp_path)}"
        agents = {
            name: agents_stack.enter_context(
                spawn(agent_args(tmp_path, name, target), tmp_path / f"agent-{i}.log")
            )
            for i, name in enumerate(NICKNAMES)
        }
        poll(
            lambda: len(httpx.get(f"{url}/api/v1/nodes", timeout=2).json()) == 3,
            what="three nodes",
        )

        # -- every node, live --
        d.get(url + "/")
        until(d, lambda: live(d) == "ws", "the feed")
        until(d, lambda: set(rows(d)) == set(NICKNAMES), "a row per node")
        until(d, lambda: set(rows(d).values()) == {"in_consensus"}, "all in consensus")
        header = d.find_element(By.CSS_SELECTOR, "#networks article.network")
        assert header.find_element(By.CSS_SELECTOR, '[data-f="height"]').text.isdigit()
        shot(d, "fleet.png")

        # -- sort, filter, pin --
        th = d.find_element(By.CSS_SELECTOR, 'th[data-col="nickname"]')
        th.find_element(By.TAG_NAME, "button").click()
        # the table is redrawn on the next frame: wait for it (a loaded machine is slow)
        until(d, lambda: th.get_attribute("aria-sort") == "ascending", "sorted up")
        until(d, lambda: list(rows(d)) == sorted(NICKNAMES), "rows in ascending order")
        th.find_element(By.TAG_NAME, "button").click()
        until(d, lambda: th.get_attribute("aria-sort") == "descending", "sorted down")
        until(d, lambda: list(rows(d)) == sorted(NICKNAMES, reverse=True), "rows descending")
        search = d.find_element(By.ID, "f-text")
        search.send_keys("bravo")
        until(d, lambda: d.find_element(By.ID, "shown").text == "1 of 3 nodes", "filtered")
        visible = d.find_elements(By.CSS_SELECTOR, "#rows tr[data-peer]")
        assert [r.find_element(By.TAG_NAME, "a").text for r in visible] == ["bravo"]
        search.send_keys(Keys.BACKSPACE * 5)
        until(d, lambda: d.find_element(By.ID, "shown").text == "3 nodes", "unfiltered")
        d.find_element(
            By.XPATH, "//tr[.//a[text()='bravo']]//button[contains(@class, 'pin')]"
        ).click()
        pinned = d.find_elements(By.CSS_SELECTOR, "#pinned tr")
        assert [p.find_element(By.TAG_NAME, "a").text for p in pinned] == ["bravo"]
        d.refresh()
        until(d, lambda: live(d) == "ws", "the feed after a reload")
        pinned = d.find_elements(By.CSS_SELECTOR, "#pinned tr")
        assert [p.find_element(By.TAG_NAME, "a").text for p in pinned] == ["bravo"]
        pin = pinned[0].find_element(By.CSS_SELECTOR, "button.pin")
        assert pin.get_attribute("aria-pressed") == "true"

        # -- a stopped agent turns down, without a reload --
        d.execute_script("window.notReloaded = true;")
        stop_process(agents["charlie (c)#3"])
        until(d, lambda: rows(d)["charlie (c)#3"] == "down", "charlie down")
        assert d.execute_script("return window.notReloaded") is True
        state_cell = d.find_element(By.XPATH, "//tr[.//a[text()='charlie (c)#3']]/td[6]")
        assert state_cell.text == "down"  # the word, not only a colour
        shot(d, "fleet-down.png")

        # -- a node page, and an unknown one --
        d.find_element(By.LINK_TEXT, "alpha").click()
        until(d, lambda: d.execute_script("return document.body.dataset.page") == "node", "node")
        until(d, lambda: d.execute_script("return document.body.dataset.history"), "history")
        assert "alpha" in d.find_element(By.ID, "node-h").text
        assert "127.0.0.1" in d.find_element(By.ID, "details").text  # private: shown
        timeline = d.find_element(By.ID, "timeline")
        assert timeline.find_elements(By.TAG_NAME, "svg") or "No history yet" in timeline.text
        shot(d, "node.png")
        d.get(url + "/nodes/12D3KooWnobody")
        assert "Unknown node" in d.find_element(By.TAG_NAME, "h1").text

        # -- the aggregator restarts, public: the open page reconnects by itself --
        d.get(url + "/")
        until(d, lambda: live(d) == "ws", "the feed")
        d.execute_script("window.notReloaded = true;")
        first_life.close()  # the agents stay, redialling every second
        until(d, lambda: live(d) in ("retry", "poll", "off"), "the page seeing it gone")
        with aggregator(tmp_path, p2p_port, http_port, "public"):
            until(d, lambda: live(d) == "ws", "the feed back")
            until(d, lambda: rows(d).get("alpha") == "in_consensus", "alpha back")
            assert d.execute_script("return window.notReloaded") is True
            shot(d, "fleet-public-live.png")

            # -- public: no address in the pages nor in the JSON they read --
            d.get(url + "/")
            until(d, lambda: live(d) == "ws", "the feed")
            assert "public view" in d.find_element(By.CSS_SELECTOR, "header .mode").text
            assert "127.0.0.1" not in d.page_source
            nodes = d.execute_script("return await (await fetch('/api/v1/nodes')).json();")
            assert len(nodes) == 3 and all("remote_address" not in n for n in nodes)
            d.find_element(By.LINK_TEXT, "alpha").click()
            until(
                d, lambda: d.execute_script("return document.body.dataset.page") == "node", "node"
            )
            assert "127.0.0.1" not in d.page_source
            assert "Remote address" not in d.find_element(By.ID, "details").text
            shot(d, "node-public.png")


@contextlib.contextmanager
def serve_fleet(fleet: Fleet, now: list[float]) -> Iterator[tuple[str, Any]]:
    """`HttpApi` over `fleet` (read at `now[0]`) served from a trio thread; yields the URL and
    a function that runs a callable in that thread (where the fleet may be changed)."""
    api = HttpApi(lambda: fleet.snapshot(now[0]), bus=Bus())
    started = threading.Event()
    stop = threading.Event()
    box: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, api, "127.0.0.1", 0)
            box.extend([f"http://127.0.0.1:{port}", trio.lowlevel.current_trio_token()])
            started.set()
            while not stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(WAIT)
    try:
        yield box[0], functools.partial(trio.from_thread.run_sync, trio_token=box[1])
    finally:
        stop.set()
        thread.join(WAIT)


def filled_fleet(n: int, at: float) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        peer = f"12D3KooWfill{i:04d}"
        fleet.on_connect(peer, "/ip4/127.0.0.1/tcp/1", at)
        beat = Beat(
            head="{" + fake_cid("fill", 100) + "}",
            height=100,
            nickname=f"node-{i:04d}",
            miner_address="f01234",
            genesis_cid=MAINNET_GENESIS_CID,
        )
        fleet.on_beat(peer, beat, at)
    return fleet


def test_many_rows_without_scripting_and_windowed_with_it(driver: Any) -> None:
    """Without JavaScript every server-rendered row shows; with it, only the rows on screen
    are in the document, and scrolling brings the others."""
    from selenium.webdriver.common.by import By

    d = driver
    now = [time.time()]
    with serve_fleet(filled_fleet(400, now[0]), now) as (url, _):
        d.get(url + "/")
        until(d, lambda: live(d) == "ws", "the feed")
        attached = len(d.find_elements(By.CSS_SELECTOR, "#rows tr[data-peer]"))
        assert 0 < attached < 400
        assert d.find_element(By.ID, "shown").text == "400 nodes"
        assert d.execute_script("return document.getElementById('nodes').ariaRowCount") == "401"
        d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        until(d, lambda: "node-0399" in rows(d), "the last row after scrolling")
        shot(d, "fleet-scrolled.png")

        # The same page with scripting off (a new browser page, scripts disabled by CDP).
        d.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        d.get(url + "/")
        trs = d.find_elements(By.CSS_SELECTOR, "#rows tr[data-peer]")
        assert len(trs) == 400
        assert trs[-1].is_displayed() and trs[150].is_displayed()
        assert not d.find_element(By.CSS_SELECTOR, ".controls").is_displayed()
        assert not d.find_elements(By.CSS_SELECTOR, "button.pin, button.copy")  # need scripts
        d.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def test_without_a_websocket_the_page_polls(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    d = driver
    d.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.WebSocket = function () { throw new Error('blocked'); };"},
    )
    now = [time.time()]
    fleet = filled_fleet(3, now[0])
    with serve_fleet(fleet, now) as (url, call):
        d.get(url + "/")
        until(d, lambda: live(d) == "poll", "polling")
        assert set(rows(d).values()) == {"in_consensus"}
        call(fleet.on_disconnect, "12D3KooWfill0001", time.time())
        until(d, lambda: rows(d).get("node-0001") == "down", "node-0001 down, by polling")
        assert "polling every 5 s" in d.find_element(By.ID, "live").text
