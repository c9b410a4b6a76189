"""The NATS bridge's consumer path, without importing nats: pull consumers (durable or
ephemeral, fetched with their acks), the polled ephemeral one without acks (in bursts), and
live core subscriptions (the merged fleet's reader of what is new, in bursts). A part of
`NatsBridge` (aggregator/scaleout/bridge.py), on its connection (`BridgeCore`); nats-py's
configurations and errors are the ones bridge.py hands in.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from aggregator.scaleout.natsconf import (
    ACK_WAIT,
    EPHEMERAL_IDLE,
    STREAM_SUBJECTS,
    NatsUnavailable,
    StreamMsg,
    subject_matcher,
)
from aggregator.scaleout.natsconnect import BridgeCore
from aggregator.scaleout.natswire import (
    LiveBuffer,
    Puller,
    Raw,
    drop_own,
    no_ack,
    raw_stream_msg,
    stream_msg,
)

__all__ = ["Consumer", "LiveReader"]

log = logging.getLogger("aggregator.scaleout.bridge")


class LiveReader:
    """A live core subscription's reader (`Consumer.live`): `take` waits, then returns the
    payloads that came meanwhile, in order."""

    def __init__(self, core: BridgeCore, buffer: LiveBuffer, nc: Any, epoch: int) -> None:
        self._core = core
        self._buffer = buffer
        self._nc = nc
        self._epoch = epoch

    async def take(self, interval: float) -> list[bytes]:
        """The payloads received within the next `interval` seconds (and before). Raises
        `NatsUnavailable` once the subscription may have missed one: its connection was lost
        (even if nats-py re-made it) or replaced, or its buffer overflowed."""
        await trio.sleep(interval)
        core, buffer = self._core, self._buffer
        if buffer.overflowed:
            raise NatsUnavailable("live", f"more than {buffer.cap} messages waiting")
        if core.epoch != self._epoch or core._nc is not self._nc:
            raise NatsUnavailable("live", "the connection was lost meanwhile")
        return buffer.take()


class Consumer(BridgeCore):
    """Pull consumers on the stream, as trio async generators; live core subscriptions."""

    @asynccontextmanager
    async def live(self, subjects: list[str], *, cap: int = 500_000) -> AsyncIterator[LiveReader]:
        """A core subscription of `subjects` on the bridge's connection, in place (the server
        has it) when this is entered: every message published on them from then on, but
        none this connection published (it connects with `no_echo`), and none while the
        connection is down. The stream is not read: what a reader must not miss it reads
        from the stream after entering (then it has everything, repeats possible), and again
        after every `NatsUnavailable` from `take`. Nothing is acknowledged, nothing waits
        in the server for a reader: the one to read what others publish, not to resume."""
        await self._jetstream()  # connected
        nc = self._nc
        buffer = LiveBuffer(cap)
        epoch = self.epoch
        subs: list[Any] = []
        try:
            for subject in subjects:

                async def subscribe(subject: str = subject) -> Any:
                    return await nc.subscribe_raw(subject, buffer.on_raw)

                subs.append(await self._aio("subscribe", subscribe))
            await self._aio("flush", nc.flush)  # the server has the subscriptions
            yield LiveReader(self, buffer, nc, epoch)
        finally:
            if not self._loop.is_closed() and not nc.is_closed:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    for sub in subs:

                        async def unsubscribe(sub: Any = sub) -> None:
                            await nc.unsubscribe_raw(sub)

                        try:
                            await self._aio("unsubscribe", unsubscribe)
                        except NatsUnavailable as exc:
                            log.debug("nats_unsubscribe_failed error=%s", exc.reason)

    async def consume(
        self,
        durable: str | None,
        subjects: list[str],
        *,
        deliver_since: float | None,
        batch: int = 256,
        acks: bool = True,
        last_per_subject: bool = False,
    ) -> AsyncGenerator[tuple[StreamMsg, Callable[[], Awaitable[None]]], None]:
        """Messages on `subjects` from a pull consumer, each with its ack.

        `durable` names a consumer the server keeps (a restart resumes after its last ack);
        None makes an ephemeral one. `deliver_since` (unix s) applies when the consumer is
        created: from that store time on, else from the start of the stream. An existing
        durable keeps its position. Several subjects are read through one consumer on the
        whole stream (servers before 2.10 filter on one subject only); messages on other
        subjects are acknowledged and skipped. `acks=False` (an ephemeral reader that
        re-creates its consumer from its own position, the merged fleet's): no
        acknowledgements at all (AckPolicy NONE), each `ack` a no-op. `last_per_subject`
        (instead of `deliver_since`): the newest message of each subject first, then every
        new one (a restarted aggregator's catch-up: one beat per node, not the window's all).
        """
        js = await self._jetstream()
        s = self.settings
        api = self._api
        filter_subject = subjects[0] if len(subjects) == 1 else STREAM_SUBJECTS
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT if acks else api.AckPolicy.NONE,
            ack_wait=ACK_WAIT,
            # a durable's reader that died leaves at most one batch unacknowledged, and the
            # server delivers nothing past it until it is redelivered (after ACK_WAIT): a
            # restart resumes in order
            max_ack_pending=batch if durable else max(1024, batch * 4),
            inactive_threshold=None if durable else EPHEMERAL_IDLE,
        )
        if last_per_subject:
            config.deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
        elif deliver_since is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(deliver_since, tz=datetime.UTC)
        sub = await self._aio(
            "pull_subscribe",
            lambda: js.pull_subscribe(
                filter_subject, durable=durable, stream=s.stream, config=config
            ),
        )
        wanted = subject_matcher(subjects)
        try:
            while True:
                try:
                    msgs: list[Any] = await self._aio(
                        "fetch", lambda: sub.fetch(batch, timeout=1.0)
                    )
                except NatsUnavailable as exc:
                    if isinstance(exc.__cause__, self._fetch_timeout):
                        continue  # nothing new within the fetch's wait
                    raise
                for msg in msgs:
                    ack = self._acker(msg) if acks else no_ack
                    if not wanted(msg.subject):
                        await ack()
                        continue
                    yield stream_msg(msg), ack
        finally:
            # Callers should wrap the iteration in `contextlib.aclosing`; a generator finalized
            # after the bridge's loop closed cannot reach nats-py any more (the server then
            # drops an ephemeral consumer after EPHEMERAL_IDLE).
            if not self._loop.is_closed():
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._aio("unsubscribe", sub.unsubscribe)
                    except NatsUnavailable as exc:
                        log.debug("nats_unsubscribe_failed error=%s", exc.reason)

    async def poll(
        self,
        subjects: list[str],
        *,
        deliver_since: float | None,
        last_per_subject: bool = False,
        batch: int = 1024,
        interval: float = 0.25,
        skip_id_prefix: str | None = None,
        on_skipped: Callable[[int, float], None] | None = None,
        until_drained: bool = False,
    ) -> AsyncGenerator[list[StreamMsg], None]:
        """Batches of messages on `subjects` from an ephemeral consumer without acks, read by
        polling: every `interval` one request for what is stored (`no_wait`), at once again
        while more is pending behind it. One wakeup per burst, not one per message as a
        waiting pull (nats-py's `fetch`) has: the merged fleet's reader. `deliver_since`,
        `last_per_subject` as for `consume`; messages whose `Nats-Msg-Id` starts with
        `skip_id_prefix` are dropped before anything else is read of them (an aggregator's
        own beats), and after each request that dropped some, `on_skipped(count, store time
        of the last)`. `until_drained`: the generator ends at the first request that leaves
        nothing stored behind it (what was stored when it began is read)."""
        js = await self._jetstream()
        nc = self._nc
        assert nc is not None
        s = self.settings
        api = self._api
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=EPHEMERAL_IDLE,
            filter_subject=subjects[0] if len(subjects) == 1 else STREAM_SUBJECTS,
        )
        if last_per_subject:
            config.deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
        elif deliver_since is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(deliver_since, tz=datetime.UTC)
        info = await self._aio("add_consumer", lambda: js.add_consumer(s.stream, config))
        puller = Puller(nc, f"$JS.API.CONSUMER.MSG.NEXT.{s.stream}.{info.name}", batch)
        await self._aio("subscribe", puller.start)
        wanted = subject_matcher(subjects)
        try:
            while True:
                msgs = await self._aio("fetch", puller.pull)
                # more stored behind this request (the last message's pending count: a
                # no-wait request may end before `batch`): ask again at once
                full = len(msgs) >= batch or bool(msgs and puller.pending(msgs[-1]))
                if skip_id_prefix is not None:
                    msgs = drop_own(msgs, skip_id_prefix, on_skipped)
                out = self._stream_msgs(msgs, wanted)
                if out:
                    yield out
                if not full:
                    if until_drained:
                        return
                    await trio.sleep(interval)
        finally:
            if not self._loop.is_closed():
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._aio("unsubscribe", puller.stop)
                        await self._aio(
                            "delete_consumer", lambda: js.delete_consumer(s.stream, info.name)
                        )
                    except NatsUnavailable as exc:
                        log.debug("nats_unsubscribe_failed error=%s", exc.reason)

    @staticmethod
    def _stream_msgs(msgs: list[Raw], wanted: Callable[[str], bool]) -> list[StreamMsg]:
        out: list[StreamMsg] = []
        for raw in msgs:
            try:
                msg = raw_stream_msg(raw)
            except ValueError as exc:  # not a stream delivery: nothing to read of it
                log.debug("nats_poll_not_a_stream_message err=%s", exc)
                continue
            if wanted(msg.subject):
                out.append(msg)
        return out

    def _acker(self, msg: Any) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            await self._aio("ack", msg.ack)

        return ack
