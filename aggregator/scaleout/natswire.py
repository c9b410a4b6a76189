"""The asyncio side of the NATS bridge (aggregator/scaleout/bridge.py): a publish window's
acks, the polled pull consumer, raw HPUB writes, reading a delivered message. Typed
loosely (`Any` for nats-py's objects): bridge.py stays the only importer of nats, and runs
everything here on its asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aggregator.scaleout.natsconf import StreamMsg

__all__ = [
    "AckWindow",
    "PullFailed",
    "Puller",
    "drop_own",
    "no_ack",
    "raw_sender",
    "stream_msg",
]


class PullFailed(Exception):
    """A pull request answered by an error status, or by nothing (the consumer is gone)."""


async def no_ack() -> None:
    return None


class AckWindow:
    """The acks of one `publish_many` window (asyncio side)."""

    __slots__ = ("bodies", "complete", "missing")

    def __init__(self, size: int) -> None:
        self.bodies: list[bytes | None] = [None] * size
        self.missing = size
        self.complete = asyncio.Event()

    def answer(self, index: int, body: bytes) -> None:
        if self.bodies[index] is None:
            self.bodies[index] = body
            self.missing -= 1
            if self.missing == 0:
                self.complete.set()


class Puller:
    """One ephemeral consumer's no-wait pull requests, on a callback subscription (asyncio
    side): the messages of a request are collected by the callback, no task per message."""

    #: A request answered by nothing for this long: the consumer is gone (re-created above).
    TIMEOUT = 2.0

    def __init__(self, nc: Any, next_subject: str, batch: int) -> None:
        self.nc = nc
        self.next_subject = next_subject
        self.batch = batch
        self.request = json.dumps({"batch": batch, "no_wait": True}).encode()
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self.msgs: list[Any] = []
        self.token = ""
        self.seq = 0
        self.count = 0
        self.done: asyncio.Event | None = None
        self.error: str | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(
            self.inbox + ".*", cb=self._on_msg, pending_msgs_limit=-1
        )

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        current = msg.subject == self.token
        if status is None:
            # a stream message (delivered with its own subject: which request it answers is
            # not told; a late one of an earlier request simply counts here)
            self.msgs.append(msg)
            self.count += 1
            if self.count >= self.batch and self.done is not None:
                self.done.set()
        elif current and self.done is not None:
            # 404 no messages, 408 the request ended: this request is over; others: an error
            if status not in ("404", "408"):
                self.error = f"status {status} {headers.get('Description', '') if headers else ''}"
            self.done.set()

    async def pull(self) -> list[Any]:
        """One request: what the consumer has now, up to `batch` messages."""
        self.seq += 1
        self.token = f"{self.inbox}.{self.seq}"
        self.count, self.error = 0, None
        done = self.done = asyncio.Event()
        await self.nc.publish(self.next_subject, self.request, reply=self.token)
        try:
            await asyncio.wait_for(done.wait(), self.TIMEOUT)
        except TimeoutError:
            self.error = "no answer to a pull request"
        msgs, self.msgs = self.msgs, []
        if self.error is not None and not msgs:
            raise PullFailed(self.error)
        return msgs


def raw_sender(nc: Any) -> Callable[[bytes], Awaitable[None]] | None:
    """nats-py's `_send_command` while connected (None: use `publish`)."""
    send = getattr(nc, "_send_command", None)
    if send is None or not hasattr(nc, "_flush_pending") or not nc.is_connected:
        return None
    result: Callable[[bytes], Awaitable[None]] = send
    return result


def drop_own(
    msgs: list[Any], prefix: str, on_skipped: Callable[[int, float], None] | None
) -> list[Any]:
    """`msgs` without those whose msg id starts with `prefix` (one header lookup each)."""
    kept: list[Any] = []
    last: Any = None
    for msg in msgs:
        headers = msg.headers
        msg_id = headers.get("Nats-Msg-Id") if headers else None
        if msg_id is not None and msg_id.startswith(prefix):
            last = msg
        else:
            kept.append(msg)
    if last is not None and on_skipped is not None:
        meta = last.metadata  # one reply subject parsed per fetch, not one per message
        on_skipped(len(msgs) - len(kept), meta.timestamp.timestamp() if meta.timestamp else 0.0)
    return kept


def stream_msg(msg: Any) -> StreamMsg:
    meta = msg.metadata
    headers = msg.headers or {}
    return StreamMsg(
        subject=msg.subject,
        data=bytes(msg.data),
        msg_id=headers.get("Nats-Msg-Id"),
        seq=int(meta.sequence.stream),
        timestamp=meta.timestamp.timestamp() if meta.timestamp else 0.0,
        delivered=int(meta.num_delivered or 1),
    )
