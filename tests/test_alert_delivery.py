"""Alert delivery and the alerting service.

A real HTTP receiver (hypercorn on 127.0.0.1, port 0) checks the payloads, the cluster
fan-out, the webhook and short real retries; httpx's MockTransport under trio's autojump
clock checks exact backoff times and the service's timing.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve

from aggregator.alerts.delivery import (
    AlertDelivery,
    RetryPolicy,
    alertmanager_payload,
    rfc3339,
    webhook_payload,
)
from aggregator.alerts.rules import (
    TEST_ALERT_NAME,
    Alert,
    AlertPolicy,
    Transition,
    TransitionKind,
)
from aggregator.alerts.service import AlertingService
from aggregator.alerts.wiring import load_settings
from aggregator.fleet import FleetSnapshot, NodeState, NodeView
from heartbeat.common.asgi import lifespan
from heartbeat.errors import ConfigError
from tests.helpers import eventually

FIRED, RESEND, RESOLVED = TransitionKind.FIRED, TransitionKind.RESEND, TransitionKind.RESOLVED


def _alert(ends_at: float | None = None, **labels: str) -> Alert:
    base = {
        "alertname": "FilNodeDown",
        "severity": "critical",
        "peer_id": "12D3KooWAlpha",
        "nickname": "alpha",
        "network": "mainnet",
        "aggregator": "agg-a",
        **labels,
    }
    return Alert(
        base,
        {
            "summary": "Filecoin node alpha is down",
            "description": "d",
            "runbook": "grafana/RUNBOOK.md#filnodedown",
        },
        starts_at=1_700_000_000.25,
        ends_at=ends_at,
    )


# --- pure payloads --------------------------------------------------------------------------


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert datetime.fromisoformat(rfc3339(1_700_000_000.25)).timestamp() == 1_700_000_000.25


def test_alertmanager_payload_shape() -> None:
    firing, resolved = alertmanager_payload(
        [_alert(), _alert(ends_at=1_700_000_100.0, miner="")], "http://agg:9082/api/v1/alerts"
    )
    assert firing == {
        "labels": {
            "alertname": "FilNodeDown",
            "severity": "critical",
            "peer_id": "12D3KooWAlpha",
            "nickname": "alpha",
            "network": "mainnet",
            "aggregator": "agg-a",
        },
        "annotations": {
            "summary": "Filecoin node alpha is down",
            "description": "d",
            "runbook": "grafana/RUNBOOK.md#filnodedown",
        },
        "startsAt": "2023-11-14T22:13:20.250Z",
        "generatorURL": "http://agg:9082/api/v1/alerts",
    }
    assert resolved["endsAt"] == "2023-11-14T22:15:00.000Z"
    assert "miner" not in resolved["labels"]  # empty label values are left out


def test_webhook_payload_shape() -> None:
    body = webhook_payload(
        [Transition(FIRED, _alert()), Transition(RESOLVED, _alert(ends_at=1_700_000_100.0))],
        "agg-a",
    )
    assert body["version"] == "1" and body["sender"] == "agg-a"
    assert [a["status"] for a in body["alerts"]] == ["firing", "resolved"]
    assert body["alerts"][0]["endsAt"] is None
    assert body["alerts"][1]["endsAt"] == "2023-11-14T22:15:00.000Z"


def test_backoff_grows_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, max_delay=60.0, jitter=0.2)
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (20, 60.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert max(delays) - min(delays) > 0.2 * base  # really jittered
    assert RetryPolicy(jitter=0.0).delay(3, rng) == 4.0


# --- a real receiver ------------------------------------------------------------------------


@dataclass
class Receiver:
    """An ASGI app recording POSTs; `statuses` scripts the replies (then 200)."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[tuple[str, Any]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append((scope["path"], json.loads(body)))
        self.arrived.set()
        self.arrived = trio.Event()
        if self.hang:
            await trio.sleep_forever()
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.requests) < count:
                await self.arrived.wait()


