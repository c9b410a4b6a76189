"""Each native receiver against its local fake API (tests/fake_receivers.py, real HTTP on
127.0.0.1): the page, the recovery, the reminder after `repeat_interval`, retries after a
429 (waiting what the API asked) and a 500, and the test notification. Every fake checks
the documented request shape; `rejected` must stay empty. One notification per receiver is
saved to build/notifications/<receiver>.json.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from aggregator.alerts.delivery import AlertDelivery, RetryPolicy
from aggregator.alerts.model import Alert, Transition, TransitionKind
from aggregator.alerts.receivers import (
    DiscordReceiver,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TelegramReceiver,
)
from aggregator.alerts.receivers.common import absolute_runbook
from aggregator.alerts.wiring import alert_test
from tests.fake_receivers import FakeApi, FakeDiscord, FakePagerDuty, FakeSlack, FakeTelegram
from tests.fake_receivers import serving as serving_fakes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FIRED, RESEND, RESOLVED = TransitionKind.FIRED, TransitionKind.RESEND, TransitionKind.RESOLVED
NOTIFICATIONS = Path(__file__).resolve().parent.parent / "build" / "notifications"
FAST = RetryPolicy(
    initial=0.05, factor=2.0, max_delay=0.2, jitter=0.0, attempt_timeout=5.0, give_up_after=10.0
)
RUNBOOK_BASE = "https://github.com/example/fil-heartbeat/blob/main"
TOKEN = "123456:TEST-token_abc"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


def _alert(ends_at: float | None = None) -> Alert:
    alert = Alert(
        {
            "alertname": "FilNodeDown",
            "severity": "critical",
            "peer_id": "12D3KooWAlpha",
            "nickname": "alpha",
            "miner": "f01234",
            "network": "mainnet",
            "aggregator": "agg-a",
        },
        {
            "summary": "Filecoin node alpha is down",
            "description": "No aggregator sees node alpha (miner f01234, peer 12D3KooWAlpha, "
            "network mainnet) up: its heartbeat stream is closed or timed out.",
            "runbook": "grafana/RUNBOOK.md#filnodedown",
        },
        starts_at=1_700_000_000.25,
        ends_at=ends_at,
    )
    return absolute_runbook(alert, RUNBOOK_BASE)


@dataclass(frozen=True)
class Case:
    name: str
    fake: Callable[[], FakeApi]
    receiver: Callable[[str, float], Receiver]  # (fake's base URL, repeat_interval)
    retry_after: float  # what the fake's 429 asks for


CASES = [
    Case(
        "slack",
        FakeSlack,
        lambda base, r: SlackReceiver(f"{base}/services/T0001/B0001/XXXXsecretXXXX", r),
        1.0,
    ),
    Case(
        "discord",
        FakeDiscord,
        lambda base, r: DiscordReceiver(f"{base}/api/webhooks/1234567890/s3cr3t-token", r),
        0.4,
    ),
    Case(
        "telegram",
        FakeTelegram,
        lambda base, r: TelegramReceiver(TOKEN, "-1001234567890", base, r),
        1.0,
    ),
    Case(
        "pagerduty",
        FakePagerDuty,
        lambda base, r: PagerDutyReceiver(ROUTING_KEY, f"{base}/v2/enqueue", repeat_interval=r),
        1.0,
    ),
]
IDS = [c.name for c in CASES]


class Wall:
    """A settable wall clock for `repeat_interval`."""

    def __init__(self, now: float = 1_700_000_100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def delivering(
    case: Case, repeat: float = 0.0, wall: Wall | None = None
) -> AsyncIterator[tuple[FakeApi, AlertDelivery]]:
    fake = case.fake()
    async with serving_fakes(fake) as (base,):
        delivery = AlertDelivery(
            receivers=[case.receiver(base, repeat)], retry=FAST, wall_clock=wall or Wall()
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(delivery.run)
            yield fake, delivery
            nursery.cancel_scope.cancel()
    assert fake.rejected == []


async def until(predicate: Callable[[], bool]) -> None:
    """The fake records a request before its reply reaches the delivery: wait for both."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


