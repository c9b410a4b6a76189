"""The alert delivery metrics (`DeliveryCollector`), scraped through a prometheus_client
registry and parsed back: real HTTP receivers (hypercorn on 127.0.0.1, port 0) and a dead
port for the counters, httpx's MockTransport under the autojump clock for the reasons."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.alerts.delivery import (
    AlertDelivery,
    DeliveryCollector,
    FailureReason,
    RetryPolicy,
    receiver_label,
)
from aggregator.alerts.rules import Transition, TransitionKind
from tests.helpers import eventually
from tests.promservers import free_port
from tests.test_alert_delivery import FAST, Receiver, _alert, running, serving

FIRED = TransitionKind.FIRED
N = "fil_heartbeat_alert_"
REASONS = [r.value for r in FailureReason]
WALL = 1_700_000_123.5

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(delivery: AlertDelivery) -> tuple[str, Samples]:
    """The exposition text of a registry holding only the collector, and its samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeliveryCollector(delivery))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def receiver_values(samples: Samples, kind: str, receiver: str) -> dict[str, float]:
    """One receiver's samples by short name (`failures_<reason>` for the reasons)."""
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        labels_d = dict(labels)
        if labels_d.get("kind") != kind or labels_d.get("receiver") != receiver:
            continue
        short = name.removeprefix(N)
        if "reason" in labels_d:
            short = f"failures_{labels_d['reason']}"
        out[short] = value
    return out


def expected(
    sent: float = 0,
    abandoned: float = 0,
    dropped: float = 0,
    depth: float = 0,
    last: float = 0.0,
    **failures: float,
) -> dict[str, float]:
    values = {
        "notifications_total": sent,
        "notifications_abandoned_total": abandoned,
        "batches_dropped_total": dropped,
        "queue_depth": depth,
        "last_success_timestamp_seconds": last,
    }
    values.update({f"failures_{r}": failures.get(r, 0) for r in REASONS})
    return values


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("https://user:secret@am.example:9093/base", "https://am.example:9093/base"),
        ("https://hooks.example/fil?token=secret#frag", "https://hooks.example/fil"),
        ("http://[::1]:9093", "http://[::1]:9093"),
    ],
)
def test_receiver_label_leaves_out_credentials(url: str, label: str) -> None:
    assert receiver_label(url) == label


@pytest.mark.integration
async def test_a_500_then_a_success_moves_the_counters() -> None:
    flaky, hook = Receiver(statuses=[500]), Receiver()
    async with serving(flaky, hook) as (am_url, hook_url):
        # a password in the URL: sent to the receiver, never exported
        am_url = am_url.replace("http://", "http://agg:secret@")
        delivery = AlertDelivery(
            alertmanager_urls=[am_url],
            webhook_urls=[hook_url + "/hook"],
            retry=FAST,
            wall_clock=lambda: WALL,
        )
        am_label = am_url.replace("agg:secret@", "")
        _, before = scrape(delivery)
        assert receiver_values(before, "alertmanager", am_label) == expected()
        assert receiver_values(before, "webhook", hook_url + "/hook") == expected()
        async with running(delivery):
            delivery.submit([Transition(FIRED, _alert())])
            await eventually(lambda: [t.delivered for t in delivery.targets] == [1, 1])
        text, after = scrape(delivery)
    assert len(flaky.requests) == 2 and len(hook.requests) == 1
    assert receiver_values(after, "alertmanager", am_label) == expected(
        sent=1, last=WALL, http_5xx=1
    )
    assert receiver_values(after, "webhook", hook_url + "/hook") == expected(sent=1, last=WALL)
    assert "secret" not in text


@pytest.mark.integration
async def test_a_dead_url_counts_connection_errors_then_gives_up() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # bound once, then closed: nothing listens
    retry = RetryPolicy(
        initial=0.02, factor=1.0, max_delay=0.02, jitter=0.0, attempt_timeout=2.0, give_up_after=0.1
    )
    delivery = AlertDelivery(webhook_urls=[dead], retry=retry, wall_clock=lambda: WALL)
    (target,) = delivery.targets
    async with running(delivery):
        delivery.submit([Transition(FIRED, _alert())])
        await eventually(lambda: target.failed == 1)
    attempts = target.retries + 1
    assert attempts >= 2
    _, samples = scrape(delivery)
    assert receiver_values(samples, "webhook", dead) == expected(
        abandoned=1, connection_error=attempts
    )


@pytest.mark.integration
async def test_queue_depth_and_dropped_batches() -> None:
    stuck = Receiver(hang=True)
    async with serving(stuck) as (url,):
        delivery = AlertDelivery(alertmanager_urls=[url], retry=FAST, queue_size=2)
        async with running(delivery):
            await trio.testing.wait_all_tasks_blocked()  # the drain task waits for work
            for _ in range(5):  # one to the waiting task, two queued, two dropped
                delivery.submit([Transition(FIRED, _alert())])
            await stuck.wait_for(1)
            _, samples = scrape(delivery)
            assert receiver_values(samples, "alertmanager", url) == expected(dropped=2, depth=2)


def _transport(script: list[int | type[Exception] | None]) -> httpx.MockTransport:
    """Answers each attempt from `script`: a status, an httpx error to raise, or None to
    hang (the attempt times out); then 200."""

    async def handler(request: httpx.Request) -> httpx.Response:
        step = script.pop(0) if script else 200
        if step is None:
            await trio.sleep_forever()
        if isinstance(step, type):
            raise step("scripted", request=request)  # type: ignore[call-arg]
        assert isinstance(step, int)
        return httpx.Response(step)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("step", "reason", "retried"),
    [
        (302, "http_3xx", True),
        (404, "http_4xx", False),
        (429, "http_4xx", True),
        (500, "http_5xx", True),
        (httpx.ConnectError, "connection_error", True),
        (httpx.RemoteProtocolError, "connection_error", True),
        (httpx.ReadTimeout, "timeout", True),
        (None, "timeout", True),  # no answer within attempt_timeout
    ],
)
async def test_failure_reasons(
    autojump_clock: trio.testing.MockClock,
    step: int | type[Exception] | None,
    reason: str,
    retried: bool,
) -> None:
    retry = RetryPolicy(initial=1.0, jitter=0.0, attempt_timeout=10.0)
    delivery = AlertDelivery(
        alertmanager_urls=["http://am:9093"],
        retry=retry,
        transport=_transport([step]),
        wall_clock=lambda: WALL,
    )
    async with running(delivery):
        delivery.submit([Transition(FIRED, _alert())])
        await trio.sleep(60)
    _, samples = scrape(delivery)
    values = receiver_values(samples, "alertmanager", "http://am:9093")
    if retried:
        assert values == expected(sent=1, last=WALL, **{reason: 1})
    else:
        assert values == expected(abandoned=1, **{reason: 1})