@asynccontextmanager
async def serving(*receivers: Receiver) -> AsyncIterator[list[str]]:
    async with trio.open_nursery() as nursery:
        urls = []
        for app in receivers:
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            binds = await nursery.start(
                lambda task_status, app=app, config=config: serve(
                    app, config, task_status=task_status
                )
            )
            urls.append(binds[0].replace("0.0.0.0", "127.0.0.1"))
        yield urls
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(delivery: AlertDelivery) -> AsyncIterator[AlertDelivery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        yield delivery
        nursery.cancel_scope.cancel()


FAST = RetryPolicy(
    initial=0.05, factor=2.0, max_delay=0.2, jitter=0.0, attempt_timeout=2.0, give_up_after=5.0
)


@pytest.mark.integration
async def test_alertmanager_cluster_gets_every_batch() -> None:
    am1, am2 = Receiver(), Receiver()
    async with serving(am1, am2) as (url1, url2):
        delivery = AlertDelivery(
            alertmanager_urls=[url1, url2 + "/"],
            retry=FAST,
            generator_url="http://agg/api/v1/alerts",
        )
        async with running(delivery):
            delivery.submit([Transition(FIRED, _alert())])
            delivery.submit([Transition(RESEND, _alert())])
            delivery.submit([Transition(RESOLVED, _alert(ends_at=1_700_000_100.0))])
            await eventually(lambda: [t.delivered for t in delivery.targets] == [3, 3])
    for am in (am1, am2):
        assert [path for path, _ in am.requests] == ["/api/v2/alerts"] * 3
        bodies = [body for _, body in am.requests]
        assert all(len(b) == 1 for b in bodies)
        assert "endsAt" not in bodies[0][0] and "endsAt" not in bodies[1][0]
        assert bodies[2][0]["endsAt"] == "2023-11-14T22:15:00.000Z"
        # the labels of the shipped Prometheus rules: `aggregator` is an annotation
        assert "aggregator" not in bodies[0][0]["labels"]
        assert bodies[0][0]["annotations"]["aggregator"] == "agg-a"
        assert bodies[0][0]["generatorURL"] == "http://agg/api/v1/alerts"
    assert [t.delivered for t in delivery.targets] == [3, 3]


@pytest.mark.integration
async def test_webhook_gets_pages_and_recoveries_not_reminders() -> None:
    hook = Receiver()
    async with serving(hook) as (url,):
        delivery = AlertDelivery(webhook_urls=[url + "/hook"], sender="agg-a", retry=FAST)
        async with running(delivery):
            delivery.submit([Transition(FIRED, _alert())])
            delivery.submit([Transition(RESEND, _alert())])
            delivery.submit([Transition(RESOLVED, _alert(ends_at=1_700_000_100.0))])
            await hook.wait_for(2)
            await trio.testing.wait_all_tasks_blocked()
    assert [path for path, _ in hook.requests] == ["/hook", "/hook"]
    assert [b["alerts"][0]["status"] for _, b in hook.requests] == ["firing", "resolved"]
    assert all(b["sender"] == "agg-a" for _, b in hook.requests)


@pytest.mark.integration
async def test_server_errors_are_retried_client_errors_are_not() -> None:
    flaky, strict = Receiver(statuses=[503, 502]), Receiver(statuses=[400])
    async with serving(flaky, strict) as (url1, url2):
        delivery = AlertDelivery(alertmanager_urls=[url1, url2], retry=FAST)
        async with running(delivery):
            delivery.submit([Transition(FIRED, _alert())])
            await flaky.wait_for(3)
            await strict.wait_for(1)
            with trio.move_on_after(0.5):
                await strict.wait_for(2)
    first, second = delivery.targets
    assert (first.delivered, first.retries, first.failed) == (1, 2, 0)
    assert (second.delivered, second.retries, second.failed) == (0, 0, 1)
    assert len(strict.requests) == 1
    bodies = [b for _, b in flaky.requests]
    assert bodies[0] == bodies[1] == bodies[2]


@pytest.mark.integration
async def test_a_hanging_receiver_blocks_neither_submit_nor_the_other_receivers() -> None:
    stuck, healthy = Receiver(hang=True), Receiver()
    async with serving(stuck, healthy) as (url1, url2):
        delivery = AlertDelivery(alertmanager_urls=[url1, url2], retry=FAST, queue_size=2)
        blocked, fine = delivery.targets
        async with running(delivery):
            await trio.testing.wait_all_tasks_blocked()  # both drain tasks wait for work
            with trio.fail_after(1):  # submit never waits
                for _ in range(10):
                    delivery.submit([Transition(FIRED, _alert())])
            # a burst: one batch to each waiting task, two queued, the rest dropped and counted
            assert (blocked.overflow, fine.overflow) == (7, 7)
            await healthy.wait_for(3)
            await stuck.wait_for(1)  # the first batch hangs there; two wait in the queue
            delivery.submit([Transition(FIRED, _alert())])
            delivery.submit([Transition(FIRED, _alert())])
            await healthy.wait_for(5)
            await eventually(lambda: fine.delivered == 5)
    assert (blocked.overflow, fine.overflow) == (9, 7)
    assert blocked.delivered == 0


# --- exact times under the autojump clock ---------------------------------------------------


def _recording_transport(times: list[float], statuses: list[int]) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(statuses.pop(0) if statuses else 200)

    return httpx.MockTransport(handler)


async def test_backoff_times_and_giving_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    times: list[float] = []
    transport = _recording_transport(times, [503] * 10)
    retry = RetryPolicy(initial=1.0, factor=2.0, max_delay=60.0, jitter=0.0, give_up_after=10.0)
    delivery = AlertDelivery(alertmanager_urls=["http://am:9093"], retry=retry, transport=transport)
    async with running(delivery):
        start = trio.current_time()
        delivery.submit([Transition(FIRED, _alert())])
        await trio.sleep(100)
    assert [t - start for t in times] == [0.0, 1.0, 3.0, 7.0]  # the next pause (8 s) ends at 15
    (target,) = delivery.targets
    assert (target.delivered, target.retries, target.failed) == (0, 3, 1)
    assert "alert_delivery_gave_up" in caplog.text


async def test_connection_errors_are_retried(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    retry = RetryPolicy(initial=2.0, jitter=0.0)
    delivery = AlertDelivery(
        alertmanager_urls=["http://am:9093"], retry=retry, transport=httpx.MockTransport(handler)
    )
    async with running(delivery):
        start = trio.current_time()
        delivery.submit([Transition(FIRED, _alert())])
        await trio.sleep(60)
    assert [t - start for t in times] == [0.0, 2.0, 6.0]
    assert delivery.targets[0].delivered == 1


# --- the service ----------------------------------------------------------------------------


def _node(now: float, up: bool) -> NodeView:
    return NodeView(
        "12D3KooWAlpha",
        "alpha",
        "f01234",
        "k",
        "mainnet",
        NodeState.IN_CONSENSUS if up else NodeState.DOWN,
        up,
        up,
        "",
        "{bafy}",
        ("bafy",),
        1,
        1000,
        None,
        None,
        0,
        False,
        "1",
        0.0,
        now,
        1,
        3.0,
        10.0,
        now,
        now,
    )


class FakeFleet:
    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.up = True

    def snapshot(self) -> FleetSnapshot:
        now = self.wall()
        return FleetSnapshot(now, (_node(now, self.up),), MappingProxyType({}))


async def test_service_fires_resends_and_resolves_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Node down at t=12 (seen at 15): FIRED at 75 (1m), RESEND at 135 and 195 (held down),
    up at 152 (seen at 155): RESOLVED at 215 (keep_firing_for 1m)."""
    posts: list[tuple[float, list[dict[str, Any]]]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        posts.append((trio.current_time(), json.loads(request.content)))
        return httpx.Response(200)

    base = trio.current_time()
    fleet = FakeFleet(lambda: 1_700_000_000.0 + trio.current_time() - base)
    delivery = AlertDelivery(
        alertmanager_urls=["http://am:9093"], transport=httpx.MockTransport(handler)
    )
    async with trio.open_nursery() as nursery:
        service = AlertingService(
            fleet.snapshot,
            AlertPolicy(),
            delivery,
            interval=5.0,
            static_labels={"aggregator": "agg-a"},
            send_test_alert=True,
            wall_clock=fleet.wall,
        )
        await nursery.start(service.run)
        await trio.sleep_until(base + 12)
        fleet.up = False
        await trio.sleep_until(base + 76)
        assert [(a.alertname, a.severity) for a in service.firing()] == [
            ("FilNodeDown", "critical")
        ]
        assert service.current()[0]["labels"]["aggregator"] == "agg-a"
        await trio.sleep_until(base + 152)
        fleet.up = True
        await trio.sleep_until(base + 300)
        assert service.firing() == []
        nursery.cancel_scope.cancel()
    summary = [
        (t - base, a["labels"]["alertname"], "endsAt" in a) for t, body in posts for a in body
    ]
    assert summary == [
        (0.0, TEST_ALERT_NAME, True),
        (75.0, "FilNodeDown", False),
        (135.0, "FilNodeDown", False),
        (195.0, "FilNodeDown", False),  # still firing during the hold-down
        (215.0, "FilNodeDown", True),
    ]
    resolved = posts[-1][1][0]
    assert resolved["endsAt"] == rfc3339(1_700_000_215.0)
    assert resolved["startsAt"] == rfc3339(1_700_000_015.0)


async def test_service_evaluates_on_a_drift_free_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    base = trio.current_time()

    def provider() -> FleetSnapshot | None:
        times.append(trio.current_time() - base)
        return None

    delivery = AlertDelivery()
    with trio.move_on_after(12.5):
        await AlertingService(provider, AlertPolicy(), delivery, interval=2.5).run()
    assert times == [0.0, 2.5, 5.0, 7.5, 10.0, 12.5][: len(times)] and len(times) >= 5


async def test_service_evaluates_soon_after_a_change_and_still_on_its_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bus event wakes the evaluator (no sooner than min_gap after the last evaluation);
    a burst makes one evaluation; the timer ticks at 0, 10, 20 regardless."""
    from aggregator.alerts.service import ChangeSignal
    from aggregator.bus import BeatAccepted, PeerDisconnected
    from heartbeat.protocol.wire import Beat

    times: list[float] = []
    base = trio.current_time()

    def provider() -> FleetSnapshot | None:
        times.append(trio.current_time() - base)
        return None

    changes = ChangeSignal()
    beat = Beat(head="{bafy2bzaceaaa}", height=1, nickname="n", miner_address="")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            AlertingService(
                provider,
                AlertPolicy(),
                AlertDelivery(),
                interval=10.0,
                changes=changes,
                min_gap=1.0,
            ).run
        )
        await trio.sleep_until(base + 0.5)
        changes(PeerDisconnected("p", 0.0))  # evaluated at 1.0: min_gap after 0
        await trio.sleep_until(base + 4.0)
        for _ in range(3):  # a burst: one evaluation
            changes(BeatAccepted("p", beat, 0.0))
        await trio.sleep_until(base + 25.0)
        nursery.cancel_scope.cancel()
    assert times == [0.0, 1.0, 4.0, 10.0, 20.0]
    assert (changes.events, changes.beats) == (4, 3)


def test_load_settings_merges_file_and_table(tmp_path: Any) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[alerts]\nalertmanager_urls = ["http://127.0.0.1:9093"]\n'
        'lag_epochs = 8\nkeep_firing_for = "2m"\n'
    )
    s = load_settings({"lag_epochs": 6}, path)
    assert s.alertmanager_urls == ("http://127.0.0.1:9093",)
    assert s.policy.lag_epochs == 6 and s.policy.keep_firing_for == 120.0
    path.write_text("not toml = = =")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert info.value.setting == "--alerts-file / FIL_HEARTBEAT_AGGREGATOR_ALERTS_FILE"