def save(name: str, body: Any) -> None:
    NOTIFICATIONS.mkdir(parents=True, exist_ok=True)
    (NOTIFICATIONS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_trigger_then_resolve(case: Case) -> None:
    async with delivering(case) as (fake, delivery):
        delivery.submit([Transition(FIRED, _alert())])
        await fake.wait_for(1)
        delivery.submit([Transition(RESOLVED, _alert(ends_at=1_700_000_300.0))])
        await fake.wait_for(2)
    fired, resolved = fake.accepted
    save(case.name, fired)
    save(f"{case.name}-resolved", resolved)
    text = json.dumps(fired)
    assert "alpha" in text and "FilNodeDown" in text
    assert "secret" not in json.dumps(delivery.targets[0].name)
    if case.name == "pagerduty":
        assert fired["event_action"] == "trigger" and resolved["event_action"] == "resolve"
        assert fired["dedup_key"] == resolved["dedup_key"]
        assert fired["payload"]["severity"] == "critical"
        assert fired["links"] == [
            {"href": f"{RUNBOOK_BASE}/grafana/RUNBOOK.md#filnodedown", "text": "Runbook"}
        ]
        assert fired["payload"]["custom_details"]["labels"]["peer_id"] == "12D3KooWAlpha"
    else:
        assert "FIRING" in text and "RESOLVED" in json.dumps(resolved)
        assert f"{RUNBOOK_BASE}/grafana/RUNBOOK.md#filnodedown" in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_repeat_reminder_after_repeat_interval_only(case: Case) -> None:
    wall = Wall()
    async with delivering(case, repeat=3600.0, wall=wall) as (fake, delivery):
        delivery.submit([Transition(FIRED, _alert())])
        await fake.wait_for(1)
        for step in (60.0, 1800.0, 3599.0):  # the evaluator's resends, before the hour
            wall.now = 1_700_000_100.0 + step
            delivery.submit([Transition(RESEND, _alert())])
        wall.now = 1_700_000_100.0 + 3600.0
        delivery.submit([Transition(RESEND, _alert())])
        await fake.wait_for(2)
        wall.now += 60.0
        delivery.submit([Transition(RESEND, _alert())])  # the next reminder is an hour away
        await trio.sleep(0.3)
    assert len(fake.accepted) == 2
    reminder = json.dumps(fake.accepted[1])
    if case.name == "pagerduty":  # re-triggered, same dedup key: PagerDuty adds to its alert
        assert fake.accepted[1]["dedup_key"] == fake.accepted[0]["dedup_key"]
        assert fake.accepted[1]["payload"]["custom_details"]["notice"] == "reminder"
    else:
        assert "STILL FIRING" in reminder


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_no_reminder_when_repeat_is_off(case: Case) -> None:
    wall = Wall()
    async with delivering(case, repeat=0.0, wall=wall) as (fake, delivery):
        delivery.submit([Transition(FIRED, _alert())])
        await fake.wait_for(1)
        wall.now += 10 * 86400.0
        delivery.submit([Transition(RESEND, _alert())])
        delivery.submit([Transition(RESOLVED, _alert(ends_at=wall.now))])
        await fake.wait_for(2)
    assert len(fake.requests) == 2  # the page and the recovery, nothing between


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_429_waits_what_the_api_asked_then_delivers(case: Case) -> None:
    async with delivering(case) as (fake, delivery):
        fake.fail(429, case.retry_after)
        delivery.submit([Transition(FIRED, _alert())])
        await fake.wait_for(1)
        await until(lambda: delivery.targets[0].delivered == 1)
    (target,) = delivery.targets
    assert len(fake.requests) == 2 and target.delivered == 1 and target.retries == 1
    gap = fake.times[1] - fake.times[0]
    assert case.retry_after <= gap < case.retry_after + 2.0
    assert fake.requests[0][1] == fake.requests[1][1]  # the same notification again


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_500s_are_retried_with_backoff(case: Case) -> None:
    async with delivering(case) as (fake, delivery):
        fake.fail(500, times=2)
        delivery.submit([Transition(FIRED, _alert())])
        await fake.wait_for(1)
        await until(lambda: delivery.targets[0].delivered == 1)
    (target,) = delivery.targets
    assert (target.delivered, target.retries, target.failed) == (1, 2, 0)
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # FAST: 0.05 s, then 0.1 s


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_a_400_is_not_retried(case: Case) -> None:
    async with delivering(case) as (fake, delivery):
        fake.fail(400)
        delivery.submit([Transition(FIRED, _alert())])
        await until(lambda: delivery.targets[0].failed == 1)
    assert len(fake.requests) == 1 and fake.accepted == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_test_notification(case: Case) -> None:
    lines: list[str] = []
    async with delivering(case) as (fake, delivery):
        results = await alert_test(
            delivery,
            now=1_700_000_000.0,
            static_labels={"aggregator": "agg-a"},
            runbook_base_url=RUNBOOK_BASE,
            out=lines.append,
        )
    assert [r.ok for r in results] == [True]
    assert lines[-1] == "1 of 1 receivers took the test notification"
    assert lines[0].startswith(f"ok   {case.name}")
    assert "secret" not in "".join(lines) and TOKEN not in "".join(lines)
    save(f"{case.name}-test", fake.accepted[0])
    if case.name == "pagerduty":  # a test leaves no incident open
        assert [b["event_action"] for b in fake.accepted] == ["trigger", "resolve"]
        assert fake.accepted[0]["payload"]["severity"] == "info"
    else:
        assert len(fake.accepted) == 1 and "TEST" in json.dumps(fake.accepted[0])


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_test_notification_reports_a_refusal(case: Case) -> None:
    lines: list[str] = []
    async with delivering(case) as (fake, delivery):
        fake.fail(403)
        results = await alert_test(delivery, now=1_700_000_000.0, out=lines.append)
    assert [r.ok for r in results] == [False]
    assert lines[0].startswith(f"FAIL {case.name}") and "status=403" in lines[0]


async def test_many_alerts_fit_each_api_limits() -> None:
    """60 alerts in one evaluation: one message per chat receiver within its limits (the
    fakes reject anything over), one event per alert for PagerDuty."""
    alerts = []
    for i in range(60):
        a = _alert()
        labels = {**a.labels, "peer_id": f"12D3KooW{i:04d}", "nickname": f"node-{i}" * 5}
        alerts.append(Transition(FIRED, Alert(labels, a.annotations, a.starts_at)))
    for case in CASES:
        async with delivering(case) as (fake, delivery):
            delivery.submit(alerts)
            await fake.wait_for(60 if case.name == "pagerduty" else 1)
        assert len(fake.accepted) == (60 if case.name == "pagerduty" else 1), case.name
        if case.name != "pagerduty":
            assert "more" in json.dumps(fake.accepted[0]), case.name
