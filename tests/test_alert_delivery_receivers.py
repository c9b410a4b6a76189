"""Native receivers through `AlertDelivery` and `AlertingService` under trio's autojump
clock (httpx's MockTransport): the exact pauses a Retry-After or `retry_after` asks for, the
cap on them, reminders on the evaluator's own timing, runbook links made absolute, the
start-up test notice, and the state saved to the state db as alerts change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from aggregator.alerts.delivery import AlertDelivery, RetryPolicy
from aggregator.alerts.model import AlertPolicy, Transition, TransitionKind
from aggregator.alerts.receivers import DiscordReceiver, PagerDutyReceiver, SlackReceiver
from aggregator.alerts.service import AlertingService
from aggregator.alerts.state_store import AlertStateStore
from tests.test_alert_delivery import FakeFleet, _alert

FIRED = TransitionKind.FIRED
SLACK = "https://hooks.slack.com/services/T1/B1/secret"
DISCORD = "https://discord.com/api/webhooks/1/token"
NO_JITTER = RetryPolicy(initial=1.0, factor=2.0, jitter=0.0, give_up_after=600.0)


def _transport(log: list[tuple[float, str, Any]], replies: list[httpx.Response]) -> Any:
    async def handler(request: httpx.Request) -> httpx.Response:
        log.append((trio.current_time(), str(request.url), json.loads(request.content)))
        return replies.pop(0) if replies else httpx.Response(200, text="ok")

    return httpx.MockTransport(handler)


@asynccontextmanager
async def running(delivery: AlertDelivery) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        yield
        nursery.cancel_scope.cancel()


async def test_retry_after_seconds_are_waited_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, Any]] = []
    replies = [
        httpx.Response(429, headers={"Retry-After": "30"}),
        httpx.Response(503),  # no Retry-After: the backoff (2nd attempt failed: 2 s)
        httpx.Response(429, headers={"Retry-After": "5000"}),  # capped at max_retry_after
    ]
    delivery = AlertDelivery(
        receivers=[SlackReceiver(SLACK)], retry=NO_JITTER, transport=_transport(log, replies)
    )
    async with running(delivery):
        start = trio.current_time()
        delivery.submit([Transition(FIRED, _alert())])
        await trio.sleep(1000)
    assert [t - start for t, _, _ in log] == [0.0, 30.0, 32.0, 332.0]
    assert delivery.targets[0].delivered == 1


async def test_discords_json_retry_after_wins(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, Any]] = []
    replies = [
        httpx.Response(
            429, headers={"Retry-After": "3"}, json={"retry_after": 2.5, "global": False}
        ),
        httpx.Response(204),
    ]
    delivery = AlertDelivery(
        receivers=[DiscordReceiver(DISCORD)], retry=NO_JITTER, transport=_transport(log, replies)
    )
    async with running(delivery):
        start = trio.current_time()
        delivery.submit([Transition(FIRED, _alert())])
        await trio.sleep(60)
    assert [t - start for t, _, _ in log] == [0.0, 2.5]


async def test_service_reminds_on_repeat_interval_with_absolute_runbooks(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Node down at 12 (seen 15): the page at 75; resends every 60 s go to Alertmanager
    only; the Slack reminder after repeat_interval (10m) at 675; the start-up test notice at
    0; PagerDuty's test is a trigger and a resolve."""
    log: list[tuple[float, str, Any]] = []
    pd_replies = [httpx.Response(202, json={"status": "success", "dedup_key": "k"})] * 20

    async def handler(request: httpx.Request) -> httpx.Response:
        log.append((trio.current_time(), str(request.url), json.loads(request.content)))
        if "pagerduty" in str(request.url):
            return pd_replies.pop(0)
        return httpx.Response(200, text="ok")

    base = trio.current_time()
    fleet = FakeFleet(lambda: 1_700_000_000.0 + trio.current_time() - base)
    delivery = AlertDelivery(
        alertmanager_urls=["http://am:9093"],
        receivers=[SlackReceiver(SLACK, repeat_interval=600.0), PagerDutyReceiver("rk")],
        transport=httpx.MockTransport(handler),
        wall_clock=fleet.wall,
    )
    store = AlertStateStore(tmp_path / "agg.db")
    async with trio.open_nursery() as nursery:
        service = AlertingService(
            fleet.snapshot,
            AlertPolicy(disabled=frozenset({"FilFleetShrunk"})),
            delivery,
            interval=5.0,
            static_labels={"aggregator": "agg-a"},
            send_test_alert=True,
            wall_clock=fleet.wall,
            runbook_base_url="https://git.example/fh/blob/main",
            state_store=store,
        )
        await nursery.start(service.run)
        await trio.sleep_until(base + 12)
        fleet.up = False
        await trio.sleep_until(base + 700)
        nursery.cancel_scope.cancel()

    def at(part: str) -> list[float]:
        return [t - base for t, url, _ in log if part in url]

    assert at("hooks.slack.com") == [0.0, 75.0, 675.0]
    assert at("pagerduty") == [0.0, 0.0, 75.0]  # test trigger + resolve, then the page
    assert at("am:9093") == [0.0, *[75.0 + 60.0 * i for i in range(11)]]
    slack = [body for _, url, body in log if "slack" in url]
    assert "TEST" in slack[0]["text"] and "STILL FIRING" in slack[2]["text"]
    assert "https://git.example/fh/blob/main/grafana/RUNBOOK.md#filnodedown" in json.dumps(slack[1])
    pd = [body for _, url, body in log if "pagerduty" in url]
    assert [b["event_action"] for b in pd] == ["trigger", "resolve", "trigger"]
    assert pd[2]["links"][0]["href"].startswith("https://git.example/fh/blob/main/")
    # the state db holds the firing alert and when Slack last heard of it
    saved = AlertStateStore(tmp_path / "agg.db").load()
    (track,) = saved.evaluator["tracks"]
    assert track["phase"] == "firing" and track["labels"]["alertname"] == "FilNodeDown"
    slack_ident = delivery.targets[1].receiver.ident
    assert list(saved.notified[slack_ident].values()) == [1_700_000_675.0]
