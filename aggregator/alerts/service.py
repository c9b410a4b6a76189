"""The alerting service: evaluate the fleet every few seconds, deliver the transitions.

`AlertingService(snapshot_provider, policy, delivery, ...).run(task_status=...)` starts the
delivery tasks, sends the start-up test alert when asked, then evaluates on a drift-free timer. It
reports an `AlertingService` through `task_status.started`: `firing()` feeds the
`alerts_firing` metric, `current()` the `/api/v1/alerts` endpoint. With a runbook base URL
every alert's `runbook` annotation is absolute (base + grafana/RUNBOOK.md#alertname). With an
`AlertStateStore` (the state db) the service restores the evaluator and what each receiver
was told before it evaluates, and saves them whenever they change (a restart neither resolves
nor re-notifies).

The flags, the settings, the delivery and `alert-test`: aggregator/alerts/wiring.py.

With a `ChangeSignal` (the evaluator's required, synchronous bus subscriber: it counts the
events and flags the fleet as changed) the service also evaluates soon after a change, at
most once per `min_gap` seconds, besides its timer: silence turns a node DOWN without any
event, so the timer never stops.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from aggregator.alerts.receivers.common import absolute_runbook
from aggregator.alerts.rules import (
    Alert,
    AlertEvaluator,
    AlertPolicy,
    Transition,
    TransitionKind,
    test_alert,
)
from aggregator.bus import BeatAccepted

if TYPE_CHECKING:
    from aggregator.alerts.delivery import AlertDelivery
    from aggregator.alerts.state_store import AlertState, AlertStateStore, StateWriter
    from aggregator.bus import Event
    from aggregator.fleet import FleetSnapshot
    from aggregator.scaleout.leader import Leader

__all__ = ["AlertingService", "ChangeSignal"]

log = logging.getLogger(__name__)


class ChangeSignal:
    """The alert evaluator's bus subscriber: called inline for every event, so it only counts
    and sets a flag that the evaluation loop waits on."""

    __slots__ = ("_changed", "beats", "events")

    def __init__(self) -> None:
        self.events = 0
        self.beats = 0
        self._changed = trio.Event()

    def __call__(self, event: Event) -> None:
        self.events += 1
        if type(event) is BeatAccepted:
            self.beats += 1
        self._changed.set()

    @property
    def changed(self) -> bool:
        return self._changed.is_set()

    def clear(self) -> None:
        if self._changed.is_set():
            self._changed = trio.Event()

    async def wait(self) -> None:
        """Return once an event arrived since the last `clear` (at once if one did)."""
        await self._changed.wait()


class AlertingService:
    """The evaluator and its delivery, driven by `run`."""

    def __init__(
        self,
        snapshot_provider: Callable[[], FleetSnapshot | None],
        policy: AlertPolicy,
        delivery: AlertDelivery,
        *,
        interval: float = 5.0,
        static_labels: Mapping[str, str] | None = None,
        send_test_alert: bool = False,
        wall_clock: Callable[[], float] = time.time,
        changes: ChangeSignal | None = None,
        min_gap: float = 1.0,
        runbook_base_url: str = "",
        state_store: AlertStateStore | None = None,
        leader: Leader | None = None,
    ) -> None:
        self.snapshot_provider = snapshot_provider
        #: With several aggregators (--nats-url): only the lease's holder evaluates and
        #: sends; its state is shared through the lease's bucket (aggregator/scaleout/leader.py).
        self.leader = leader
        self._term = 0
        self._kv_signature: tuple[Any, ...] = ()
        if leader is not None:
            delivery.send_allowed = leader.may_send
        self.changes = changes
        self.min_gap = min_gap
        self.delivery = delivery
        self.interval = interval
        self.static_labels = dict(static_labels or {})
        self.send_test_alert = send_test_alert
        self.wall_clock = wall_clock
        self.evaluator = AlertEvaluator(policy, self.static_labels)
        self.evaluations = 0
        self.runbook_base_url = runbook_base_url
        self.state_store = state_store
        self.state_writer: StateWriter | None = None
        self._saved_signature: tuple[Any, ...] = ()
        self.restored = 0
        #: Called (inline, must be cheap) with each evaluation's transitions: the NATS export.
        self.on_transitions: Callable[[list[Transition]], None] | None = None

    def firing(self) -> list[Alert]:
        """Alerts firing (the `alerts_firing` metric): with a leader lease, the leader's only,
        so that scraping every aggregator counts each alert once."""
        if self.leader is not None and not self.leader.is_leader():
            return []
        return self.evaluator.firing()

    def leader_name(self) -> str | None:
        """Which aggregator sends the alerts: this one without a lease, else the holder."""
        if self.leader is None:
            return str(self.static_labels.get("aggregator", "")) or None
        return self.leader.leader_name()

    def current(self) -> list[dict[str, Any]]:
        out = self.evaluator.current()
        if self.runbook_base_url:
            for item in out:
                alert = Alert(item["labels"], item["annotations"], 0.0)
                item["annotations"] = dict(
                    absolute_runbook(alert, self.runbook_base_url).annotations
                )
        return out

    def _with_runbook(self, transitions: list[Transition]) -> list[Transition]:
        if not self.runbook_base_url:
            return transitions
        return [
            dataclasses.replace(tr, alert=absolute_runbook(tr.alert, self.runbook_base_url))
            for tr in transitions
        ]

    def state(self) -> AlertState:
        from aggregator.alerts.state_store import AlertState

        return AlertState(self.evaluator.export_state(), self.delivery.notified_state())

    async def _restore(self, nursery: trio.Nursery) -> None:
        from aggregator.alerts.state_store import StateWriter

        if self.state_store is None:
            return
        self.state_writer = StateWriter(self.state_store, self.state)
        state = await self.state_writer.load()
        if state is not None:
            self.restored = self.evaluator.restore_state(state.evaluator)
            self.delivery.restore_notified(state.notified)
            self._saved_signature = self.evaluator.state_signature
            log.info(
                "alert_state_restored alerts=%d receivers=%d", self.restored, len(state.notified)
            )
        await nursery.start(self.state_writer.run)

    def evaluate_once(self) -> list[Transition]:
        if self.changes is not None:
            self.changes.clear()  # what happens from here on is seen by the next evaluation
        snapshot = self.snapshot_provider()
        if snapshot is None:
            return []
        transitions = self.evaluator.evaluate(snapshot)
        self.evaluations += 1
        self._log_transitions(transitions)
        self.delivery.submit(self._with_runbook(transitions))
        self._after(transitions)
        return transitions

    def _adopt(self, state: AlertState) -> None:
        """Take the shared state over (another aggregator's, or an older term's)."""
        self.evaluator = AlertEvaluator(self.evaluator.policy, self.static_labels)
        self.evaluator.restore_state(state.evaluator)
        for target in self.delivery.targets:
            target.notified.clear()
        self.delivery.restore_notified(state.notified)
        self._kv_signature = self.evaluator.state_signature

    async def evaluate_led(self) -> list[Transition]:
        """One evaluation under the leader lease: a follower only mirrors the shared state
        (for /api/v1/alerts); the leader, on taking over, reads it first, then evaluates,
        writes the state by revision and only then queues the notifications (each request
        fenced by the lease). A write refused by revision withholds them."""
        leader = self.leader
        assert leader is not None
        if not leader.is_leader():
            state = await leader.load_state()
            if state is not None and not leader.is_leader():
                self._adopt(state)
            return []
        if leader.term != self._term:
            self._term = leader.term
            state = await leader.load_state()
            if state is not None:
                self._adopt(state)
            log.info("alert_leader_active term=%d alerts=%d", self._term, len(self.firing()))
        if self.changes is not None:
            self.changes.clear()
        snapshot = self.snapshot_provider()
        if snapshot is None:
            return []
        transitions = self.evaluator.evaluate(snapshot)
        self.evaluations += 1
        self._log_transitions(transitions)
        prepared = self.delivery.prepare(self._with_runbook(transitions))
        signature = self.evaluator.state_signature
        if transitions or signature != self._kv_signature:
            if not await leader.save_state(self.state()):
                log.warning("alert_notifications_withheld transitions=%d", len(transitions))
                return transitions
            self._kv_signature = signature
        self.delivery.enqueue(prepared)
        self._after(transitions)
        return transitions

    def _log_transitions(self, transitions: list[Transition]) -> None:
        for tr in transitions:
            if tr.kind is TransitionKind.FIRED:
                log.warning(
                    "alert_firing alertname=%s labels=%s", tr.alert.alertname, _short(tr.alert)
                )
            elif tr.kind is TransitionKind.RESOLVED:
                log.info(
                    "alert_resolved alertname=%s labels=%s", tr.alert.alertname, _short(tr.alert)
                )

    def _after(self, transitions: list[Transition]) -> None:
        """What follows an evaluation whose notifications were queued: the export hook, the
        state db."""
        if self.on_transitions is not None and transitions:
            self.on_transitions(transitions)
        if self.state_writer is not None:
            signature = self.evaluator.state_signature
            if transitions or signature != self._saved_signature:
                self._saved_signature = signature
                self.state_writer.mark()

    async def run(
        self, *, task_status: trio.TaskStatus[AlertingService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await self._restore(nursery)
            await nursery.start(self.delivery.run)
            if self.send_test_alert:
                alert = absolute_runbook(
                    test_alert(self.wall_clock(), self.static_labels), self.runbook_base_url
                )
                log.info("alert_test_sent targets=%d", len(self.delivery.targets))
                self.delivery.submit_test(alert)
            task_status.started(self)
            deadline = trio.current_time()
            while True:
                if self.leader is None:
                    self.evaluate_once()
                else:
                    await self.evaluate_led()
                done = trio.current_time()
                while deadline <= done:
                    deadline += self.interval
                if self.changes is None:
                    await trio.sleep_until(deadline)
                    continue
                # A burst of changes makes one evaluation; the timer still rules.
                await trio.sleep_until(min(deadline, done + self.min_gap))
                with trio.move_on_at(deadline):
                    await self.changes.wait()


def _short(alert: Alert) -> str:
    keep = ("peer_id", "nickname", "network")
    return ",".join(f"{k}={alert.labels[k]}" for k in keep if k in alert.labels)
