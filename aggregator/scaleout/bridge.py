"""The one shell around NATS JetStream: the only importer of `nats` and `trio_asyncio`.

nats-py is asyncio-only; the aggregator is trio. `open_bridge` enters one trio-asyncio loop
(`trio_asyncio.open_loop()`) and every call into nats-py runs through `aio_as_trio`, so
callers see plain trio awaitables, cancellable and with deadlines. Every error the library
raises (its own, OSError, asyncio timeouts) is translated here, and only here, into
`NatsUnavailable`; nothing above this module knows nats-py exists.

Once open, any trio task of the process may call the bridge (it holds the loop it entered).
The connection is made lazily on first use and re-made after it closes, so an aggregator
started while NATS is down runs normally and its export spools until NATS answers. While a
connection is up, nats-py reconnects by itself across the cluster's members.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import logging
import ssl
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from aggregator.scaleout.natsconf import (
    ACK_WAIT,
    CONNECT_TIMEOUT,
    DUPLICATE_WINDOW,
    EPHEMERAL_IDLE,
    REQUEST_TIMEOUT,
    STREAM_SUBJECTS,
    NatsSettings,
    NatsUnavailable,
    StreamMsg,
    pub_ack,
    settings_from_config,
    subject_matcher,
)
from aggregator.scaleout.natswire import (
    AckWindow,
    Puller,
    PullFailed,
    drop_own,
    no_ack,
    raw_sender,
    stream_msg,
)

__all__ = [
    "STREAM_SUBJECTS",
    "NatsBridge",
    "NatsSettings",
    "NatsUnavailable",
    "StreamMsg",
    "open_bridge",
    "settings_from_config",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What nats-py raises when the server or the network fails us.
_NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    PullFailed,
    OSError,
    asyncio.TimeoutError,
    ssl.SSLError,
)


_CONNECT_PARAMS = frozenset(inspect.signature(Client.connect).parameters)


def _server(nc: Client | None) -> str:
    url = nc.connected_url if nc is not None else None
    return url.netloc if url is not None else "?"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsBridge:
    """JetStream publish, pull consumers and key-value, as trio awaitables."""

    def __init__(self, settings: NatsSettings, loop: Any) -> None:
        self.settings = settings
        # The trio-asyncio loop `open_bridge` entered: every call runs on it, from any trio
        # task of the process (the loop's context variable is set only in the opening task).
        self._loop = loop
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        #: Buckets other than the lease's (`kv_*(bucket=...)`), per JetStream context.
        self._plain: tuple[JetStreamContext, dict[str, KeyValue]] | None = None
        self._lock = trio.Lock()
        self.connects = 0
        #: The publish acks' inbox (per connection) and the futures waiting on it.
        self._ack_sub: tuple[Client, str] | None = None
        self._acks: dict[str, tuple[AckWindow, int]] = {}
        self._ack_seq = 0

    # -- plumbing -------------------------------------------------------------

    async def _aio(self, operation: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one nats-py coroutine under trio, translating its errors."""
        if self._loop.is_closed():
            raise NatsUnavailable(operation, "the bridge is closed")
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)()
            return result
        except _NATS_ERRORS as exc:
            raise NatsUnavailable(operation, _describe(exc)) from exc
        except asyncio.CancelledError as exc:
            # trio_asyncio turns a cancellation of ours into trio.Cancelled; a bare asyncio
            # one means the loop is closing under a (shielded) caller: the bridge is gone
            raise NatsUnavailable(operation, "the bridge is closing") from exc

    def _connect_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.urls),
            "connect_timeout": CONNECT_TIMEOUT,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "name": "fil-heartbeat-aggregator",
        }
        if "skip_subject_validation" in _CONNECT_PARAMS:
            # every subject we publish is built from sanitized tokens (schema.subject_token):
            # no per-message check (nats-py 2.11+)
            options["skip_subject_validation"] = True
        if s.user is not None:
            options["user"] = s.user
            options["password"] = s.password or ""
        if s.token is not None:
            options["token"] = s.token
        if s.creds_file is not None:
            options["user_credentials"] = str(s.creds_file)
        if s.nkey_file is not None:
            options["nkeys_seed"] = str(s.nkey_file)
        if s.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(s.tls_ca))
        return options

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats_error error=%s", _describe(exc))

    async def _on_disconnected(self) -> None:
        log.info("nats_disconnected")

    async def _on_reconnected(self) -> None:
        log.info("nats_reconnected server=%s", _server(self._nc))

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context of a live connection, connecting first when needed."""
        async with self._lock:
            if self._nc is not None and not self._nc.is_closed and self._js is not None:
                return self._js
            self._nc, self._js, self._kv = None, None, None
            options = self._connect_options()

            async def connect() -> Client:
                # nats-py's first connect walks the server pool once (no retry loop): a
                # cluster that is entirely down fails fast and the caller spools.
                return await nats.connect(**options)

            nc = await self._aio("connect", connect)
            self._nc, self._js = nc, nc.jetstream(timeout=REQUEST_TIMEOUT)
            self.connects += 1
            log.info("nats_connected server=%s", _server(nc))
            return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def close(self) -> None:
        nc, self._nc, self._js, self._kv = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with trio.move_on_after(5):
                try:
                    await self._aio("close", nc.close)
                except NatsUnavailable as exc:
                    log.debug("nats_close_failed error=%s", exc.reason)

    # -- the stream -----------------------------------------------------------

    async def ensure_stream(self) -> None:
        """Create the stream when absent: replicas min(setting, cluster size), limits, dedup."""
        js = await self._jetstream()
        s = self.settings
        try:
            await self._aio("stream_info", lambda: js.stream_info(s.stream))
            return
        except NatsUnavailable as exc:
            if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                raise
        await self._add_with_replicas(
            "add_stream",
            lambda replicas: js.add_stream(
                api.StreamConfig(
                    name=s.stream,
                    subjects=[STREAM_SUBJECTS],
                    retention=api.RetentionPolicy.LIMITS,
                    storage=api.StorageType.FILE,
                    num_replicas=replicas,
                    max_age=s.max_age,
                    max_bytes=s.max_bytes,
                    duplicate_window=DUPLICATE_WINDOW,
                    discard=api.DiscardPolicy.OLD,
                )
            ),
        )
        log.info("nats_stream_created stream=%s", s.stream)

    async def _add_with_replicas(
        self, operation: str, create: Callable[[int], Coroutine[Any, Any, Any]]
    ) -> Any:
        """Create with the configured replicas, fewer while the cluster is too small for them."""
        replicas = max(1, min(self.settings.replicas, 5))
        while True:
            try:
                return await self._aio(operation, functools.partial(create, replicas))
            except NatsUnavailable as exc:
                cause = exc.__cause__
                # 10023 insufficient resources, 10074 replicas > 1 without a cluster
                code = getattr(cause, "err_code", None)
                if replicas <= 1 or not isinstance(cause, nats.js.errors.APIError):
                    raise
                if code not in (10023, 10074) and getattr(cause, "code", None) != 500:
                    raise
                replicas -= 1
                log.info("nats_replicas_lowered operation=%s replicas=%d", operation, replicas)

    async def publish(self, subject: str, data: bytes, msg_id: str, timeout: float = 2.0) -> bool:
        """Store one message; True when stored, False when the server saw `msg_id` already."""
        js = await self._jetstream()
        headers = {"Nats-Msg-Id": msg_id}
        ack = await self._aio(
            "publish",
            lambda: js.publish(
                subject, data, timeout=timeout, stream=self.settings.stream, headers=headers
            ),
        )
        return not bool(ack.duplicate)

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, str]], timeout: float = 2.0
    ) -> list[bool | None]:
        """Publish (subject, data, msg_id) items pipelined on the connection, in order.

        One result per item: True stored, False a duplicate, None not acknowledged (retry
        it). Raises `NatsUnavailable` when there is no connection at all."""
        await self._jetstream()  # connected (or NatsUnavailable)
        stream = self.settings.stream

        nc = self._nc
        assert nc is not None

        async def publish_all() -> list[Any]:
            # One core PUB each, replying to this connection's one ack inbox: no request
            # task or timer per message (nats-py's js.publish and publish_async have one),
            # and no suspension between the PUBs, so they leave in order in few writes and
            # the stream stores them in order.
            prefix = await self._ack_prefix(nc)
            window = AckWindow(len(items))
            tokens: list[str] = []
            # Connected: each HPUB is written as bytes into the client's pending buffer
            # (`_send_command`, what `publish` ends in) and flushed once: nats-py's per
            # message header checks were most of the export's publishing cost. Ids with
            # line breaks, and anything while reconnecting, take the public `publish`.
            raw = raw_sender(nc)
            tail = b"\r\nNats-Expected-Stream: " + stream.encode() + b"\r\n\r\n"
            for index, (subject, data, msg_id) in enumerate(items):
                token = f"{prefix}{self._ack_seq}"
                tokens.append(token)
                self._ack_seq += 1
                self._acks[token] = (window, index)
                if raw is not None and "\n" not in msg_id and "\r" not in msg_id:
                    hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + tail
                    head = f"HPUB {subject} {token} {len(hdr)} {len(hdr) + len(data)}\r\n"
                    await raw(head.encode() + hdr + data + b"\r\n")
                else:
                    headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": stream}
                    await nc.publish(subject, data, reply=token, headers=headers)
            if raw is not None and items:
                await nc._flush_pending()
            try:
                if items:
                    # one event for the window, set by its last ack: no callback per message
                    await asyncio.wait_for(window.complete.wait(), timeout)
            except TimeoutError:
                pass  # the unanswered ones stay None: retried
            finally:
                for token in tokens:
                    self._acks.pop(token, None)  # unanswered: a late ack is ignored
            return window.bodies

        results = await self._aio("publish", publish_all)
        return [pub_ack(r) for r in results]

    async def _ack_prefix(self, nc: Client) -> str:
        """This connection's ack inbox (`<inbox>.`), subscribed once (asyncio side)."""
        if self._ack_sub is not None and self._ack_sub[0] is nc:
            return self._ack_sub[1]
        prefix = nc.new_inbox() + "."
        acks = self._acks

        async def on_ack(msg: Msg) -> None:
            entry = acks.pop(msg.subject, None)
            if entry is not None:
                # a status reply (503: no responders) has no body: not stored
                entry[0].answer(
                    entry[1], b"" if msg.headers and msg.headers.get("Status") else msg.data
                )

        await nc.subscribe(prefix + "*", cb=on_ack, pending_msgs_limit=-1)
        self._ack_sub = (nc, prefix)
        return prefix

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
                    msgs: list[Msg] = await self._aio(
                        "fetch", lambda: sub.fetch(batch, timeout=1.0)
                    )
                except NatsUnavailable as exc:
                    if isinstance(exc.__cause__, nats.errors.TimeoutError | asyncio.TimeoutError):
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
    ) -> AsyncGenerator[list[StreamMsg], None]:
        """Batches of messages on `subjects` from an ephemeral consumer without acks, read by
        polling: every `interval` one request for what is stored (`no_wait`), at once again
        while more is pending behind it. One wakeup per burst, not one per message as a
        waiting pull (nats-py's `fetch`) has: the merged fleet's reader. `deliver_since`,
        `last_per_subject` as for `consume`; messages whose `Nats-Msg-Id` starts with
        `skip_id_prefix` are dropped before anything else is read of them (an aggregator's
        own beats), and after each request that dropped some, `on_skipped(count, store time
        of the last)`."""
        js = await self._jetstream()
        nc = self._nc
        assert nc is not None
        s = self.settings
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
                full = len(msgs) >= batch or bool(msgs and msgs[-1].metadata.num_pending)
                if skip_id_prefix is not None:
                    msgs = drop_own(msgs, skip_id_prefix, on_skipped)
                out = [stream_msg(m) for m in msgs if wanted(m.subject)]
                if out:
                    yield out
                if not full:
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

    def _acker(self, msg: Msg) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            await self._aio("ack", msg.ack)

        return ack

    # -- key-value (the leader lease) ----------------------------------------

    async def _bucket(self, name: str | None = None) -> KeyValue:
        """The lease bucket (`kv_bucket`, entries expire after `lease_ttl`), or with `name`
        another bucket of this connection whose entries never expire (the alert state)."""
        js = await self._jetstream()
        if name is not None and name != self.settings.kv_bucket:
            return await self._plain_bucket(js, name)
        if self._kv is not None:
            return self._kv
        s = self.settings
        try:
            kv = await self._aio("key_value", lambda: js.key_value(s.kv_bucket))
        except NatsUnavailable as exc:
            if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                raise
            kv = await self._add_with_replicas(
                "create_key_value",
                lambda replicas: js.create_key_value(
                    bucket=s.kv_bucket, ttl=s.lease_ttl, history=1, replicas=replicas
                ),
            )
        self._kv = kv
        return kv

    async def _plain_bucket(self, js: JetStreamContext, name: str) -> KeyValue:
        cached = self._plain
        if cached is None or cached[0] is not js:
            cached = self._plain = (js, {})
        buckets: dict[str, KeyValue] = cached[1]
        if name in buckets:
            return buckets[name]
        try:
            kv = await self._aio("key_value", lambda: js.key_value(name))
        except NatsUnavailable as exc:
            if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                raise
            kv = await self._add_with_replicas(
                "create_key_value",
                lambda replicas: js.create_key_value(bucket=name, history=1, replicas=replicas),
            )
        buckets[name] = kv
        return kv

    async def kv_create(self, key: str, value: bytes, *, bucket: str | None = None) -> int | None:
        """Write `key` only if absent (or deleted/expired): its revision, None if it exists."""
        kv = await self._bucket(bucket)
        try:
            return int(await self._aio("kv_create", lambda: kv.create(key, value)))
        except NatsUnavailable as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyWrongLastSequenceError):
                return None
            raise

    async def kv_update(
        self, key: str, value: bytes, last: int, *, bucket: str | None = None
    ) -> int | None:
        """Rewrite `key` only if its revision is still `last`: the new one, None if lost."""
        kv = await self._bucket(bucket)
        try:
            return int(await self._aio("kv_update", lambda: kv.update(key, value, last=last)))
        except NatsUnavailable as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyWrongLastSequenceError):
                return None
            raise

    async def kv_get(self, key: str, *, bucket: str | None = None) -> tuple[bytes, int] | None:
        """The value and revision of `key`, None when absent, deleted or expired."""
        kv = await self._bucket(bucket)
        try:
            entry = await self._aio("kv_get", lambda: kv.get(key))
        except NatsUnavailable as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        if entry.value is None or entry.revision is None:
            return None
        return bytes(entry.value), int(entry.revision)

    async def kv_delete(self, key: str, *, bucket: str | None = None) -> None:
        kv = await self._bucket(bucket)
        await self._aio("kv_delete", lambda: kv.delete(key))


@asynccontextmanager
async def open_bridge(settings: NatsSettings) -> AsyncIterator[NatsBridge]:
    """Enter the one trio-asyncio loop and yield a bridge; closes the connection on exit."""
    if not settings.urls:
        raise ValueError("open_bridge needs at least one NATS URL")
    async with trio_asyncio.open_loop() as loop:
        bridge = NatsBridge(settings, loop)
        try:
            yield bridge
        finally:
            with trio.CancelScope(shield=True):
                await bridge.close()
