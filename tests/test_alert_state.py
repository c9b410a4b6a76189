"""The built-in alerter's state in the state db (aggregator/alerts/state_store.py).

Unit: the store round-trips the evaluator's export and the receivers' notification times;
an evaluator restored from it neither fires again nor resolves what still holds.
Integration: a real aggregator (subprocess) pages a fake Slack once for a node that went
down, is restarted on the same state db, and stays quiet (no second page, no recovery)
until the node really returns; then the recovery arrives, once.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from aggregator.alerts.rules import AlertEvaluator, AlertPolicy, TransitionKind
from aggregator.alerts.state_store import AlertState, AlertStateStore, StateWriter
from aggregator.fleet import FleetSnapshot
from tests.fake_receivers import FakeSlack, serving
from tests.promservers import REPO, stop_process
from tests.test_alert_rules import node, snapshot

T0 = 1_700_000_000.0
ONLY_DOWN = frozenset({"FilFleetShrunk"})  # one alert under test: FilNodeDown


def _down(now: float) -> FleetSnapshot:
    return snapshot(now, (node(now, up=False, connected=False, last_beat=now - 5),))


def _up(now: float) -> FleetSnapshot:
    return snapshot(now, (node(now),))


def test_store_round_trips_the_state(tmp_path: Path) -> None:
    store = AlertStateStore(tmp_path / "agg.db")
    state = AlertState(
        {
            "tracks": [
                {
                    "key": ["FilNodeDown", "12D3KooWAlpha"],
                    "labels": {"alertname": "FilNodeDown"},
                    "annotations": {"summary": "s"},
                    "value": 0.0,
                    "active_since": T0,
                    "phase": "firing",
                    "last_sent": T0 + 60,
                    "clear_since": None,
                }
            ],
            "heights": {"mainnet": [100, T0]},
        },
        {"slack:abc": {"FilNodeDown/123": T0 + 60}},
    )
    store.save(state)
    store.save(state)  # a rewrite, not an append
    store.close()
    again = AlertStateStore(tmp_path / "agg.db").load()
    assert again == state


def test_an_empty_db_loads_empty(tmp_path: Path) -> None:
    assert AlertStateStore(tmp_path / "new.db").load() == AlertState()


def test_a_restored_evaluator_neither_fires_again_nor_resolves() -> None:
    policy = AlertPolicy(
        node_down_for=60.0, keep_firing_for=60.0, resend_interval=60.0, disabled=ONLY_DOWN
    )
    before = AlertEvaluator(policy)
    fired = [tr.kind for t in range(0, 121, 5) for tr in before.evaluate(_down(T0 + t))]
    assert fired.count(TransitionKind.FIRED) == 1
    after = AlertEvaluator(policy)
    assert after.restore_state(before.export_state()) == 1
    seen = [tr.kind for t in range(125, 600, 5) for tr in after.evaluate(_down(T0 + t))]
    assert TransitionKind.FIRED not in seen and TransitionKind.RESOLVED not in seen
    assert TransitionKind.RESEND in seen  # Alertmanager still hears of it
    assert [a.alertname for a in after.firing()] == ["FilNodeDown"]
    # the node returns: it resolves once, after the hold-down
    back = [tr.kind for t in range(600, 700, 5) for tr in after.evaluate(_up(T0 + t))]
    assert back.count(TransitionKind.RESOLVED) == 1


def test_a_fresh_evaluator_would_page_again() -> None:
    """The control: without the restored state the same fleet pages a second time."""
    policy = AlertPolicy(node_down_for=60.0, disabled=ONLY_DOWN)
    fresh = AlertEvaluator(policy)
    seen = [tr.kind for t in range(125, 600, 5) for tr in fresh.evaluate(_down(T0 + t))]
    assert seen.count(TransitionKind.FIRED) == 1


def test_pending_since_survives_a_restart() -> None:
    policy = AlertPolicy(node_down_for=60.0, disabled=ONLY_DOWN)
    before = AlertEvaluator(policy)
    for t in range(0, 41, 5):
        assert before.evaluate(_down(T0 + t)) == []
    after = AlertEvaluator(policy)
    after.restore_state(before.export_state())
    # pending since T0: fires at T0 + 60, not 60 s after the restart
    assert after.evaluate(_down(T0 + 55)) == []
    assert [tr.kind for tr in after.evaluate(_down(T0 + 60))] == [TransitionKind.FIRED]


def _same(state: AlertState) -> AlertState:
    return state


async def test_the_writer_saves_changes_off_the_loop_and_once_more_at_shutdown(
    tmp_path: Path,
) -> None:
    """The last change before shutdown is saved, wherever the writer stands when cancelled
    (before a save's thread started, its change was once lost): 30 rounds, each cancelling
    at a different point of the writer's loop."""
    for round_ in range(30):
        store = AlertStateStore(tmp_path / f"agg{round_}.db")
        state = AlertState()
        writer = StateWriter(store, functools.partial(_same, state), min_gap=0.0005 * round_)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            state.notified = {"slack:x": {"a": 1.0}}
            writer.mark()
            # A bound, not a figure: the first save creates the database and syncs it to a
            # real disk, which a loaded CI machine once took over 5 s for.
            with trio.fail_after(30):
                while writer.saves < 1:
                    await trio.sleep(0.0005 * (round_ % 3))
            state.notified = {"slack:x": {"a": 2.0}}
            writer.mark()
            for _ in range(round_ % 4):
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()  # the last change is saved on the way out
        saved = AlertStateStore(tmp_path / f"agg{round_}.db").load().notified
        assert saved == {"slack:x": {"a": 2.0}}, round_


# --- a real aggregator, restarted ------------------------------------------------------------


@contextlib.contextmanager
def _process(
    args: list[str], log: Path, out: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as err, (out or log).open("ab") as stdout:
        proc = subprocess.Popen(args, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        yield proc
    finally:
        stop_process(proc)


def _aggregator_args(tmp: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "aggregator", "run",
        "--config", str(config),
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--http-listen", "127.0.0.1:0",
        "--identity-file", str(tmp / "aggregator.key"),
        "--state-db", str(tmp / "agg.db"),
        "--name", "agg-restart",
        "--beat-timeout", "3s",
        "--probation", "0s",
    ]  # fmt: skip


def _agent_args(tmp: Path, target: str) -> list[str]:
    return [
        sys.executable, "-m", "heartbeat", "run",
        "--target", target,
        "--nickname", "alpha",
        "--identity-file", str(tmp / "alpha.key"),
        "--head-source", "simulated",
        "--seed", "7",
        "--block-delay", "4s",
        "--beat-period", "1s",
        "--reconnect-period", "1s",
        "--jitter", "0",
    ]  # fmt: skip


async def _ready(proc: subprocess.Popen[bytes], out: Path, seen: int) -> tuple[str, str]:
    """The (multiaddr, http url) the aggregator printed after the first `seen` lines."""
    with trio.fail_after(30):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"aggregator exited {proc.returncode}")
            lines = out.read_text().split()[seen:]
            http = [x for x in lines if x.startswith("http://")]
            addrs = [x for x in lines if x.startswith("/ip4/127.0.0.1/")]
            if http and addrs:
                return addrs[0], http[0]
            await trio.sleep(0.1)


async def _alerts(http_url: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{http_url}/api/v1/alerts", timeout=2.0)
    alerts: list[dict[str, object]] = response.json()
    return alerts


async def _node_up(http_url: str, up: bool) -> bool:
    async with httpx.AsyncClient() as client:
        nodes = (await client.get(f"{http_url}/api/v1/nodes", timeout=2.0)).json()
    items = nodes if isinstance(nodes, list) else nodes.get("nodes", [])
    return any(n.get("nickname") == "alpha" and bool(n.get("up")) is up for n in items)


async def _until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.2)


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_restarted_aggregator_neither_resolves_nor_pages_again(tmp_path: Path) -> None:
    slack = FakeSlack()
    async with serving(slack) as (base,):
        config = tmp_path / "aggregator.toml"
        config.write_text(
            "[alerts]\n"
            "evaluation_interval = 0.3\n"
            'node_down_for = "1s"\n'
            'keep_firing_for = "1s"\n'
            'resend_interval = "1s"\n'
            "[[alerts.receivers]]\n"
            'type = "slack"\n'
            'url = "https://hooks.slack.com/services/T0001/B0001/XXXXsecretXXXX"\n'
            f'base_url = "{base}"\n'
            'repeat_interval = "1h"\n'
        )
        out, log = tmp_path / "aggregator.out", tmp_path / "aggregator.log"
        agent_log = tmp_path / "alpha.log"
        with _process(_aggregator_args(tmp_path, config), log, out) as first:
            multiaddr, http_url = await _ready(first, out, 0)
            with _process(_agent_args(tmp_path, multiaddr), agent_log):
                await _until(lambda: _node_up(http_url, True))
            await slack.wait_for(1)  # alpha stopped: paged once
            await trio.sleep(1.0)  # a few resends: no reminder within the hour
            assert len(slack.accepted) == 1
            first.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(first.wait, 15) == 0
        seen = len(out.read_text().split())
        with _process(_aggregator_args(tmp_path, config), log, out) as second:
            multiaddr, http_url = await _ready(second, out, seen)

            async def firing() -> bool:
                return any(a["state"] == "firing" for a in await _alerts(http_url))

            await _until(firing, timeout=5.0)  # restored, not pending again
            await trio.sleep(3.0)  # 10 evaluations, past node_down_for and keep_firing_for
            assert len(slack.accepted) == 1, slack.accepted[1:]
            with _process(_agent_args(tmp_path, multiaddr), agent_log):
                await _until(lambda: _node_up(http_url, True))
                await slack.wait_for(2)
                await trio.sleep(1.0)
        assert slack.rejected == []
        assert "FIRING" in slack.accepted[0]["text"]
        assert "RESOLVED" in slack.accepted[1]["text"]
        assert len(slack.accepted) == 2
        text = log.read_text()
        restored = re.search(r"alert_state_restored alerts=(\d+) receivers=1", text)
        assert restored is not None and int(restored.group(1)) >= 1, text[-3000:]
        leaks = [line for line in text.splitlines() if "XXXXsecretXXXX" in line]
        assert leaks == []
