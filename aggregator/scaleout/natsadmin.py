"""The NATS bridge's administration, without importing nats: the stream created when absent,
the key-value buckets (the leader lease's, and others' that never expire: the alert state)
and their operations. A part of `NatsBridge` (aggregator/scaleout/bridge.py), on its
connection (`BridgeCore`); nats-py's configurations and errors are the ones bridge.py hands in.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aggregator.scaleout.natsconf import DUPLICATE_WINDOW, STREAM_SUBJECTS, NatsUnavailable
from aggregator.scaleout.natsconnect import BridgeCore

__all__ = ["StreamAdmin"]

log = logging.getLogger("aggregator.scaleout.bridge")


class StreamAdmin(BridgeCore):
    """The stream and the key-value buckets."""

    #: The lease bucket, once opened (reset with the connection).
    _kv: Any
    #: Buckets other than the lease's (`kv_*(bucket=...)`), per JetStream context.
    _plain: tuple[Any, dict[str, Any]] | None

    async def ensure_stream(self) -> None:
        """Create the stream when absent: replicas min(setting, cluster size), limits, dedup."""
        js = await self._jetstream()
        s = self.settings
        api = self._api
        try:
            await self._aio("stream_info", lambda: js.stream_info(s.stream))
            return
        except NatsUnavailable as exc:
            if not isinstance(exc.__cause__, self._not_found):
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
                if replicas <= 1 or not isinstance(cause, self._api_error):
                    raise
                if code not in (10023, 10074) and getattr(cause, "code", None) != 500:
                    raise
                replicas -= 1
                log.info("nats_replicas_lowered operation=%s replicas=%d", operation, replicas)

    # -- key-value (the leader lease) ----------------------------------------

    async def _bucket(self, name: str | None = None) -> Any:
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
            if not isinstance(exc.__cause__, self._not_found):
                raise
            kv = await self._add_with_replicas(
                "create_key_value",
                lambda replicas: js.create_key_value(
                    bucket=s.kv_bucket, ttl=s.lease_ttl, history=1, replicas=replicas
                ),
            )
        self._kv = kv
        return kv

    async def _plain_bucket(self, js: Any, name: str) -> Any:
        cached = self._plain
        if cached is None or cached[0] is not js:
            cached = self._plain = (js, {})
        buckets: dict[str, Any] = cached[1]
        if name in buckets:
            return buckets[name]
        try:
            kv = await self._aio("key_value", lambda: js.key_value(name))
        except NatsUnavailable as exc:
            if not isinstance(exc.__cause__, self._not_found):
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
            if isinstance(exc.__cause__, self._wrong_last_sequence):
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
            if isinstance(exc.__cause__, self._wrong_last_sequence):
                return None
            raise

    async def kv_get(self, key: str, *, bucket: str | None = None) -> tuple[bytes, int] | None:
        """The value and revision of `key`, None when absent, deleted or expired."""
        kv = await self._bucket(bucket)
        try:
            entry = await self._aio("kv_get", lambda: kv.get(key))
        except NatsUnavailable as exc:
            if isinstance(exc.__cause__, self._not_found):
                return None
            raise
        if entry.value is None or entry.revision is None:
            return None
        return bytes(entry.value), int(entry.revision)

    async def kv_delete(self, key: str, *, bucket: str | None = None) -> None:
        kv = await self._bucket(bucket)
        await self._aio("kv_delete", lambda: kv.delete(key))
